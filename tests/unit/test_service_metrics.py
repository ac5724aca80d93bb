"""PrometheusMetrics driven by the real job manager (fake launcher, controllable clock), each
test with a fresh registry."""

import json
from dataclasses import dataclass, field, replace

import pytest

from service.launcher import ExitStatus
from service.manager import JobManager, ManagerConfig
from service.metrics import (OTHER, NoMetrics, PrometheusMetrics,
                             closest_to_floor, complete, epoch_fraction)
from service.states import JobState
from service.store import JobStore

SPEC = {"name": "bars", "teacher": {"path": "t.pt2"}}


@dataclass
class Handle:
    name: str
    exit: ExitStatus | None = None
    kills: list = field(default_factory=list)


class Launcher:
    def __init__(self):
        self.started = []

    def start(self, job, env):
        self.started.append((job, dict(env), Handle(f"fake {len(self.started)}")))
        return self.started[-1][2]

    def poll(self, handle):
        return handle.exit

    def kill(self, handle, force=False):
        handle.exit = ExitStatus(-9, "killed")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def setup(tmp_path):
    store = JobStore(tmp_path / "store.db")
    clock, launcher = Clock(), Launcher()
    metrics = PrometheusMetrics(recent_jobs=2)
    manager = JobManager(store, launcher, ManagerConfig(state_dir=tmp_path, max_queued=7),
                         metrics, clock=clock)
    manager.recover("127.0.0.1:1")
    yield manager, launcher, metrics, clock
    store.close()


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def verdict(stage, groups, failing=()):
    return {"stage": stage, "failing_subgroups": list(failing),
            "groups": [{"name": n, "accuracy": a, "floor": f} for n, a, f in groups]}


def report(stages, shipped=None, first_failing=None):
    return json.dumps({"shipped": shipped, "guardrails": {
        "first_failing_stage": first_failing, "stages": stages}})


def test_jobs_by_state_queue_and_live_series_of_a_running_job(setup):
    manager, launcher, metrics, clock = setup
    first, _ = manager.submit(SPEC).id, manager.submit(SPEC).id
    clock.now = 1010.0
    manager.tick()  # one slot: the first runs
    assert value(metrics, "tpet_jobs", state="QUEUED") == 1
    assert value(metrics, "tpet_jobs", state="RUNNING") == 1
    assert value(metrics, "tpet_jobs", state="FAILED") == 0
    assert value(metrics, "tpet_queue_depth") == 1
    assert value(metrics, "tpet_queue_limit") == 7
    assert value(metrics, "tpet_queue_oldest_job_age_seconds") == 10.0
    assert value(metrics, "tpet_jobs_submitted_total") == 2
    assert value(metrics, "tpet_job_progress_ratio", job_id=first) == 0
    assert value(metrics, "tpet_job_last_event_timestamp_seconds", job_id=first) == 1010.0

    clock.now = 1042.0
    token = launcher.started[0][1]["TPET_JOB_TOKEN"]
    manager.worker_report(first, token, [
        ("stage_finished", "load_data", {"seconds": 2.5}),
        ("progress", "distill", {"phase": "train", "epoch": 2, "epochs": 4, "step": 5,
                                 "steps": 10, "samples_per_s": 123.5})])
    assert value(metrics, "tpet_job_progress_ratio", job_id=first) == 0.375  # (1 + 5/10) / 4
    assert value(metrics, "tpet_job_samples_per_second", job_id=first) == 123.5
    assert value(metrics, "tpet_job_last_event_timestamp_seconds", job_id=first) == 1042.0
    assert value(metrics, "tpet_stage_duration_seconds_count", stage="load_data") == 1
    assert value(metrics, "tpet_stage_duration_seconds_sum", stage="load_data") == 2.5
    assert value(metrics, "tpet_stage_duration_seconds_bucket", stage="load_data", le="1.0") == 0
    assert value(metrics, "tpet_stage_duration_seconds_bucket", stage="load_data", le="5.0") == 1

    manager.worker_finish(first, token, "SUCCEEDED")
    for name in ("tpet_job_progress_ratio", "tpet_job_samples_per_second",
                 "tpet_job_last_event_timestamp_seconds"):
        assert value(metrics, name, job_id=first) is None  # gone with the job
    assert value(metrics, "tpet_job_outcomes_total", state="SUCCEEDED") == 1
    assert value(metrics, "tpet_job_outcomes_total", state="FAILED") == 0


