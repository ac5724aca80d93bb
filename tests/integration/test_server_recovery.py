"""Restarting the service loses no job; the ``tpet`` server commands as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from service.client import TpetClient, job_state
from service.errors import Unauthenticated
from service.states import JobState
from tests.integration.conftest import JOB_TIMEOUT_S, REPO, TPET
from tests.integration.test_server import (FAST, LONG, job, servers, states_of,  # noqa: F401
                                           teacher, wait_for_progress)

pytestmark = pytest.mark.integration


def test_restart_resumes_running_and_queued_jobs(servers, job):
    server, client = servers(max_concurrent_jobs=1)
    running = client.compress(job(**LONG))
    queued = client.compress(job(**FAST))
    wait_for_progress(client, running.id, min_epoch=2)  # epoch 1's checkpoint is saved
    assert job_state(client.get_job(queued.id)) is JobState.QUEUED
    server.stop()

    _, client = servers(max_concurrent_jobs=1)  # a new server on the same state dir
    done = client.wait(running.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.SUCCEEDED and done.attempts == 2
    training = json.loads(done.report_json)["training"]
    assert training["resumed_from_epoch"] >= 1
    assert states_of(client.watch(running.id)) == [
        "QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
    done = client.wait(queued.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.SUCCEEDED and done.attempts == 1


def test_bearer_token_guards_the_public_api(servers, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    server, _ = servers(max_concurrent_jobs=0, auth_token_file=str(tmp_path / "token"))
    target = f"127.0.0.1:{server.port}"
    with pytest.raises(Unauthenticated, match="needs a token"):
        list(TpetClient(target, token="", retries=0).list_jobs())
    with pytest.raises(Unauthenticated, match="not valid"):
        list(TpetClient(target, token="guess", retries=0).list_jobs())
    assert list(TpetClient(target, token="s3cret", retries=0).list_jobs()) == []


def tpet(*args, timeout=JOB_TIMEOUT_S, env=None):
    return subprocess.run([*TPET, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def served(tmp_path, tmp_path_factory):
    """``tpet serve --port 0`` as a process; yields its address."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen([*TPET, "serve", "--port", "0", "--state-dir",
                                    str(tmp_path / "state"), "--metrics-port", "0",
                                    "--data-root", str(tmp_path_factory.getbasetemp())],
                                   cwd=REPO, stderr=out)
    deadline, address = time.monotonic() + 60, None
    while address is None and time.monotonic() < deadline and process.poll() is None:
        match = re.search(r"tpet: serving on (\S+)", log.read_text())
        address = match and match.group(1)
        time.sleep(0.1)
    assert address, f"tpet serve did not report its address:\n{log.read_text()}"
    yield address
    process.terminate()
    assert process.wait(timeout=30) == 0  # SIGTERM stops it gracefully


def test_cli_compress_wait_jobs_report_cancel(served, job, tmp_path):
    ran = tpet("compress", job(**FAST), "--wait", "--server", served)
    assert ran.returncode == 0, ran.stderr
    job_id = ran.stdout.strip()
    assert "==> distill" in ran.stderr and f"job {job_id}: SUCCEEDED" in ran.stderr

    listed = tpet("jobs", "--server", served, "--state", "SUCCEEDED")
    assert listed.returncode == 0 and re.search(rf"{job_id}\s+bars\s+SUCCEEDED", listed.stdout)
    report = tpet("report", job_id, "--server", served)
    assert report.returncode == 0 and "student" in report.stdout and "worst group" in report.stdout
    as_json = tpet("report", job_id, "--json", "--server", served)
    assert json.loads(as_json.stdout)["evaluations"]["student"]["overall"]["n"] == 200

    cancelled = tpet("cancel", job_id, "--server", served)
    assert cancelled.returncode == 4 and "already finished (SUCCEEDED)" in cancelled.stderr
    missing = tpet("watch", "jnope", "--server", served)
    assert missing.returncode == 4 and "no job 'jnope'" in missing.stderr


def test_cli_exit_codes_for_bad_input(served, job, bars_job, tmp_path):
    bad = tpet("compress", job(training={"epochs": 0, "optimizer": "rmsprop"}),
               "--server", served)
    assert bad.returncode == 2
    assert "epochs is 0" in bad.stderr and "'rmsprop' is not one of" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing_teacher = tpet("compress", bars_job(**FAST), "--wait", "--server", served)
    assert missing_teacher.returncode == 2, missing_teacher.stderr  # found by the worker
    assert "teacher.pt2" in missing_teacher.stderr


def test_cli_without_a_server_says_so():
    ran = tpet("jobs", "--server", "127.0.0.1:1")
    assert ran.returncode == 4
    assert "cannot reach the server at 127.0.0.1:1" in ran.stderr and "Traceback" not in ran.stderr
