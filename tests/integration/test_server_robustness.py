"""The server under attack and outage, for real: a flood of Compress calls whose data file is a
FIFO never starves health, listing or a graceful stop; a job store that cannot write turns
health NOT_SERVING and Compress UNAVAILABLE, and once it can write again queued jobs run."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto import compress_pb2, compress_pb2_grpc, spec_pb2
from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.errors import Unavailable
from service.launcher import ExitStatus
from service.security import InputPolicy
from service.server import start_server
from service.states import JobState

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=3).status


def wait_until(condition, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def release_fifos(paths: list[Path]) -> None:
    """Open each FIFO for writing and close it: a reader blocked in open() gets EOF."""
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader waits on it (ENXIO): nothing to release
            pass


def flood(server, spec_of, calls: int = 40) -> list[grpc.RpcError | None]:
    """``calls`` concurrent Compress calls (more than the 32 RPC threads) while health and
    ListJobs must answer at once; then a graceful stop must end in time."""
    with grpc.insecure_channel(server.address) as channel:
        stub = compress_pb2_grpc.CompressServiceStub(channel)
        futures = [stub.Compress.future(compress_pb2.CompressRequest(
            request_id=f"r{i}", spec=spec_of(i)), timeout=30) for i in range(calls)]
        time.sleep(0.3)  # the calls are in: their checks now hang, if any does
        started = time.monotonic()
        assert health_of(channel) == SERVING
        assert stub.ListJobs(compress_pb2.ListJobsRequest(), timeout=3).jobs == []
        assert time.monotonic() - started < 3
        errors = [future.exception() for future in futures]
        assert health_of(channel) == SERVING
    started = time.monotonic()
    server.stop(grace_s=1)
    assert time.monotonic() - started < 10
    return errors


def test_fifo_inputs_never_starve_health_listing_or_a_graceful_stop(tmp_path):
    fifos = [tmp_path / f"data{i}.csv" for i in range(4)]
    for fifo in fifos:
        os.mkfifo(fifo)  # opening one to read waits for a writer
    server = start_server(ServerConfig(port=0, state_dir=str(tmp_path / "state"), gpus=[],
                                       max_concurrent_jobs=0, metrics_port=-1,
                                       data_roots=[str(tmp_path)]),
                          manager_options={"input_check_timeout_s": 1.0})

    def spec_of(i):
        spec = spec_pb2.JobSpec(name="fifo")
        spec.teacher.path = str(tmp_path / "t.pt2")
        spec.data.source, spec.data.path = "manifest", str(fifos[i % 4])
        spec.data.test_path = str(fifos[(i + 1) % 4])
        return spec

    try:
        errors = flood(server, spec_of)
    finally:
        release_fifos(fifos)
        server.stop(grace_s=1)  # a no-op once stopped
    assert all(e is not None and "Traceback" not in e.details() for e in errors)
    assert {e.code() for e in errors} <= {grpc.StatusCode.INVALID_ARGUMENT,
                                          grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          grpc.StatusCode.PERMISSION_DENIED}


@dataclass(frozen=True)
class StalledMount(InputPolicy):
    """A policy whose every check hangs until ``release``: what a stalled network mount does
    to a stat() or an open(), which no policy can refuse in advance."""

    release: threading.Event = field(default_factory=threading.Event)

    def check(self, spec, deep=True):
        self.release.wait()


def test_checks_that_hang_are_bounded_in_time_and_number(tmp_path):
    stalled = StalledMount((tmp_path,), 2**30)
    server = start_server(ServerConfig(port=0, state_dir=str(tmp_path / "state"), gpus=[],
                                       max_concurrent_jobs=0, metrics_port=-1),
                          manager_options={"input_check_timeout_s": 1.0, "inputs": stalled})
    try:
        errors = flood(server, lambda i: spec_pb2.JobSpec(
            name="stalled", teacher=spec_pb2.TeacherSpec(path="t.pt2")))
    finally:
        stalled.release.set()
        server.stop(grace_s=1)
    codes = [e.code() for e in errors]
    # 4 checks run and time out; 16 calls wait 1 s for a slot in vain; 20 are refused at once
    assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) == 4
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 36
    timed_out = [e.details() for e in errors if e.code() == grpc.StatusCode.INVALID_ARGUMENT]
    assert all("could not check" in d and "within 1 s" in d for d in timed_out)


class HeldLauncher:
    """Workers that run until the test ends them (``end``): what the scheduler does with
    them is what this test watches, not what a worker process does."""

    class Handle:
        def __init__(self, name: str):
            self.name, self.exit = name, None

    def __init__(self):
        self.started: list[tuple[str, HeldLauncher.Handle]] = []

    def start(self, job, env):
        handle = self.Handle(f"held {len(self.started)}")
        self.started.append((job.job_id, handle))
        return handle

    def poll(self, handle):
        return handle.exit

    def kill(self, handle, force=False):
        handle.exit = handle.exit or ExitStatus(-15, "worker killed by signal SIGTERM")

    def end(self, job_id: str) -> None:
        dict(self.started)[job_id].exit = ExitStatus(1, "worker exited with code 1")


def set_max_pages(store, pages: int) -> None:
    """Cap the store's file at ``pages`` pages on its own connection: a full disk to SQLite."""
    with store._lock:
        store._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_store_that_cannot_write_is_not_serving_until_it_can(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tpet.store")
    launcher = HeldLauncher()
    spec = {"name": "q", "teacher": {"path": "t.pt2"}}
    server = start_server(ServerConfig(port=0, state_dir=str(tmp_path), gpus=[],
                                       max_concurrent_jobs=1, metrics_port=-1),
                          launcher=launcher, manager_options={"store_probe_s": 0.2})
    client = TpetClient(server.address, retries=0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            first = client.compress(spec).id
            wait_until(lambda: len(launcher.started) == 1, what="the first job to start")
            second = client.compress(spec).id  # queued behind the first
            pages = server.store._query_one("PRAGMA page_count")[0]
            set_max_pages(server.store, pages)  # full: nothing may grow
            wait_until(lambda: health_of(channel) == NOT_SERVING, what="NOT_SERVING")
            with pytest.raises(Unavailable, match="job store cannot write .*disk is full"):
                client.compress(spec)
            assert [j.id for j in client.list_jobs()] == [first, second]  # reads still work
            launcher.end(first)  # its end must wait for the store, not be lost
            time.sleep(1.0)  # several scheduler rounds, none of which may start the second
            assert len(launcher.started) == 1
            assert job_state(client.get_job(second)) is JobState.QUEUED

            set_max_pages(server.store, 1_073_741_823)  # space freed
            wait_until(lambda: health_of(channel) == SERVING, what="SERVING again")
            wait_until(lambda: len(launcher.started) == 2, what="the queued job to start")
            assert launcher.started[1][0] == second
            assert job_state(client.get_job(first)) is JobState.FAILED
            assert job_state(client.get_job(second)) is JobState.RUNNING
            assert job_state(client.compress(spec)) is JobState.QUEUED
    finally:
        server.stop(grace_s=1)
    outage = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert 1 <= len(outage) <= 2 and not any(r.exc_info for r in outage)  # not a flood
    assert any("can write again" in r.getMessage() for r in caplog.records)


def test_sqlite_errors_from_bugs_are_not_taken_for_outages(tmp_path):
    from service.store import JobStore, is_storage_error

    store = JobStore(tmp_path / "store.db")
    try:
        with pytest.raises(sqlite3.OperationalError) as err:
            store._query_one("SELECT no_such_column FROM jobs")
        assert not is_storage_error(err.value) and store.writable
    finally:
        store.close()
