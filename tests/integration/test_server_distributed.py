"""A job whose worker runs as two data-parallel ranks under torchrun (gloo on CPU), through a
real server: rank 0 alone reports and ships, and a cancel ends every rank."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.convert import struct_to_dict
from service.launcher import LocalLauncher, torchrun_args
from service.server import start_server
from service.states import JobState
from tests.integration.conftest import JOB_TIMEOUT_S

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path, tmp_path_factory):
    config = ServerConfig(port=0, state_dir=str(tmp_path / "state"), gpus=[], metrics_port=-1,
                          data_roots=[str(tmp_path_factory.getbasetemp())])
    started = start_server(config, launcher=LocalLauncher(worker_args=torchrun_args(2)))
    yield started, TpetClient(f"127.0.0.1:{started.port}", retries=0)
    started.stop()


@pytest.fixture
def job(bars_job, tmp_path):
    from compression.models import build_model, save_exported

    teacher = tmp_path / "teacher.pt2"
    save_exported(build_model("tiny_cnn", 1, 4, 1.0).eval(), (1, 8, 8), teacher)
    return lambda **training: bars_job(teacher={"path": str(teacher)},
                                       mitigation={"name": "group_dro", "alpha": 0.5},
                                       training={"batch_size": 32, "lr": 0.05, **training})


def processes_of(job_id: str) -> list[int]:
    """Live processes whose environment names the job (the torchrun agent and its ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # not a process, gone, or not ours
            continue
        if f"TPET_JOB_ID={job_id}".encode() in env:
            found.append(int(entry.name))
    return found


def test_two_ranks_run_one_job_and_rank_0_reports(server, job):
    _, client = server
    submitted = client.compress(job(epochs=2))
    events = list(client.watch(submitted.id))
    done = client.get_job(submitted.id)
    assert job_state(done) is JobState.SUCCEEDED, done.error
    assert done.attempts == 1
    report = json.loads(done.report_json)
    assert report["environment"]["ranks"] == 2
    assert report["training"]["epochs_run"] == 2
    # one stream of events: each training step reported once, not once per rank
    steps = [(p["epoch"], p["step"]) for p in map(struct_to_dict, (
        e.payload for e in events if e.kind == "progress" and e.stage == "distill"))
        if p.get("phase") == "train"]
    assert steps and len(steps) == len(set(steps))
    assert (Path(done.output_dir) / "model.onnx").exists()
    assert gone(submitted.id), "a rank or the torchrun agent did not exit"


def test_a_failure_every_rank_shares_is_reported_and_ends_every_rank(server, job):
    _, client = server
    submitted = client.compress(job(epochs=3, lr=1e6))  # the loss overflows on both ranks
    done = client.wait(submitted.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.FAILED
    assert "loss became" in done.error and "lower lr" in done.error, done.error
    # rank 1 would wait 20 s for rank 0 to report; rank 0's exit 1 makes torchrun end it sooner
    assert gone(submitted.id, timeout_s=12)


def test_cancel_ends_every_rank(server, job):
    _, client = server
    submitted = client.compress(job(epochs=400, progress_every_steps=5))
    for event in client.watch(submitted.id):
        if event.kind == "progress" and struct_to_dict(event.payload).get("epoch", 0) >= 1:
            break
    assert len(processes_of(submitted.id)) >= 3  # torchrun and two ranks
    assert client.cancel(submitted.id).cancel_requested
    done = client.wait(submitted.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.CANCELLED
    assert gone(submitted.id)


def gone(job_id: str, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while processes_of(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not processes_of(job_id)
