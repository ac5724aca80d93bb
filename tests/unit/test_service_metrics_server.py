"""The metrics of a real in-process server (no job slots): RPC counts by method and code, the
/metrics endpoint on its own port, and a clear error when that port is taken."""

import socket
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from compression.errors import InvalidInput
from service._proto import compress_pb2, compress_pb2_grpc
from service.client import TpetClient
from service.config import ServerConfig
from service.metrics import PrometheusMetrics
from service.server import start_server

SPEC = {"name": "q", "teacher": {"path": "t.pt2"}}


def config(tmp_path, **overrides):
    return ServerConfig(**{"port": 0, "state_dir": str(tmp_path / "state"), "gpus": [],
                           "max_concurrent_jobs": 0, "metrics_port": 0, **overrides})


def test_every_call_is_counted_by_method_and_code(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    metrics = PrometheusMetrics()
    server = start_server(config(tmp_path, auth_token_file=str(tmp_path / "token"),
                                 metrics_port=-1), metrics=metrics)
    try:
        client = TpetClient(server.address, token="s3cret", retries=0)
        job = client.compress(SPEC)
        client.get_job(job.id)
        with pytest.raises(Exception, match="no job"):
            client.get_job("nope")
        client.cancel(job.id)
        assert [e.kind for e in client.watch(job.id)] == ["state", "state"]
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError):  # no token
                compress_pb2_grpc.CompressServiceStub(channel).ListJobs(
                    compress_pb2.ListJobsRequest(), timeout=5)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=5)
    finally:
        server.stop(grace_s=1)

    def calls(method, code, service="teacherspet.v1.CompressService"):
        return metrics.registry.get_sample_value(
            "tpet_rpc_requests_total", {"service": service, "method": method, "code": code})

    assert calls("GetJob", "OK") == 1 and calls("GetJob", "NOT_FOUND") == 1
    assert calls("Compress", "OK") == 1 and calls("CancelJob", "OK") == 1
    assert calls("WatchJob", "OK") == 1 and calls("ListJobs", "UNAUTHENTICATED") == 1
    assert calls("Check", "OK", service="grpc.health.v1.Health") == 1
    assert metrics.registry.get_sample_value("tpet_rpc_duration_seconds_count", {
        "service": "teacherspet.v1.CompressService", "method": "GetJob"}) == 2


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def test_metrics_are_served_on_their_own_port_until_stop(tmp_path):
    server = start_server(config(tmp_path))
    try:
        assert server.metrics_port not in (None, 0, server.port)
        TpetClient(server.address, retries=0).compress(SPEC)
        text = scrape(server.metrics_port)
        assert 'tpet_jobs{state="QUEUED"} 1.0' in text and "tpet_queue_depth 1.0" in text
        assert "tpet_jobs_submitted_total 1.0" in text
        assert "_created" not in text  # no twin series per counter
    finally:
        server.stop(grace_s=1)
    with pytest.raises(urllib.error.URLError):
        scrape(server.metrics_port)


def test_a_taken_metrics_port_is_a_clear_error_and_leaves_nothing_open(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"cannot serve metrics on 127.0.0.1:{port}.*"
                                               "--metrics-port"):
            start_server(config(tmp_path, metrics_port=port))
    server = start_server(config(tmp_path, metrics_port=-1))  # the store was closed cleanly
    assert server.metrics_port is None
    server.stop(grace_s=1)
