"""The monitoring a deployment ships: the alert rules (promtool check and unit tests), the
Grafana dashboard, and the metrics of a real server that ran real jobs, which every query of
the rules and the dashboard must use and nothing else."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from compression.report import JobReport, blocks
from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.convert import struct_to_dict
from service.server import start_server
from service.states import JobState
from tests.integration.conftest import JOB_TIMEOUT_S, REPO, _bars
from tests.integration.test_server import teacher  # noqa: F401  (a module fixture)

pytestmark = pytest.mark.integration

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "dashboards" / "teachers-pet.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian package prometheus; `make test` installs it)")
# Series Prometheus makes itself, not the service.
SYNTHETIC = {"up"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=MONITORING, input=stdin, text=True,
                          capture_output=True, timeout=60)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def job_spec(data: Path, teacher_path: Path, name: str, **sections) -> dict:
    spec = {"name": name, "teacher": {"path": str(teacher_path)},
            "data": {"source": "npz", "path": str(data / "train.npz"),
                     "test_path": str(data / "test.npz"), "holdout_fraction": 0.2},
            "student": {"arch": "tiny_cnn"},
            "training": {"epochs": 2, "batch_size": 32, "lr": 0.05}}
    return {**spec, **{k: {**spec.get(k, {}), **v} for k, v in sections.items()}}


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, teacher):  # noqa: F811
    """A server that ran a rejected job (scraped mid-training too) and a job whose export
    failed its parity check; yields the scrapes and the job ids."""
    data = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 800), ("test", 200)):
        x, y = _bars(n, 4, rng)
        np.savez(data / f"{split}.npz", x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    server = start_server(ServerConfig(
        port=0, metrics_port=0, state_dir=str(tmp_path_factory.mktemp("state")), gpus=[],
        max_concurrent_jobs=2, data_roots=[str(tmp_path_factory.getbasetemp())]))
    client = TpetClient(server.address, retries=0)
    try:
        # barely trained: no class reaches 90%
        rejected = client.compress(job_spec(
            data, teacher, "rejected", export={"int8": False},
            training={"epochs": 2, "lr": 1e-6, "progress_every_steps": 4},
            guardrails={"min_accuracy": 0.9, "min_samples": 10})).id
        parity = client.compress(job_spec(data, teacher, "parity", training={"epochs": 1},
                                          export={"int8": False, "parity_max_abs_diff": 1e-12})).id
        live = _scrape_while_training(client, server.metrics_port, rejected)
        done = {j: client.wait(j, timeout_s=JOB_TIMEOUT_S) for j in (rejected, parity)}
        yield {"live": live, "final": scrape(server.metrics_port), "done": done,
               "rejected": rejected, "parity": parity}
    finally:
        server.stop()


def _scrape_while_training(client: TpetClient, port: int, job_id: str) -> str:
    for event in client.watch(job_id):
        if event.kind == "progress" and struct_to_dict(event.payload).get("phase") == "train":
            return scrape(port)
    pytest.fail(f"job {job_id} ended before it trained: {client.get_job(job_id)}")


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in exposition ``text`` (labels: a subset)."""
    for line in text.splitlines():
        match = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return None


