"""The server in-process with no job slots (nothing runs): calls, watches and their limits."""

import threading

import grpc
import pytest

from service._proto import compress_pb2, compress_pb2_grpc
from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.errors import QueueFull
from service.server import start_server
from service.states import JobState

SPEC = {"name": "q", "teacher": {"path": "t.pt2"}}


@pytest.fixture
def server(tmp_path):
    # rpc_threads 9 leaves room for exactly one open watch
    server = start_server(ServerConfig(port=0, state_dir=str(tmp_path), gpus=[],
                                       max_concurrent_jobs=0, rpc_threads=9,
                                       metrics_port=0))
    yield server
    server.stop(grace_s=1)


def test_port_zero_binds_a_free_port_on_loopback(server):
    assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"


def test_a_watch_ends_when_its_job_finishes(server):
    client = TpetClient(server.address, retries=0)
    job = client.compress(SPEC)
    seen = []
    watcher = threading.Thread(target=lambda: seen.extend(client.watch(job.id)))
    watcher.start()
    client.cancel(job.id)
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert [e.kind for e in seen] == ["state", "state"] and [e.sequence for e in seen] == [1, 2]
    assert job_state(client.get_job(job.id)) is JobState.CANCELLED


def test_open_watches_are_bounded(server):
    client = TpetClient(server.address, retries=0)
    job = client.compress(SPEC)
    with grpc.insecure_channel(server.address) as channel:
        stub = compress_pb2_grpc.CompressServiceStub(channel)
        first = stub.WatchJob(compress_pb2.WatchJobRequest(job_id=job.id))
        assert next(first).kind == "state"  # the stream is open and holds a thread
        with pytest.raises(QueueFull, match="1 watches are open"):
            list(client.watch(job.id))
        first.cancel()


def test_list_jobs_pages_through_everything(server):
    client = TpetClient(server.address, retries=0)
    ids = [client.compress(SPEC).id for _ in range(5)]
    assert [j.id for j in client.list_jobs(page_size=2)] == ids
    assert all(j.report_json == "" and not j.HasField("spec") for j in client.list_jobs())
    assert client.get_job(ids[0]).spec.teacher.path == "t.pt2"
