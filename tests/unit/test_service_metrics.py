"""PrometheusMetrics driven by the real job manager (fake launcher, controllable clock), each
test with a fresh registry."""

import json
import logging
from dataclasses import dataclass, field, replace

import pytest

from compression.guardrails import GroupResult
from compression.spec import GuardrailSpec
from service.launcher import ExitStatus
from service.manager import JobManager, ManagerConfig
from service.metrics import (OTHER, NoMetrics, PrometheusMetrics,
                             closest_to_floor, complete, epoch_fraction)
from service.states import JobState
from service.store import JobStore
from tests.reports import eval_report, job_report

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


POLICY = GuardrailSpec(min_accuracy=0.7, min_samples=10)


def rejected(**sections):
    """a 48/50 PASSes 70%, b 20/50 FAILs it, c has no test samples: a blocking
    INSUFFICIENT_EVIDENCE."""
    return job_report({"student": eval_report("student", a=(48, 50), b=(20, 50), c=(0, 0))},
                      POLICY, **sections)


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
    manager.worker_finish(job_id, launcher.started[0][1]["TPET_JOB_TOKEN"], "REJECTED",
                          report_json=rejected().to_json())
    assert value(metrics, "tpet_job_outcomes_total", state="REJECTED") == 1
    assert value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup="b") == 1
    assert value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup="c") == 1
    assert value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup="a") is None
    labels = {"job_id": job_id, "stage": "student"}
    assert value(metrics, "tpet_subgroup_accuracy_ratio", subgroup="b", **labels) == 0.4
    assert value(metrics, "tpet_subgroup_floor_ratio", subgroup="b", **labels) == 0.7
    assert value(metrics, "tpet_subgroup_accuracy_ratio", subgroup="c", **labels) is None
    assert value(metrics, "tpet_subgroup_floor_ratio", subgroup="c", **labels) == 0.7
    assert value(metrics, "tpet_job_finished_timestamp_seconds", job_id=job_id) == \
        manager.get(job_id).updated


def test_every_check_of_the_deciding_stage_has_a_verdict_series():
    metrics = PrometheusMetrics()
    metrics.job_changed(finished("j1", JobState.REJECTED, rejected().to_json()),
                        JobState.RUNNING)

    def verdicts(job_id):
        return {(s.labels["subgroup"], s.labels["rule"], s.labels["verdict"],
                 s.labels["blocking"]): s.value
                for m in metrics.registry.collect() if m.name == "tpet_guardrail_verdict"
                for s in m.samples if s.labels["job_id"] == job_id}
    assert verdicts("j1") == {("a", "min_accuracy", "PASS", "false"): 1,
                              ("b", "min_accuracy", "FAIL", "true"): 1,
                              ("c", "min_accuracy", "INSUFFICIENT_EVIDENCE", "true"): 1}
    # the same data where insufficient evidence does not block: c is shown, not blocking
    lenient = replace(POLICY, block_on_insufficient_evidence=False)
    report = job_report({"student": eval_report("student", a=(48, 50), c=(0, 0))}, lenient,
                        ship=("student",))
    metrics.job_changed(finished("j2", report_json=report.to_json()), JobState.RUNNING)
    assert verdicts("j2") == {("a", "min_accuracy", "PASS", "false"): 1,
                              ("c", "min_accuracy", "INSUFFICIENT_EVIDENCE", "false"): 1}
    build = [s for m in metrics.registry.collect() if m.name == "tpet_build_info"
             for s in m.samples]
    assert len(build) == 1 and build[0].value == 1 and build[0].labels["version"]


def test_a_report_that_does_not_read_sets_no_guardrail_series_and_says_why(caplog):
    metrics = PrometheusMetrics()
    data = rejected().to_dict()
    data["guardrail"] = data.pop("guardrails")  # a renamed key must not pass unnoticed
    with caplog.at_level(logging.WARNING, logger="tpet.metrics"):
        metrics.job_changed(finished("j1", JobState.REJECTED, json.dumps(data)),
                            JobState.RUNNING)
    assert "guardrails: missing" in caplog.text
    assert value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup="b") \
        is None
    assert value(metrics, "tpet_job_finished_timestamp_seconds", job_id="j1") is None