def test_a_retried_job_loses_its_live_series_until_it_runs_again(setup):
    manager, launcher, metrics, _ = setup
    manager = JobManager(manager.store, launcher, replace(manager.config, max_attempts=2),
                         metrics, clock=manager.clock)
    job_id = manager.submit(SPEC).id
    manager.tick()
    manager.worker_report(job_id, launcher.started[0][1]["TPET_JOB_TOKEN"], [
        ("progress", "distill", {"epoch": 1, "epochs": 2, "samples_per_s": 9.0})])
    assert value(metrics, "tpet_job_samples_per_second", job_id=job_id) == 9.0
    launcher.started[0][2].exit = ExitStatus(1, "worker exited with code 1")
    manager.tick()  # reaped (RUNNING -> QUEUED), launched again (-> RUNNING)
    assert manager.get(job_id).attempts == 2
    assert value(metrics, "tpet_job_samples_per_second", job_id=job_id) is None
    assert value(metrics, "tpet_job_progress_ratio", job_id=job_id) == 0
    assert value(metrics, "tpet_job_outcomes_total", state="FAILED") == 0


def test_a_rejected_job_sets_subgroup_gauges_and_counts_violations(setup):
    manager, launcher, metrics, _ = setup
    job_id = manager.submit(SPEC).id
    manager.tick()
    stages = [verdict("student", [("a", 0.95, 0.9), ("b", 0.70, 0.9), ("c", None, 0.9)],
                      failing=["b", "c"])]
    manager.worker_finish(job_id, launcher.started[0][1]["TPET_JOB_TOKEN"], "REJECTED",
                          report_json=report(stages, first_failing="student"))
    assert value(metrics, "tpet_job_outcomes_total", state="REJECTED") == 1
    assert value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup="b") == 1
    assert value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup="c") == 1
    assert value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup="a") is None
    labels = {"job_id": job_id, "stage": "student"}
    assert value(metrics, "tpet_subgroup_accuracy_ratio", subgroup="b", **labels) == 0.70
    assert value(metrics, "tpet_subgroup_floor_ratio", subgroup="b", **labels) == 0.9
    assert value(metrics, "tpet_subgroup_accuracy_ratio", subgroup="c", **labels) is None
    assert value(metrics, "tpet_subgroup_floor_ratio", subgroup="c", **labels) == 0.9


def finished(job_id, state=JobState.SUCCEEDED, report_json="", error="", error_kind=""):
    from service.store import JobRecord
    return JobRecord(1, job_id, None, "n", state, "", {}, "", 0.0, 0.0, error, error_kind, 1,
                     False, "", "", report_json, 0)


def test_only_the_last_recent_jobs_keep_subgroup_series():
    metrics = PrometheusMetrics(recent_jobs=2)
    for job_id in ("j1", "j2", "j3"):
        metrics.job_changed(finished(job_id, report_json=report(
            [verdict("onnx", [("a", 0.8, 0.5)])], shipped="onnx")), JobState.RUNNING)
    kept = [j for j in ("j1", "j2", "j3") if value(
        metrics, "tpet_subgroup_accuracy_ratio", job_id=j, stage="onnx", subgroup="a")]
    assert kept == ["j2", "j3"]
    assert value(metrics, "tpet_subgroup_floor_ratio", job_id="j1", stage="onnx",
                 subgroup="a") is None


def test_the_deciding_stage_is_the_shipped_one_else_the_first_failing():
    metrics = PrometheusMetrics()
    stages = [verdict("student", [("a", 0.9, 0.5)]), verdict("onnx", [("a", 0.8, 0.5)]),
              verdict("int8", [("a", 0.4, 0.5)], failing=["a"])]
    metrics.job_changed(finished("j1", report_json=report(stages, "onnx", "int8")),
                        JobState.RUNNING)
    assert value(metrics, "tpet_subgroup_accuracy_ratio", job_id="j1", stage="onnx",
                 subgroup="a") == 0.8
    assert value(metrics, "tpet_subgroup_accuracy_ratio", job_id="j1", stage="int8",
                 subgroup="a") is None
    assert value(metrics, "tpet_guardrail_violations_total", stage="int8", subgroup="a") == 1
    metrics.job_changed(finished("j2", JobState.REJECTED, report(stages[:1] + stages[2:], None,
                                                                 "int8")), JobState.RUNNING)
    assert value(metrics, "tpet_subgroup_accuracy_ratio", job_id="j2", stage="int8",
                 subgroup="a") == 0.4


