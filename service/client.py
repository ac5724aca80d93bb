"""``TpetClient``: the Python client of CompressService (the CLI uses it too).

Failed calls raise the service's exceptions (``InvalidInput`` with the server's list of
problems, ``NotFound``, ``FailedPrecondition``, ``QueueFull``, ``Unavailable`` ...), never raw
``grpc.RpcError``. Jobs and events are the protobuf messages.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import grpc

from compression.spec import JobSpec
from service import convert
from service._proto import compress_pb2, compress_pb2_grpc, spec_pb2
from service.errors import Unavailable, error_from_status, from_server
from service.security import ClientTls, channel_credentials, load_token
from service.states import JobState, is_terminal

__all__ = ["TpetClient", "DEFAULT_SERVER", "job_state", "CLIENT_MAX_RECEIVE_BYTES"]

DEFAULT_SERVER = "127.0.0.1:50051"
# gRPC's default is 4 MiB; a job's reply carries its report, which may be larger. The server
# refuses limits whose replies would not fit in this (service.server).
CLIENT_MAX_RECEIVE_BYTES = 64 * 2**20
T = TypeVar("T")


def job_state(job: compress_pb2.Job) -> JobState:
    return convert.state_from_proto(job.state)


class TpetClient:
    """``target``: host:port (default ``$TPET_SERVER`` or 127.0.0.1:50051); ``token``: the
    server's bearer token, when it has one (default ``$TPET_TOKEN``, else the contents of
    ``$TPET_TOKEN_FILE``); ``tls``: talk TLS (default: from ``$TPET_TLS_CA``,
    ``$TPET_TLS_CERT`` and ``$TPET_TLS_KEY`` when one is set; else plaintext)."""

    def __init__(self, target: str | None = None, token: str | None = None,
                 timeout_s: float = 30.0, retries: int = 3, tls: ClientTls | None = None):
        self.target = target or os.environ.get("TPET_SERVER") or DEFAULT_SERVER
        token = token if token is not None else _env_token()
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s, self.retries = timeout_s, retries
        tls = tls if tls is not None else ClientTls.from_env()
        options = [("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES)]
        self.channel = (grpc.secure_channel(self.target, channel_credentials(tls), options)
                        if tls is not None else grpc.insecure_channel(self.target, options))
        self.stub = compress_pb2_grpc.CompressServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TpetClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def compress(self, spec: str | Path | dict | JobSpec | spec_pb2.JobSpec,
                 request_id: str | None = None) -> compress_pb2.Job:
        """Submit a job (a job file, a mapping, a ``JobSpec`` or its message). Retries reuse
        ``request_id`` (a fresh UUID by default), so a retried call never makes two jobs."""
        request = compress_pb2.CompressRequest(request_id=request_id or uuid.uuid4().hex,
                                               spec=_spec_message(spec))
        return self._call(self.stub.Compress, request)

    def get_job(self, job_id: str) -> compress_pb2.Job:
        return self._call(self.stub.GetJob, compress_pb2.GetJobRequest(job_id=job_id))

    def list_jobs(self, states: Iterable[JobState | str] = (),
                  page_size: int = 100) -> Iterator[compress_pb2.Job]:
        """Every job (in submission order), fetched page by page."""
        token = ""
        while True:
            reply = self._call(self.stub.ListJobs, compress_pb2.ListJobsRequest(
                page_size=page_size, page_token=token,
                states=[convert.state_to_proto(s) for s in states]))
            yield from reply.jobs
            token = reply.next_page_token
            if not token:
                return

    def watch(self, job_id: str, after: int = 0) -> Iterator[compress_pb2.JobEvent]:
        """The job's events after sequence ``after``, until it finishes. A dropped stream is
        resumed from the last event seen (up to ``retries`` times in a row)."""
        failures = 0
        while True:
            request = compress_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)
            call = self.stub.WatchJob(request, metadata=self.metadata)
            try:
                for event in call:
                    failures = 0
                    after = event.sequence
                    yield event
                return
            except grpc.RpcError as exc:
                error = error_from_status(exc.code(), exc.details() or "")
                failures += 1
                if not isinstance(error, Unavailable) or failures > self.retries:
                    raise error from None
                time.sleep(0.5 * failures)
            finally:  # a caller that stops early frees the server's stream at once
                call.cancel()

    def cancel(self, job_id: str) -> compress_pb2.Job:
        return self._call(self.stub.CancelJob, compress_pb2.CancelJobRequest(job_id=job_id))

    def wait(self, job_id: str, on_event: Callable[[compress_pb2.JobEvent], None] | None = None,
             timeout_s: float | None = None) -> compress_pb2.Job:
        """Follow the job to its end (calling ``on_event`` for each event); return it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
            if deadline is not None and time.monotonic() > deadline:
                break
        job = self.get_job(job_id)
        if not is_terminal(job_state(job)):
            raise TimeoutError(f"job {job_id} is still {job_state(job).value} after "
                               f"{timeout_s} s")
        return job

    def _call(self, method: Callable[..., T], request: Any) -> T:
        for attempt in range(self.retries + 1):
            try:
                return method(request, metadata=self.metadata, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                error = error_from_status(exc.code(), exc.details() or "")
                if not isinstance(error, Unavailable) or attempt == self.retries:
                    if isinstance(error, Unavailable) and not from_server(exc):
                        error = Unavailable(f"cannot reach the server at {self.target} "
                                            f"({exc.details()}); is `tpet serve` running?")
                    raise error from None
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")


def _env_token() -> str:
    if os.environ.get("TPET_TOKEN"):
        return os.environ["TPET_TOKEN"]
    path = os.environ.get("TPET_TOKEN_FILE", "")
    return load_token(path) if path else ""


def _spec_message(spec: Any) -> spec_pb2.JobSpec:
    if isinstance(spec, spec_pb2.JobSpec):
        return spec
    if isinstance(spec, JobSpec):
        return convert.spec_to_proto(spec)
    if isinstance(spec, dict):
        return convert.dict_to_proto(spec)
    return convert.load_job_proto(spec)