def test_a_real_job_shows_in_the_metrics_while_running_and_after(monitored):
    live, final, job = monitored["live"], monitored["final"], monitored["rejected"]
    assert 0 < sample(live, "tpet_job_progress_ratio", job_id=job) <= 1
    assert sample(live, "tpet_job_samples_per_second", job_id=job) > 0
    assert sample(live, "tpet_jobs", state="RUNNING") >= 1

    done = monitored["done"]
    assert job_state(done[job]) is JobState.REJECTED
    assert sample(final, "tpet_job_progress_ratio", job_id=job) is None  # gone with the run
    assert sample(final, "tpet_job_outcomes_total", state="REJECTED") == 1
    assert sample(final, "tpet_jobs", state="RUNNING") == 0
    report = JobReport.from_json(done[job].report_json)
    stage = report.deciding_stage
    rows = {g.name: g for g in stage.groups}
    assert stage.stage == "student" and stage.failing_subgroups  # no class reaches 90%
    for group in stage.failing_subgroups:
        # a failing subgroup is FAIL or a blocking INSUFFICIENT_EVIDENCE: which one is the
        # data's call, so the metrics are held to the report, not to a guess
        assert sample(final, "tpet_guardrail_violations_total", stage="student",
                      subgroup=group) == 1
        floor = sample(final, "tpet_subgroup_floor_ratio", job_id=job, subgroup=group)
        accuracy = sample(final, "tpet_subgroup_accuracy_ratio", job_id=job, subgroup=group)
        assert floor == rows[group].floor == 0.9
        assert accuracy == pytest.approx(rows[group].accuracy)
    for check in stage.checks:  # every check, with the report's verdict and blocking
        assert sample(final, "tpet_guardrail_verdict", job_id=job, stage="student",
                      subgroup=check.subgroup, rule=check.rule, verdict=check.verdict,
                      blocking=str(blocks(stage, check)).lower()) == 1
    ended = done[job].update_time.seconds + done[job].update_time.nanos / 1e9
    assert sample(final, "tpet_job_finished_timestamp_seconds", job_id=job) == \
        pytest.approx(ended, abs=0.01)
    assert sample(final, "tpet_build_info") == 1
    assert sample(final, "tpet_stage_duration_seconds_count", stage="distill") == 2


def test_a_failed_export_parity_check_is_counted(monitored):
    job = monitored["done"][monitored["parity"]]
    assert job_state(job) is JobState.FAILED and job.error_kind == "parity_failed"
    assert "does not reproduce the PyTorch model" in job.error
    assert sample(monitored["final"], "tpet_export_parity_failures_total") == 1
    assert sample(monitored["final"], "tpet_job_outcomes_total", state="FAILED") == 1


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_silent():
    alerts = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yaml").read_text())[
        "groups"] for r in g["rules"] if "alert" in r}
    fires, silent = set(), set()
    for test in yaml.safe_load((MONITORING / "alerts_test.yaml").read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case["exp_alerts"] else silent).add(case["alertname"])
    assert len(alerts) == 7
    assert alerts == fires == silent


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def alert_queries() -> list[str]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside {} or a grouping clause) or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                  expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr)
    keywords = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "offset",
                "inf", "nan"}
    return {w for w, call in words if not call and w.lower() not in keywords}


def exported_names(text: str) -> set[str]:
    """Every series name the exposition declares (a histogram's _bucket, _sum and _count)."""
    names = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        name, kind = kind_line
        names |= {f"{name}{s}" for s in ("_bucket", "_sum", "_count")} if kind == "histogram" \
            else {name}
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (le, stage) (rate(tpet_a_bucket{m!="x"}[5m])) / on(job) '
                        "tpet_b offset 1h > bool 0.5 * tpet_c") == {"tpet_a_bucket", "tpet_b",
                                                                     "tpet_c"}
    assert metric_names("time() - up") == {"up"}


@needs_promtool
def test_every_query_parses_and_uses_only_exported_metrics(monitored, tmp_path):
    queries = [as_promql(q) for q in dashboard_queries() + alert_queries()]
    assert len(queries) >= 20
    rules = {"groups": [{"name": "queries", "rules": [
        {"record": f"tpet:query_{i}", "expr": q} for i, q in enumerate(queries)]}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(tmp_path / "queries.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    exported = exported_names(monitored["final"]) | SYNTHETIC
    used = set().union(*map(metric_names, queries))
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    assert {"tpet_jobs", "tpet_job_outcomes_total", "tpet_subgroup_accuracy_ratio",
            "tpet_subgroup_floor_ratio", "tpet_guardrail_violations_total",
            "tpet_guardrail_verdict", "tpet_job_finished_timestamp_seconds",
            "tpet_job_samples_per_second", "tpet_stage_duration_seconds_bucket"} <= used


def test_the_dashboard_is_grafana_json_with_unique_panels():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "teachers-pet" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
            assert all(t["refId"] and t["expr"] for t in panel["targets"])
