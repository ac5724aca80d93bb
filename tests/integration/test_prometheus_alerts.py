"""The guardrail alerts through a real Prometheus: a live server runs one job that FAILs a
guardrail and one blocked by INSUFFICIENT_EVIDENCE; Prometheus scrapes it every second with the
shipped deploy/monitoring/alerts.yaml loaded, and its HTTP API must show each alert firing for
that job and subgroup, and the dashboard's verdict panels returning the same series.

The two guardrail alerts have no ``for:`` duration (a finished job's verdict cannot flap), so
the shipped rule file is loaded unchanged and they fire at the first evaluation that sees the
series.

Both verdicts are fixed by arithmetic, not by how well the student trains: the subgroup
``mixed`` holds 10 images, each 4 times with each of the 4 labels, so any classifier is right
on exactly 10 of its 40 examples (25%). Under a 60% floor that is a FAIL (p ~ 3e-6); under a
30% floor it can be shown neither above (25% < 30%) nor below (p ~ 0.25), so it is
INSUFFICIENT_EVIDENCE, which blocks by default.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from compression.report import JobReport, blocks
from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.server import start_server
from service.states import JobState
from tests.integration.conftest import JOB_TIMEOUT_S, REPO, _bars
from tests.integration.test_server import teacher  # noqa: F401  (a module fixture)

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
ALERTS = REPO / "deploy" / "monitoring" / "alerts.yaml"
DASHBOARD = REPO / "deploy" / "monitoring" / "dashboards" / "teachers-pet.json"
FAILED, BLOCKED = "TeachersPetGuardrailFailed", "TeachersPetGuardrailInsufficientEvidence"
PANELS = {FAILED: "Guardrail FAILs (recent jobs)",
          BLOCKED: "Blocking insufficient evidence (recent jobs)"}
LABELS = ("job_id", "stage", "subgroup", "rule")


def write_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    names = np.array(["a", "b", "c", "d"])
    x, y = _bars(400, 4, rng)
    np.savez(folder / "train.npz", x=x, y=y, class_names=names,
             group=np.array(["clean"] * len(y)))
    clean_x, clean_y = _bars(120, 4, rng)
    images, _ = _bars(10, 4, rng)
    mixed_x = np.repeat(images, 4, axis=0)  # each image 4 times...
    mixed_y = np.tile(np.arange(4), 10)  # ...once with each label
    np.savez(folder / "test.npz", x=np.concatenate([clean_x, mixed_x]),
             y=np.concatenate([clean_y, mixed_y]), class_names=names,
             group=np.array(["clean"] * len(clean_y) + ["mixed"] * len(mixed_y)))


def job_spec(data: Path, teacher_path: Path, name: str, floor: float) -> dict:
    return {"name": name, "teacher": {"path": str(teacher_path)},
            "data": {"source": "npz", "path": str(data / "train.npz"),
                     "test_path": str(data / "test.npz"), "holdout_fraction": 0.2,
                     "subgroups": {"by": "attribute"}},
            "student": {"arch": "tiny_cnn"},
            "training": {"epochs": 1, "batch_size": 32, "lr": 0.05},
            "export": {"int8": False},
            "guardrails": {"min_accuracy_by_group": {"mixed": floor}}}


@pytest.fixture(scope="module")
def finished_jobs(tmp_path_factory, teacher):  # noqa: F811
    """A live server that ran a FAILing and a blocked job; yields its metrics port and the
    two jobs' ids and reports."""
    data = tmp_path_factory.mktemp("data")
    write_data(data)
    server = start_server(ServerConfig(
        port=0, metrics_port=0, state_dir=str(tmp_path_factory.mktemp("state")), gpus=[],
        max_concurrent_jobs=2, data_roots=[str(tmp_path_factory.getbasetemp())]))
    try:
        client = TpetClient(server.address, retries=0)
        ids = {kind: client.compress(job_spec(data, teacher, kind, floor)).id
               for kind, floor in (("fail", 0.6), ("blocked", 0.3))}
        done = {kind: client.wait(job_id, timeout_s=JOB_TIMEOUT_S) for kind, job_id in ids.items()}
        for kind, job in done.items():
            assert job_state(job) is JobState.REJECTED, (kind, job.error)
        yield {"port": server.metrics_port, "ids": ids,
               "reports": {k: JobReport.from_json(j.report_json) for k, j in done.items()}}
    finally:
        server.stop()


def expected(report: JobReport, job_id: str, verdict: str) -> set[tuple[str, ...]]:
    """(job_id, stage, subgroup, rule) of each blocking check with ``verdict`` in the stage
    that decided the job: what the alert and the dashboard panel must show."""
    stage = report.deciding_stage
    return {(job_id, stage.stage, c.subgroup, c.rule) for c in stage.checks
            if c.verdict == verdict and blocks(stage, c)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(finished_jobs, tmp_path_factory):
    """Prometheus on 127.0.0.1 scraping the server every second with the shipped rules."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; `make test` "
                    "installs it)")
    folder = tmp_path_factory.mktemp("prometheus")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(ALERTS)],
              "scrape_configs": [{"job_name": "tpet-api", "static_configs": [
                  {"targets": [f"127.0.0.1:{finished_jobs['port']}"]}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(folder / "log", "w") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


def api(base: str, path: str, **params: str) -> object:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return body["data"]


def firing(base: str, deadline_s: float = 30.0) -> dict[str, list[dict]]:
    """Firing alerts by name, once both guardrail alerts fire (or the deadline passes)."""
    end, alerts = time.monotonic() + deadline_s, {}
    while time.monotonic() < end:
        try:
            data = api(base, "alerts")
        except OSError:  # not listening yet
            time.sleep(0.5)
            continue
        alerts = {}
        for alert in data["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert)
        if FAILED in alerts and BLOCKED in alerts:
            return alerts
        time.sleep(0.5)
    return alerts


def panel_query(title: str) -> str:
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"] == title)
    (target,) = panel["targets"]
    return target["expr"]


def test_each_guardrail_alert_names_its_job_and_subgroup_as_the_dashboard_does(
        finished_jobs, prometheus):
    ids, reports = finished_jobs["ids"], finished_jobs["reports"]
    want = {FAILED: expected(reports["fail"], ids["fail"], "FAIL"),
            BLOCKED: expected(reports["blocked"], ids["blocked"], "INSUFFICIENT_EVIDENCE")}
    # the arithmetic of the data (module docstring), as the reports state it
    assert want[FAILED] == {(ids["fail"], "student", "mixed", "min_accuracy")}
    assert want[BLOCKED] == {(ids["blocked"], "student", "mixed", "min_accuracy")}
    assert not expected(reports["fail"], ids["fail"], "INSUFFICIENT_EVIDENCE")
    assert not expected(reports["blocked"], ids["blocked"], "FAIL")

    alerts = firing(prometheus)
    assert set(alerts) == {FAILED, BLOCKED}, alerts  # the API is up: nothing else fires
    for name, rows in want.items():
        assert {tuple(a["labels"][k] for k in LABELS) for a in alerts[name]} == rows
        for alert in alerts[name]:
            job_id, subgroup = alert["labels"]["job_id"], alert["labels"]["subgroup"]
            assert job_id in alert["annotations"]["summary"]
            assert subgroup in alert["annotations"]["summary"]
            assert f"tpet report {job_id}" in alert["annotations"]["description"]
        shown = api(prometheus, "query", query=panel_query(PANELS[name]))["result"]
        assert {tuple(r["metric"][k] for k in LABELS) for r in shown} == rows
