"""student.init: pretrained weights, read safely under the input policy, loaded key by key."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from compression.access import AccessDenied, InputAccess
from compression.errors import InvalidInput
from compression.models import build_model
from compression.models.init_weights import apply_init, head_keys, read_init
from compression.pipeline import run
from compression.report import JobReport
from compression.spec import parse_spec


def _save(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_same_class_count_loads_every_tensor(tmp_path):
    trained = build_model("resnet8", 1, 10, seed=1)
    weights = read_init(_save(trained, tmp_path / "w.safetensors"))
    student = build_model("resnet8", 1, 10, seed=2)
    record = apply_init(student, weights, 10, "resnet8")
    assert record.replaced == () and record.reason == ""
    assert record.loaded == len(student.state_dict())
    assert record.sha256 == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    assert all(_equal(v, trained.state_dict()[k]) for k, v in student.state_dict().items())


def test_another_class_count_keeps_the_fresh_seeded_head(tmp_path):
    trained = build_model("resnet8", 1, 10, seed=1)
    weights = read_init(_save(trained, tmp_path / "w.safetensors"))
    student, fresh = build_model("resnet8", 1, 7, seed=3), build_model("resnet8", 1, 7, seed=3)
    record = apply_init(student, weights, 7, "resnet8")
    assert record.replaced == ("fc.weight", "fc.bias")
    assert record.reason == "the file's head has 10 classes; the data has 7"
    state = student.state_dict()
    assert all(_equal(state[k], fresh.state_dict()[k]) for k in record.replaced)
    assert all(_equal(v, trained.state_dict()[k]) for k, v in state.items()
               if k not in record.replaced)


def test_a_backbone_without_head_loads_with_a_fresh_head(tmp_path):
    state = {k: v for k, v in build_model("tiny_cnn", 1, 10, seed=1).state_dict().items()
             if not k.startswith("fc.")}
    save_file(state, str(tmp_path / "backbone.safetensors"))
    student = build_model("tiny_cnn", 1, 4, seed=0)
    record = apply_init(student, read_init(str(tmp_path / "backbone.safetensors")), 4)
    assert record.replaced == ("fc.weight", "fc.bias")
    assert record.reason == "the file has no classifier head"


def test_any_other_shape_mismatch_is_refused_naming_parameter_and_shapes(tmp_path):
    wide = read_init(_save(build_model("tiny_cnn", 1, 10, width=2.0),
                           tmp_path / "w.safetensors"))
    with pytest.raises(InvalidInput) as caught:
        apply_init(build_model("tiny_cnn", 1, 10), wide, 10, "tiny_cnn")
    text = str(caught.value)
    assert "does not fit tiny_cnn" in text
    first = next(k for k, v in build_model("tiny_cnn", 1, 10).state_dict().items()
                 if v.dim() == 4)
    assert f"parameter {first} has shape [32, 1, 3, 3] in the file but [16, 1, 3, 3]" in text


def test_a_channel_mismatch_says_which_data_setting_fixes_it(tmp_path):
    rgb = read_init(_save(build_model("resnet8", 3, 10), tmp_path / "rgb.safetensors"))
    with pytest.raises(InvalidInput, match=r"3-channel images and the data has 1; set "
                                           r"data.channels: 3"):
        apply_init(build_model("resnet8", 1, 10), rgb, 10, "resnet8")


def test_a_stem_built_for_another_input_size_is_named_as_such(tmp_path):
    imagenet = read_init(_save(build_model("tv_resnet18", 3, 1000, image_size=224),
                               tmp_path / "tv.safetensors"))
    with pytest.raises(InvalidInput) as caught:
        apply_init(build_model("tv_resnet18", 3, 10, image_size=32), imagenet, 10, "tv_resnet18")
    (problem,) = caught.value.problems
    assert problem.startswith("parameter conv1.weight has shape [64, 3, 7, 7] in the file but "
                              "[64, 3, 3, 3] in tv_resnet18 (the file's first layer has 7x7")
    record = apply_init(build_model("tv_resnet18", 3, 10, image_size=224), imagenet, 10)
    assert record.reason == "the file's head has 1000 classes; the data has 10"


def test_extra_missing_and_non_finite_tensors_are_each_named(tmp_path):
    state = dict(build_model("tiny_cnn", 1, 10, seed=1).state_dict())
    dropped = next(k for k in state if k.endswith(".weight") and not k.startswith("fc."))
    del state[dropped]
    state["extra.weight"] = torch.zeros(3)
    bias = next(k for k in state if k.endswith(".bias") and not k.startswith("fc."))
    state[bias] = torch.full_like(state[bias], float("nan"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InvalidInput) as caught:
        apply_init(build_model("tiny_cnn", 1, 10), read_init(str(tmp_path / "bad.safetensors")),
                   10)
    problems = caught.value.problems
    assert any(p.startswith("unexpected parameter extra.weight") for p in problems)
    assert any(p.startswith(f"missing parameter {dropped}") for p in problems)
    assert any(p == f"parameter {bias} holds NaN or infinite values" for p in problems)


def test_a_torch_state_dict_loads_and_pickled_code_is_refused(tmp_path):
    model = build_model("tiny_cnn", 1, 10, seed=1)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    student = build_model("tiny_cnn", 1, 10)
    apply_init(student, read_init(str(tmp_path / "w.pth")), 10)
    assert all(_equal(v, model.state_dict()[k]) for k, v in student.state_dict().items())
    torch.save(model, tmp_path / "module.pth")  # a whole nn.Module: pickled code
    with pytest.raises(InvalidInput, match="pickled Python code"):
        read_init(str(tmp_path / "module.pth"))


def test_reads_go_through_the_allowed_roots_and_size_limit(tmp_path):
    path = _save(build_model("tiny_cnn", 1, 10), tmp_path / "w.safetensors")
    elsewhere = tmp_path / "allowed"
    elsewhere.mkdir()
    with pytest.raises(AccessDenied, match="student.init"):
        read_init(path, InputAccess.of([str(elsewhere)]))
    with pytest.raises(InvalidInput, match="over the limit of 100 bytes"):
        read_init(path, InputAccess.of([str(tmp_path)], max_bytes=100))
    assert read_init(f"file://{path}", InputAccess.of([str(tmp_path)])).state


def test_a_timm_head_is_found_from_the_model_itself(tmp_path):
    trained = build_model("timm/mobilenetv3_small_050", 3, 5, seed=0)
    student = build_model("timm/mobilenetv3_small_050", 3, 3, seed=1)
    assert head_keys(student, 3) == ("classifier.weight", "classifier.bias")
    record = apply_init(student, read_init(_save(trained, tmp_path / "m.safetensors")), 3)
    assert record.replaced == ("classifier.weight", "classifier.bias")
    assert _equal(student.conv_stem.weight, trained.conv_stem.weight)


def test_non_weights_files_and_secrets_in_uris_are_refused_at_parse():
    for init, words in (("student.pt2", "looks like a torch.export program"),
                        ("s3://key:secret@bucket/w.safetensors", "carries credentials")):
        with pytest.raises(InvalidInput) as caught:
            parse_spec({"teacher": {"path": "t.pt2"}, "student": {"init": init}})
        (problem,) = caught.value.problems
        assert problem.startswith("student.init: ") and words in problem
        assert "secret" not in problem


def _bars(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 4
    x = rng.integers(0, 60, size=(n, 8, 8))
    for c in range(4):
        x[y == c, 2 * c, :] += 180
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def _job(tmp_path, init: str, out: str, arch: str = "tiny_cnn"):
    rng = np.random.default_rng(0)
    for name, n in (("train", 240), ("test", 120)):
        x, y = _bars(n, rng)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y, class_names=np.array(list("abcd")))
    return parse_spec({
        "name": "init", "output_dir": str(tmp_path / out), "teacher": {"path": "unused.pt2"},
        "data": {"source": "npz", "path": str(tmp_path / "train.npz"),
                 "test_path": str(tmp_path / "test.npz"), "holdout_fraction": 0.2},
        "student": {"arch": arch, "init": init}, "mitigation": {"name": "one_hot"},
        "training": {"epochs": 1, "batch_size": 64, "lr": 1e-9, "weight_decay": 0.0},
        "guardrails": {"min_samples": 10}, "export": {"onnx": False, "int8": False,
                                                      "tensorrt": "off"}})


def test_a_job_starts_from_the_file_and_reports_it(tmp_path):
    trained = build_model("tiny_cnn", 1, 10, seed=5)  # 10 classes; the data has 4
    path = _save(trained, tmp_path / "pretrained.safetensors")
    result = run(_job(tmp_path, path, "out"))
    report = JobReport.load(result.report_path)
    assert report.student_init.source == path
    assert report.student_init.sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert report.student_init.replaced == ("fc.weight", "fc.bias")
    card = (result.output_dir / "model_card.md").read_text()
    assert f"Started from `{path}`" in card and "2 initialised afresh: `fc.weight`" in card
    shipped = load_file(str(result.output_dir / "student.safetensors"))
    params = [k for k, _ in trained.named_parameters() if not k.startswith("fc.")]
    for k in params:  # lr 1e-9 for one epoch: the student is still the file's weights
        torch.testing.assert_close(shipped[k], trained.state_dict()[k], atol=1e-6, rtol=0)


def test_a_file_that_does_not_fit_stops_the_job_before_training(tmp_path):
    path = _save(build_model("resnet8", 1, 10), tmp_path / "other.safetensors")
    stages = []
    with pytest.raises(InvalidInput, match="does not fit tiny_cnn"):
        run(_job(tmp_path, path, "out"), on_event=lambda e: stages.append(e.stage))
    assert "load_student_init" in stages and "distill" not in stages


def test_student_init_travels_through_the_api_message():
    from service.convert import dict_to_proto, proto_to_spec

    data = {"teacher": {"path": "t.pt2"},
            "student": {"arch": "timm/resnet18", "init": "s3://bucket/w.safetensors"}}
    message = dict_to_proto(data)
    assert message.student.init == "s3://bucket/w.safetensors"
    assert proto_to_spec(message) == parse_spec(data)


def test_torchvision_weights_build_the_student_with_their_own_stem(tmp_path):
    from compression.pipeline.job import Job
    from compression.pipeline.students import _initial_student, load_student_init

    imagenet = build_model("tv_resnet18", 1, 1000, image_size=224, seed=2)
    path = _save(imagenet, tmp_path / "resnet18.safetensors")
    job = Job(_job(tmp_path, path, "tv", arch="tv_resnet18"), tmp_path / "tv",
              torch.device("cpu"), lambda event: None, lambda: False)
    data = SimpleNamespace(input_shape=(1, 8, 8), num_classes=4)  # what a student is built for
    record = load_student_init(job, data)
    assert record.stem_size == 224 and record.replaced == ("fc.weight", "fc.bias")
    student = _initial_student(job, data, seed=0)  # every student of the job starts so
    assert torch.equal(student.conv1.weight, imagenet.conv1.weight)
    assert student(torch.rand(2, 1, 8, 8)).shape == (2, 4)
