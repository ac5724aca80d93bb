"""A worker process: run one job's pipeline and report to the manager over gRPC.

Started by a launcher as ``python -m service.worker`` with the environment of
``service.worker_contract`` (the manager's address, the job id and this attempt's token).
It fetches the spec (StartJob), runs ``compression.pipeline.run`` with its events streamed back
(ReportEvents, whose answers carry the cancel request) and reports the outcome (FinishJob).

Under torchrun (a job spanning GPUs or nodes) rank 0 alone talks to the manager: it passes the
spec to the other ranks, which help train and then exit (``compression.distributed``).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import grpc

from compression import access, distributed
from compression.errors import Cancelled, TpetError
from compression.events import Event, emit_nothing, never_stop
from service._proto import worker_pb2, worker_pb2_grpc
from service.convert import dict_to_struct, proto_to_spec
from service.errors import kind_of
from service.progress import ProgressPrinter
from service.security import worker_channel
from service.worker_contract import (TOKEN_METADATA, WORKER_EXIT_FAILED,
                                     WORKER_EXIT_MISCONFIGURED, WORKER_TLS_SERVER_NAME_ENV,
                                     read_worker_env)

__all__ = ["Reporter", "run_job", "input_access", "main"]

TERMINATION_LOG = Path("/dev/termination-log")  # Kubernetes' default terminationMessagePath
_REPORT_GRACE_S = 20.0
_DENIED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
           grpc.StatusCode.NOT_FOUND)


class Reporter:
    """The pipeline's ``on_event`` and ``should_stop``: events queue up and one thread sends
    them in order every ``interval_s`` (an empty batch is the heartbeat that fetches the cancel
    flag), so training never waits on the network. It asks the job to stop when the manager
    says so, refuses this attempt's token, or cannot be reached for ``lost_after_s``."""

    def __init__(self, stub: Any, job_id: str, metadata: tuple, interval_s: float = 0.5,
                 lost_after_s: float = 60.0):
        self.stub, self.job_id, self.metadata = stub, job_id, metadata
        self.interval_s, self.lost_after_s = interval_s, lost_after_s
        self.revoked = False
        self._queue: queue.Queue[Event] = queue.Queue()
        self._stop, self._closing = threading.Event(), threading.Event()
        self._pending: list[worker_pb2.WorkerEvent] = []
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="tpet-reporter", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        self._queue.put(event)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def close(self, timeout: float = 30.0) -> None:
        """Send what is left, then stop the thread."""
        self._closing.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            closing = self._closing.is_set()
            self._drain(wait=not closing)
            self._send()
            if closing and (not self._pending or self.revoked or self._lost()):
                return

    def _drain(self, wait: bool) -> None:
        try:
            event = self._queue.get(timeout=self.interval_s) if wait else self._queue.get_nowait()
            while True:
                self._pending.append(worker_pb2.WorkerEvent(
                    kind=event.kind, stage=event.stage, payload=dict_to_struct(
                        _json_safe(event.payload))))
                event = self._queue.get_nowait()
        except queue.Empty:
            pass

    def _send(self) -> None:
        if self.revoked:
            return
        request = worker_pb2.ReportEventsRequest(job_id=self.job_id, events=self._pending)
        try:
            reply = self.stub.ReportEvents(request, metadata=self.metadata, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() in _DENIED:  # a newer attempt owns the job, or it is gone
                self.revoked = True
                self._stop.set()
            elif self._lost():
                self._stop.set()
            return
        self._pending, self._last_ok = [], time.monotonic()
        if reply.stop:
            self._stop.set()

    def _lost(self) -> bool:
        return time.monotonic() - self._last_ok > self.lost_after_s


def _json_safe(payload: dict[str, Any]) -> dict[str, Any]:
    # numpy scalars and other strays become plain numbers or strings
    return json.loads(json.dumps(payload, default=lambda v: v.item() if hasattr(v, "item")
                                 else str(v)))


def run_job(spec_message: Any, reporter: Reporter) -> tuple[str, str, str, str]:
    """Run the pipeline; return (outcome, error, error_kind, report_json). A rejected job's
    error says why, as `tpet run` does: job lists show it without the report."""
    from compression.pipeline import REJECTED, run
    from service.report_view import as_report, verdict_reason

    printer = ProgressPrinter()

    def on_event(event: Event) -> None:
        reporter(event)
        printer(event)

    try:
        result = run(proto_to_spec(spec_message), on_event, reporter.should_stop)
        text = result.report_path.read_text()
        why = verdict_reason(as_report(json.loads(text))) if result.status == REJECTED else ""
        return result.status, why, "", text
    except Exception as exc:  # its kind (service.errors.KINDS) says what the failure means
        kind = kind_of(exc).value
        if isinstance(exc, Cancelled):
            return "CANCELLED", str(exc), kind, ""
        if isinstance(exc, TpetError):
            return "FAILED", str(exc), kind, ""
        traceback.print_exc()  # a bug: the traceback goes to the worker log, the gist to the job
        return "FAILED", f"internal error {type(exc).__name__}: {exc} (see worker.log)", kind, ""


def input_access(started: Any) -> access.InputAccess:
    """The server's input policy from a StartJobResponse; a manager that sends none (no
    policy configured) leaves the library's default: any path, special files refused."""
    if not started.HasField("access"):
        return access.InputAccess()
    policy = started.access
    # Resolved again here: in a pod, a root may be a symlink the server's machine lacks.
    return access.InputAccess.of(list(policy.data_roots), policy.max_data_bytes or None,
                                 policy.allow_torchscript_teachers)


def main() -> int:
    try:
        target, job_id, token = read_worker_env(os.environ)
    except KeyError as exc:
        return _fail(f"worker: {exc.args[0]} is not set; workers are started by `tpet serve`",
                     WORKER_EXIT_MISCONFIGURED)
    joined, code = distributed.init_from_env(), WORKER_EXIT_FAILED
    try:
        code = (_work(target, job_id, ((TOKEN_METADATA, token),)) if distributed.is_primary()
                else _help_primary())
    except grpc.RpcError as exc:  # the manager refused or is gone: nothing left to report to
        hint = ""
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # so does a failed TLS handshake
            hint = (f"; could not reach the manager at {target}: with TLS check "
                    "TPET_WORKER_TLS_* (kubernetes.tls_secret) and that the server certificate "
                    f"names the target or {WORKER_TLS_SERVER_NAME_ENV}")
        code = _fail(f"worker: {exc.code().name}: {exc.details()}{hint}", WORKER_EXIT_FAILED)
    except TpetError as exc:  # e.g. unreadable TLS files: the message says which
        code = _fail(f"worker: {exc}", WORKER_EXIT_MISCONFIGURED)
    finally:
        # After a failure other ranks may wait in a collective: exiting non-zero without
        # leaving the group makes torchrun end them at once.
        if joined and code == 0:
            distributed.shutdown()
    return code


def _fail(message: str, code: int) -> int:
    """Print why the worker ends; in a Kubernetes pod it also becomes the container's
    termination message, which the server shows (torchrun's own output ends its log)."""
    print(message, file=sys.stderr)
    try:
        if TERMINATION_LOG.exists():
            TERMINATION_LOG.write_text(message[:4000])
    except OSError:
        pass
    return code


def _work(target: str, job_id: str, metadata: tuple) -> int:
    with worker_channel(target) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        try:
            started = stub.StartJob(worker_pb2.StartJobRequest(job_id=job_id),
                                    metadata=metadata, timeout=60, wait_for_ready=True)
        except grpc.RpcError:
            distributed.from_primary(None)  # the other ranks give up too
            raise
        # Before anything reads a file: every open is checked against the server's policy.
        access.install(input_access(started))
        distributed.from_primary(started.SerializeToString())
        print(f"worker: job {job_id} attempt {started.attempt}", file=sys.stderr, flush=True)
        reporter = Reporter(stub, job_id, metadata)
        outcome, error, kind, report = run_job(started.spec, reporter)
        reporter.close()
        if reporter.revoked:
            return _fail("worker: the manager no longer grants this attempt; exiting",
                         WORKER_EXIT_FAILED)
        stub.FinishJob(worker_pb2.FinishJobRequest(
            job_id=job_id, outcome=worker_pb2.Outcome.Value(f"OUTCOME_{outcome}"), error=error,
            error_kind=kind, report_json=report), metadata=metadata, timeout=60,
            wait_for_ready=True)
    print(f"worker: job {job_id} {outcome}", file=sys.stderr)
    # A failure may be this rank's alone while the others wait for it (see main).
    return WORKER_EXIT_FAILED if outcome == "FAILED" and distributed.is_distributed() else 0


def _help_primary() -> int:
    """A rank other than 0: train along with rank 0, which reports and ships.

    A cancel reaches every rank at the same step. After any other error this rank waits
    ``_REPORT_GRACE_S`` before it exits 1 (and torchrun ends the job): an error every rank
    shares (invalid input, a NaN loss) reaches rank 0 too, which reports it meanwhile; one of
    this rank's own would otherwise leave rank 0 waiting for it.
    """
    started_bytes = distributed.from_primary(None)
    if started_bytes is None:
        return _fail("worker: rank 0 could not start the job", WORKER_EXIT_FAILED)
    started = worker_pb2.StartJobResponse.FromString(started_bytes)
    access.install(input_access(started))
    from compression.pipeline import run

    try:
        run(proto_to_spec(started.spec), emit_nothing, never_stop)
    except Cancelled:
        return 0
    except Exception as exc:
        if not isinstance(exc, TpetError):
            traceback.print_exc()
        time.sleep(_REPORT_GRACE_S)
        return _fail(f"worker rank {distributed.rank()}: {type(exc).__name__}: {exc}",
                     WORKER_EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
