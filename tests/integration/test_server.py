"""The Compress service as a pipeline uses it: a real gRPC server on 127.0.0.1 (port 0), real
worker processes distilling on a tiny synthetic dataset, the real client."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from compression.errors import InvalidInput
from service._proto import compress_pb2, compress_pb2_grpc
from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.convert import struct_to_dict
from service.errors import AlreadyExists, FailedPrecondition, NotFound, QueueFull
from service.server import start_server
from service.states import JobState
from tests.integration.conftest import JOB_TIMEOUT_S

pytestmark = pytest.mark.integration

FAST = {"training": {"epochs": 2, "batch_size": 32, "lr": 0.05}}
# Long enough to be interrupted: ~0.1 s per epoch here, a checkpoint after each.
LONG = {"training": {"epochs": 20, "batch_size": 32, "lr": 0.05, "progress_every_steps": 5}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A small teacher for every job of a module (untrained: distillation only needs logits)."""
    from compression.models import build_model, save_exported

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt2"
    save_exported(build_model("tiny_cnn", 1, 4, 1.0).eval(), (1, 8, 8), path)
    return path


@pytest.fixture
def job(bars_job, teacher):
    """``job(**overrides)``: a bars job file using the module's teacher."""
    return lambda **overrides: bars_job(**{"teacher": {"path": str(teacher)}, **overrides})


@pytest.fixture
def servers(tmp_path, tmp_path_factory):
    """``servers(**config)`` starts a server on a free port; all stop at the end."""
    started = []

    def start(**config):
        # jobs read data and teachers from pytest's temporary folders; metrics on a free port
        config = {"port": 0, "state_dir": str(tmp_path / "state"), "gpus": [],
                  "metrics_port": 0, "data_roots": [str(tmp_path_factory.getbasetemp())],
                  **config}
        server = start_server(ServerConfig(**config))
        started.append(server)
        return server, TpetClient(f"127.0.0.1:{server.port}", retries=0)

    yield start
    for server in started:
        if not server.manager.stopping:
            server.stop()


def states_of(events) -> list[str]:
    return [struct_to_dict(e.payload)["state"] for e in events if e.kind == "state"]


def wait_for_progress(client, job_id, min_epoch=2):
    """Return once training reached ``min_epoch`` (a checkpoint exists); fail if it ended."""
    for event in client.watch(job_id):
        payload = struct_to_dict(event.payload)
        if event.kind == "progress" and payload.get("phase") == "train" and \
                payload.get("epoch", 0) >= min_epoch:
            return
    pytest.fail(f"job {job_id} ended before epoch {min_epoch}: {client.get_job(job_id)}")


def worker_pid(client, job_id) -> int:
    deadline = time.monotonic() + 10
    while not (worker := client.get_job(job_id).worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(worker.removeprefix("pid "))


def test_submit_and_watch_to_success(servers, job):
    server, client = servers()
    submitted = client.compress(job(**FAST))
    events = list(client.watch(submitted.id))

    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert states_of(events) == ["QUEUED", "RUNNING", "SUCCEEDED"]
    started = [e.stage for e in events if e.kind == "stage_started"]
    assert started[:5] == ["load_data", "load_teacher", "evaluate_teacher", "profile_teacher",
                           "distill"]
    progress = [struct_to_dict(e.payload) for e in events if e.kind == "progress"
                and e.stage == "distill"]
    assert {p["epoch"] for p in progress if p.get("phase") == "train"} == {1, 2}
    tail = list(client.watch(submitted.id, after=events[-3].sequence))  # resumable
    assert [e.sequence for e in tail] == [e.sequence for e in events[-2:]]

    done = client.get_job(submitted.id)
    assert job_state(done) is JobState.SUCCEEDED and done.attempts == 1
    report = json.loads(done.report_json)
    assert report["evaluations"]["student"]["overall"]["n"] == 200
    out = Path(done.output_dir)
    assert out == Path(server.store.path).parent / "artifacts" / done.id
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "student.pt2").exists() and (out / "worker.log").exists()


