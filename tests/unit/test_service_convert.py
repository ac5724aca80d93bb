"""Job files, protobuf messages and library specs convert into each other without loss."""

import math
from pathlib import Path

import pytest
import yaml

from compression.errors import InvalidInput
from compression.spec import load_job, parse_spec
from service._proto import spec_pb2
from service.convert import (dict_to_proto, dict_to_struct, load_job_proto, proto_to_dict,
                             proto_to_spec, spec_to_proto, state_from_proto, state_to_proto,
                             struct_to_dict)
from service.states import JobState

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fashion_mnist_lt.yaml"

# Every field away from its default, including the values proto3 would drop without
# presence (False, 0, 0.0, "") and a null optional.
EVERY_FIELD = {
    "name": "all-fields", "output_dir": "runs/x",
    "teacher": {"path": "t.safetensors", "format": "weights", "arch": "resnet8", "width": 2},
    "data": {"source": "npz", "path": "tr.npz", "test_path": "te.npz", "holdout_path": "",
             "holdout_fraction": 0.25, "long_tail": {"profile": "step", "imbalance": 10},
             "subgroups": {"by": "map", "mapping": {0: "head", "b": "tail"},
                           "shares": {"head": 0.9, "tail": 0.1}},
             "max_train": 0, "max_test": 7, "image_size": 16, "channels": 3, "seed": 3},
    "student": {"arch": "resnet8", "width": 0.5},
    "training": {"epochs": 9, "batch_size": 16, "optimizer": "adamw", "lr": 0.001,
                 "momentum": 0.0, "weight_decay": 0.0, "schedule": "step", "warmup_epochs": 1,
                 "step_milestones": [3, 6], "step_gamma": 0.5, "augment": "crop", "amp": "off",
                 "channels_last": False, "device": "cpu", "teacher_cache": "off", "seed": 5,
                 "eval_batch_size": 64, "progress_every_steps": 3},
    "mitigation": {"name": "auto", "alpha": 0.0, "temperature": 2.5, "calibrate_teacher": True,
                   "selection_epochs": 2,
                   "candidates": [{"name": "kd", "alpha": 0.9},
                                  {"name": "ltkd", "params": {"num_groups": 3,
                                                              "partition": "frequency",
                                                              "rebalance": False}}]},
    "guardrails": {"min_accuracy": 0.1, "min_accuracy_by_group": {"tail": 0.05},
                   "max_drop_vs_teacher": 0.0, "max_drop_vs_one_hot": None,
                   "min_worst_group_accuracy": 0.2, "max_group_gap": 0.5, "min_samples": 5,
                   "block_on_insufficient_evidence": False},
    "export": {"onnx": True, "int8": False, "tensorrt": "off", "tensorrt_precision": "fp32",
               "opset": 13, "calibration_per_group": 4, "parity_max_abs_diff": 0.01,
               "parity_min_top1_agreement": 0.5, "min_batch": 1, "opt_batch": 2,
               "max_batch": 4, "mixed_precision": False, "mixed_max_candidates": 3,
               "mixed_max_seconds": 12.5, "latency_warmup": 0, "latency_repeats": 7},
}


def test_example_job_file_yaml_proto_spec_agree():
    message = load_job_proto(EXAMPLE)
    assert proto_to_spec(message) == load_job(EXAMPLE)
    assert message.training.warmup_epochs == 1 and message.data.long_tail.imbalance == 100


def test_every_field_survives_yaml_to_proto_to_spec(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(EVERY_FIELD))
    spec = proto_to_spec(load_job_proto(path))
    assert spec == parse_spec(EVERY_FIELD)
    # values proto3 would lose without presence are kept, not replaced by library defaults
    assert spec.mitigation.alpha == 0.0 and spec.training.momentum == 0.0
    assert spec.training.channels_last is False and spec.export.int8 is False
    assert spec.guardrails.max_drop_vs_teacher == 0.0
    assert spec.guardrails.max_drop_vs_one_hot is None
    assert spec.data.subgroups.mapping == {"0": "head", "b": "tail"}
    assert spec.data.subgroups.shares == {"head": 0.9, "tail": 0.1}
    params = spec.mitigation.candidates[1].params
    assert params == {"num_groups": 3, "partition": "frequency", "rebalance": False}
    assert isinstance(params["num_groups"], int)  # Struct holds doubles; integers come back int


def test_spec_to_proto_round_trips():
    spec = parse_spec(EVERY_FIELD)
    assert proto_to_spec(spec_to_proto(spec)) == spec


def test_unset_fields_stay_unset_so_library_defaults_apply():
    message = dict_to_proto({"teacher": {"path": "t.pt2"}})
    assert proto_to_dict(message) == {"teacher": {"path": "t.pt2"}}
    spec = proto_to_spec(message)
    assert spec.export.onnx is True and spec.mitigation.alpha == 0.5


def test_lower_camel_case_keys_are_accepted():
    message = dict_to_proto({"training": {"batchSize": 8}, "outputDir": "o"})
    assert proto_to_dict(message) == {"training": {"batch_size": 8}, "output_dir": "o"}


def test_semantic_problems_are_all_listed_by_the_library():
    message = dict_to_proto({"training": {"epochs": 0, "optimizer": "rmsprop"},
                             "mitigation": {"alpha": 2}})
    with pytest.raises(InvalidInput) as err:
        proto_to_spec(message)
    problems = err.value.problems
    assert sorted(problems) == ["mitigation.alpha is 2.0; it must be in [0, 1]",
                                "training.epochs is 0; it must be in [1, 100000]",
                                "training.optimizer: 'rmsprop' is not one of sgd, adamw"]


def test_what_protobuf_cannot_hold_is_listed_whole(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"training": {"epochs": "five", "colour": 1}, "extra": 1}))
    with pytest.raises(InvalidInput) as err:
        load_job_proto(path)
    assert err.value.context == f"invalid job file {path}"
    assert "training.epochs: expected int, got 'five'" in err.value.problems
    assert len(err.value.problems) == 3
    assert any(p.startswith("training.colour: unknown field") for p in err.value.problems)
    assert any(p.startswith("extra: unknown field") for p in err.value.problems)


def test_unreadable_job_files_name_the_file(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read job file .*missing.yaml"):
        load_job_proto(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(InvalidInput, match="bad.yaml is not valid YAML"):
        load_job_proto(tmp_path / "bad.yaml")


def test_struct_round_trip_keeps_ints_strings_nulls_and_nan():
    data = {"epoch": 3, "loss": 0.5, "stage": "distill", "none": None, "nested": {"xs": [1, 2.5]},
            "tuple": (1, 2)}
    back = struct_to_dict(dict_to_struct(data))
    assert back == {**data, "tuple": [1, 2]}
    assert isinstance(back["epoch"], int) and isinstance(back["nested"]["xs"][0], int)
    assert math.isnan(struct_to_dict(dict_to_struct({"x": float("nan")}))["x"])


def test_states_convert_both_ways():
    for state in JobState:
        assert state_from_proto(state_to_proto(state)) is state
    with pytest.raises(InvalidInput, match="JOB_STATE_UNSPECIFIED is not a state"):
        state_from_proto(0)


def test_message_type_is_the_public_job_spec():
    assert spec_pb2.JobSpec.DESCRIPTOR.full_name == "teacherspet.v1.JobSpec"