def finished(job_id, state=JobState.SUCCEEDED, report_json="", error="", error_kind="",
             updated=0.0):
    from service.store import JobRecord
    return JobRecord(1, job_id, None, "n", state, "", {}, "", 0.0, updated, error, error_kind,
                     1, False, "", "", report_json, 0)


def test_only_the_last_recent_jobs_keep_subgroup_series():
    metrics = PrometheusMetrics(recent_jobs=2)
    for job_id in ("j1", "j2", "j3"):
        metrics.job_changed(finished(job_id, JobState.REJECTED, rejected().to_json()),
                            JobState.RUNNING)
    for name, labels in (("tpet_subgroup_accuracy_ratio", {"subgroup": "a"}),
                         ("tpet_subgroup_floor_ratio", {"subgroup": "c"}),
                         ("tpet_guardrail_verdict", {"subgroup": "b", "rule": "min_accuracy",
                                                     "verdict": "FAIL", "blocking": "true"})):
        kept = [j for j in ("j1", "j2", "j3")
                if value(metrics, name, job_id=j, stage="student", **labels) is not None]
        assert kept == ["j2", "j3"], name
    kept = [j for j in ("j1", "j2", "j3")
            if value(metrics, "tpet_job_finished_timestamp_seconds", job_id=j) is not None]
    assert kept == ["j2", "j3"]


def test_the_deciding_stage_is_the_shipped_one_else_the_first_failing():
    metrics = PrometheusMetrics()
    stages = {"student": eval_report("student", a=(48, 50)),
              "onnx": eval_report("onnx", a=(45, 50)),
              "int8": eval_report("int8", a=(10, 50))}  # 20%: shown under the 70% floor
    report = job_report(stages, POLICY, ship=("int8", "onnx"))
    assert report.shipped == "onnx"
    metrics.job_changed(finished("j1", report_json=report.to_json()), JobState.RUNNING)
    assert value(metrics, "tpet_subgroup_accuracy_ratio", job_id="j1", stage="onnx",
                 subgroup="a") == 0.9
    assert value(metrics, "tpet_subgroup_accuracy_ratio", job_id="j1", stage="int8",
                 subgroup="a") is None
    assert value(metrics, "tpet_guardrail_violations_total", stage="int8", subgroup="a") == 1
    del stages["onnx"]
    report = job_report(stages, POLICY)
    metrics.job_changed(finished("j2", JobState.REJECTED, report.to_json()), JobState.RUNNING)
    assert value(metrics, "tpet_subgroup_accuracy_ratio", job_id="j2", stage="int8",
                 subgroup="a") == 0.2


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
    stages = {"student": eval_report("student", a=(0, 50), b=(0, 50), c=(0, 50), d=(0, 50))}
    metrics.job_changed(finished("j1", JobState.REJECTED, job_report(stages, POLICY).to_json()),
                        JobState.RUNNING)
    counts = {g: value(metrics, "tpet_guardrail_violations_total", stage="student", subgroup=g)
              for g in ("a", "b", "c", OTHER)}
    assert counts == {"a": 1, "b": 1, "c": None, OTHER: 2}
    metrics.job_reported("j1", [("stage_finished", f"s{i}", {"seconds": 1}) for i in range(70)],
                         0.0)
    assert value(metrics, "tpet_stage_duration_seconds_count", stage="s63") == 1
    assert value(metrics, "tpet_stage_duration_seconds_count", stage="s64") is None
    assert value(metrics, "tpet_stage_duration_seconds_count", stage=OTHER) == 6


def test_closest_to_floor_keeps_blocking_subgroups_then_the_smallest_margins_in_order():
    def group(name, accuracy, floor):
        return GroupResult(name, 50, accuracy, (0.0, 1.0), floor, None)
    groups = [group("a", 0.9, 0.5),    # margin 0.4
              group("b", 0.6, 0.5),    # 0.1
              group("c", None, 0.5),   # unknown: last
              group("d", 0.3, None)]   # no floor: 0.3
    assert [g.name for g in closest_to_floor(groups, 2)] == ["b", "d"]
    assert [g.name for g in closest_to_floor(groups, 9)] == ["a", "b", "c", "d"]
    assert [g.name for g in closest_to_floor(groups, 2, first=["c"])] == ["b", "c"]


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