def test_health_and_reflection(servers):
    server, _ = servers(max_concurrent_jobs=0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "teacherspet.v1.CompressService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for s in reply.list_services_response.service}
        assert {"teacherspet.v1.CompressService", "teacherspet.v1.WorkerService",
                "grpc.health.v1.Health"} <= names


def test_cancel_mid_training(servers, job):
    _, client = servers()
    submitted = client.compress(job(training={**LONG["training"], "epochs": 400}))
    wait_for_progress(client, submitted.id, min_epoch=1)
    asked = time.monotonic()
    assert client.cancel(submitted.id).cancel_requested
    done = client.wait(submitted.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.CANCELLED
    assert time.monotonic() - asked < 30  # seen by should_stop, well before 400 epochs
    assert "distill cancelled at epoch" in done.error
    with pytest.raises(FailedPrecondition, match="already finished \\(CANCELLED\\)"):
        client.cancel(submitted.id)


def test_idempotent_resubmit_and_50_concurrent_submissions(servers, job):
    _, client = servers(max_concurrent_jobs=0, max_queued=100)  # queue only: nothing runs
    path = job(**FAST)
    first = client.compress(path, request_id="pipeline-run-7")
    again = client.compress(path, request_id="pipeline-run-7")
    assert again.id == first.id
    with pytest.raises(AlreadyExists, match="pipeline-run-7"):
        client.compress(job(name="other"), request_id="pipeline-run-7")

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: client.compress(path, request_id=f"r{i}").id, range(50)))
    assert len(set(ids)) == 50
    listed = [j.id for j in client.list_jobs([JobState.QUEUED], page_size=7)]
    assert sorted(listed) == sorted({first.id, *ids})


def test_full_queue_is_resource_exhausted(servers, job):
    _, client = servers(max_concurrent_jobs=0, max_queued=1)
    client.compress(job(**FAST))
    with pytest.raises(QueueFull, match="max_queued 1"):
        client.compress(job(**FAST))


def test_bad_requests_get_the_right_codes(servers):
    server, client = servers(max_concurrent_jobs=0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = compress_pb2_grpc.CompressServiceStub(channel)
        request = compress_pb2.CompressRequest()
        request.spec.training.epochs = 0
        request.spec.training.optimizer = "rmsprop"
        request.spec.name = "bad name"
        with pytest.raises(grpc.RpcError) as err:
            stub.Compress(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        for problem in ("epochs is 0", "'rmsprop' is not one of sgd, adamw", "name 'bad name'"):
            assert problem in details
        assert "Traceback" not in details
        for call in (lambda: stub.GetJob(compress_pb2.GetJobRequest(job_id="nope"), timeout=5),
                     lambda: list(stub.WatchJob(compress_pb2.WatchJobRequest(job_id="nope"),
                                                timeout=5))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFound, match="no job 'nope'"):
        client.cancel("nope")
    with pytest.raises(InvalidInput) as err:  # the client lists the server's problems
        client.compress({"name": "x", "training": {"epochs": 0, "lr": -1}})
    assert len(err.value.problems) == 2


def test_cancelling_a_finished_job_is_failed_precondition(servers, job):
    _, client = servers(max_concurrent_jobs=0)
    queued = client.compress(job(**FAST))
    assert job_state(client.cancel(queued.id)) is JobState.CANCELLED
    with grpc.insecure_channel(client.target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            compress_pb2_grpc.CompressServiceStub(channel).CancelJob(
                compress_pb2.CancelJobRequest(job_id=queued.id), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already finished (CANCELLED)" in err.value.details()


def test_pickled_teacher_fails_the_job_with_the_reason(servers, bars_job, tmp_path):
    import torch

    torch.save(torch.nn.Linear(64, 4), tmp_path / "teacher.pt")
    _, client = servers()
    submitted = client.compress(bars_job(teacher={"path": str(tmp_path / "teacher.pt")}, **FAST))
    done = client.wait(submitted.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.FAILED and done.error_kind == "invalid_input"
    assert "pickled" in done.error and "Traceback" not in done.error


def test_killed_worker_fails_the_job_with_the_reason(servers, job):
    _, client = servers(max_attempts=1)
    submitted = client.compress(job(**LONG))
    wait_for_progress(client, submitted.id, min_epoch=1)
    os.kill(worker_pid(client, submitted.id), signal.SIGKILL)
    done = client.wait(submitted.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.FAILED and done.error_kind == "worker_lost"
    assert done.error == "worker killed by signal SIGKILL"


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(servers, job):
    _, client = servers(max_attempts=2)
    submitted = client.compress(job(**LONG))
    wait_for_progress(client, submitted.id, min_epoch=2)  # epoch 1's checkpoint is saved
    os.kill(worker_pid(client, submitted.id), signal.SIGKILL)
    done = client.wait(submitted.id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.SUCCEEDED and done.attempts == 2
    training = json.loads(done.report_json)["training"]
    assert training["resumed_from_epoch"] >= 1
    assert training["resumed_from_epoch"] + training["epochs_run"] == 20
    states = states_of(client.watch(submitted.id))
    assert states == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
