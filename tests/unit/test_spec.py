import pytest

from compression.errors import InvalidInput
from compression.spec import JobSpec, load_job, parse_spec, spec_to_dict


def problems_of(data):
    with pytest.raises(InvalidInput) as info:
        parse_spec(data)
    return info.value.problems


def test_defaults_and_nested_values():
    spec = parse_spec({"name": "lt", "teacher": {"path": "t.pt2"},
                       "data": {"long_tail": {"profile": "exp", "imbalance": 100}},
                       "training": {"epochs": 2, "lr": 1}})
    assert isinstance(spec, JobSpec)
    assert spec.data.long_tail.imbalance == 100.0
    assert isinstance(spec.training.lr, float)
    assert spec.mitigation.name == "kd"
    assert str(spec.resolved_output_dir) == "runs/lt"


def test_camel_case_keys_follow_the_proto_json_mapping():
    spec = parse_spec({"teacher": {"path": "t.pt2"},
                       "training": {"batchSize": 32, "stepMilestones": [2, 4],
                                    "schedule": "step"}})
    assert spec.training.batch_size == 32
    assert spec.training.step_milestones == (2, 4)


def test_every_problem_is_listed_at_once():
    problems = problems_of({
        "name": "bad name", "teacher": {"format": "pickle"},
        "data": {"source": "npz", "holdout_fraction": 2},
        "training": {"epochs": "3", "lr": -1, "bogus": 1}, "extra": True})
    text = "\n".join(problems)
    for expected in ("teacher.format: 'pickle' is not one of auto, export",
                     "path is required: the teacher checkpoint",
                     "path is required for source 'npz'", "test_path is required",
                     "holdout_fraction is 2.0", "training.epochs: expected int, got '3'",
                     "lr is -1.0", "training.bogus: unknown field; known: epochs",
                     "extra: unknown field", "name 'bad name'"):
        assert expected in text, expected
    assert len(problems) == 10


def test_cross_field_rules():
    text = "\n".join(problems_of({
        "teacher": {"path": "w.safetensors"},
        "data": {"subgroups": {"by": "map"}},
        "training": {"schedule": "step", "teacher_cache": "on", "augment": "crop",
                     "warmup_epochs": 9, "epochs": 3}}))
    assert "arch is required for a weights checkpoint" in text
    assert "mapping is empty" in text
    assert "step_milestones" in text
    assert "teacher_cache 'on' needs augment 'none'" in text
    assert "warmup_epochs is 9" in text


def test_bool_is_not_an_int():
    assert any("expected int, got True" in p
               for p in problems_of({"teacher": {"path": "t"}, "training": {"epochs": True}}))


def test_load_job_reads_yaml_and_reports_bad_files(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: a\nteacher:\n  path: t.pt2\nmitigation:\n  alpha: 0.9\n")
    assert load_job(job).mitigation.alpha == 0.9
    job.write_text("name: [unclosed\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_job(job)
    with pytest.raises(InvalidInput, match="cannot read job file"):
        load_job(tmp_path / "missing.yaml")


def test_spec_to_dict_round_trips():
    spec = parse_spec({"teacher": {"path": "t.pt2"},
                       "training": {"schedule": "step", "step_milestones": [1]}})
    assert parse_spec(spec_to_dict(spec)) == spec


@pytest.mark.parametrize("shares, message", [
    ({"clean": 0.9, "blur": 0.2}, "subgroups.shares sum to 1.1"),
    ({"clean": 1.2, "blur": -0.2}, "every share must be in [0, 1]"),
])
def test_subgroup_shares_must_be_a_mix(shares, message):
    assert any(message in p for p in problems_of({"data": {"subgroups": {"shares": shares}}}))


def test_subgroup_shares_parse_from_a_job_file():
    spec = parse_spec({"teacher": {"path": "t.pt2"},
                       "data": {"subgroups": {"by": "attribute",
                                              "shares": {"clean": 0.95, "blur": 0.05}}}})
    assert spec.data.subgroups.shares == {"clean": 0.95, "blur": 0.05}