def test_parity_failures_are_counted_by_kind_and_other_failures_are_not():
    metrics = PrometheusMetrics()
    # the kind decides, not the words: a stage failure that quotes the parity message is not one
    metrics.job_changed(finished("j1", JobState.FAILED, error="stage 'export_onnx' failed: "
                                 "max |logit difference| is 0.5", error_kind="parity_failed"),
                        JobState.RUNNING)
    metrics.job_changed(finished("j2", JobState.FAILED, error="stage 'export_onnx' failed: "
                                 "the exported model does not reproduce the PyTorch model",
                                 error_kind="stage_failed"), JobState.RUNNING)
    metrics.job_changed(finished("j3", JobState.FAILED, report_json="not json"),
                        JobState.RUNNING)
    assert value(metrics, "tpet_export_parity_failures_total") == 1
    assert value(metrics, "tpet_job_failures_total", kind="parity_failed") == 1
    assert value(metrics, "tpet_job_failures_total", kind="stage_failed") == 1
    assert value(metrics, "tpet_job_failures_total", kind="internal") == 1  # none recorded
    assert value(metrics, "tpet_job_failures_total", kind="invalid_input") == 0


def test_worker_supplied_labels_are_capped():
    metrics = PrometheusMetrics(max_label_values=2)
    stages = [verdict("student", [], failing=["a", "b", "c", "d"])]
    metrics.job_changed(finished("j1", JobState.REJECTED, report(stages)), JobState.RUNNING)
    counts = {g: value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup=g)
              for g in ("a", "b", "c", OTHER)}
    assert counts == {"a": 1, "b": 1, "c": None, OTHER: 2}
    metrics.job_reported("j1", [("stage_finished", f"s{i}", {"seconds": 1}) for i in range(70)],
                         0.0)
    assert value(metrics, "tpet_stage_duration_seconds_count", stage="s63") == 1
    assert value(metrics, "tpet_stage_duration_seconds_count", stage="s64") is None
    assert value(metrics, "tpet_stage_duration_seconds_count", stage=OTHER) == 6


def test_closest_to_floor_keeps_the_smallest_margins_in_order():
    groups = [{"name": "a", "accuracy": 0.9, "floor": 0.5},    # margin 0.4
              {"name": "b", "accuracy": 0.6, "floor": 0.5},    # 0.1
              {"name": "c", "accuracy": None, "floor": 0.5},   # unknown: last
              {"name": "d", "accuracy": 0.3, "floor": None}]   # no floor: 0.3
    assert [g["name"] for g in closest_to_floor(groups, 2)] == ["b", "d"]
    assert [g["name"] for g in closest_to_floor(groups, 9)] == ["a", "b", "c", "d"]


def test_epoch_fraction():
    assert epoch_fraction({"epoch": 1, "epochs": 4, "step": 10, "steps": 10}) == 0.25
    assert epoch_fraction({"epoch": 3, "epochs": 4}) == 0.75  # no steps: the epoch is done
    assert epoch_fraction({"epoch": 2}) is None
    assert epoch_fraction({"epoch": "2", "epochs": 4}) is None


def test_partial_metrics_get_do_nothing_hooks():
    class OnlySubmitted:
        def __init__(self):
            self.n = 0

        def job_submitted(self):
            self.n += 1

    inner = OnlySubmitted()
    hooks = complete(inner)
    hooks.job_submitted()
    hooks.job_changed(None, JobState.RUNNING)  # absent: nothing happens
    assert inner.n == 1
    NoMetrics().job_reported("j", [], 0.0)
    with pytest.raises(AttributeError):
        hooks.not_a_hook  # noqa: B018
