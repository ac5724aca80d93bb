"""The gRPC servicers: thin adapters that convert, call the job manager, and convert back.

Errors are raised, never turned into status codes here: ``service.errors.ErrorInterceptor``
does that in one place. What protobuf lets through but no job can be (an empty or huge id, an
enum value this server does not know, a spec too large to send back) is refused here as
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

import grpc

from service import convert
from service._proto import compress_pb2, compress_pb2_grpc, worker_pb2, worker_pb2_grpc
from compression.errors import InvalidInput
from service.errors import QueueFull, Unavailable
from service.manager import JobManager
from service.security import InputPolicy
from service.worker_contract import TOKEN_METADATA

__all__ = ["CompressServicer", "WorkerServicer", "MAX_ID_CHARS", "DEFAULT_MAX_SPEC_BYTES"]

MAX_ID_CHARS = 128  # job ids are 13 characters; request ids are the caller's (UUIDs: 36)
DEFAULT_MAX_SPEC_BYTES = 1 << 20


class CompressServicer(compress_pb2_grpc.CompressServiceServicer):
    """``max_watches``: open WatchJob streams each hold an RPC thread; past this many a new
    one is refused (RESOURCE_EXHAUSTED) so workers and short calls always find a thread.
    ``max_spec_bytes``: the largest spec Compress accepts (every Job reply carries it back)."""

    def __init__(self, manager: JobManager, max_watches: int = 24, watch_poll_s: float = 1.0,
                 max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES):
        self.manager = manager
        self.watch_poll_s = watch_poll_s
        self._watch_slots = threading.BoundedSemaphore(max_watches)
        self.max_watches = max_watches
        self.max_spec_bytes = max_spec_bytes

    def Compress(self, request: Any, context: grpc.ServicerContext) -> compress_pb2.Job:
        size = request.spec.ByteSize()
        if size > self.max_spec_bytes:
            raise InvalidInput(f"spec is {size:,} bytes; this server accepts at most "
                               f"{self.max_spec_bytes:,} (max_spec_bytes): move data out of the "
                               "spec into files it names")
        if not request.HasField("spec") or size == 0:
            raise InvalidInput("spec is empty; a job names at least its teacher and data "
                               "(see examples/)")
        request_id = _checked_id("request_id", request.request_id, required=False)
        job = self.manager.submit(convert.proto_to_dict(request.spec), request_id)
        return convert.job_to_proto(job)

    def GetJob(self, request: Any, context: grpc.ServicerContext) -> compress_pb2.Job:
        return convert.job_to_proto(self.manager.get(_checked_id("job_id", request.job_id)))

    def ListJobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        states = [_state(s) for s in request.states]
        jobs, token = self.manager.list(states, request.page_token, request.page_size)
        return compress_pb2.ListJobsResponse(
            jobs=[convert.job_to_proto(j, full=False) for j in jobs], next_page_token=token)

    def WatchJob(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.manager.get(_checked_id("job_id", request.job_id))  # NOT_FOUND before streaming
        if not self._watch_slots.acquire(blocking=False):
            raise QueueFull(f"{self.max_watches} watches are open on this server; poll "
                            "GetJob or retry later")
        try:
            yield from self._watch(request, context)
        finally:
            self._watch_slots.release()

    def _watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        after = request.after_sequence
        while context.is_active():
            events, done = self.manager.wait_events(request.job_id, after, self.watch_poll_s)
            for event in events:
                yield convert.event_to_proto(event)
                after = event.sequence
            if done:
                return
            if self.manager.stopping:
                raise Unavailable(f"the server is stopping; watch again with "
                                  f"after_sequence={after}")

    def CancelJob(self, request: Any, context: grpc.ServicerContext) -> compress_pb2.Job:
        return convert.job_to_proto(self.manager.cancel(_checked_id("job_id", request.job_id)))


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """The manager's end of the worker channel; every call carries the attempt's token."""

    def __init__(self, manager: JobManager):
        self.manager = manager

    def StartJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        spec, attempt = self.manager.worker_start(_checked_id("job_id", request.job_id),
                                                  _token(context))
        return worker_pb2.StartJobResponse(spec=convert.dict_to_proto(spec), attempt=attempt,
                                           access=_access(self.manager.config.inputs))

    def ReportEvents(self, request: Any, context: grpc.ServicerContext) -> Any:
        events = [(e.kind, e.stage, convert.struct_to_dict(e.payload)) for e in request.events]
        stop = self.manager.worker_report(_checked_id("job_id", request.job_id),
                                          _token(context), events)
        return worker_pb2.ReportEventsResponse(stop=stop)

    def FinishJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        outcome = _enum_name(worker_pb2.Outcome, "outcome", request.outcome)
        self.manager.worker_finish(_checked_id("job_id", request.job_id), _token(context),
                                   outcome.removeprefix("OUTCOME_"), request.error,
                                   request.error_kind, request.report_json)
        return worker_pb2.FinishJobResponse()


def _access(policy: InputPolicy | None) -> Any:
    """The server's input policy as the worker installs it; None (a manager without one, as
    in tests and library use) leaves the field unset: any path."""
    if policy is None:
        return None
    return worker_pb2.InputAccess(data_roots=[str(root) for root in policy.roots],
                                  max_data_bytes=policy.max_bytes,
                                  allow_torchscript_teachers=policy.allow_torchscript)


def _token(context: grpc.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get(TOKEN_METADATA, "")


def _checked_id(field: str, value: str, required: bool = True) -> str:
    if not value and required:
        raise InvalidInput(f"{field} is empty; give a job id (from Compress or ListJobs)")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{field} is {len(value):,} characters; ids are at most "
                           f"{MAX_ID_CHARS}")
    return value


def _enum_name(enum: Any, field: str, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:  # a client built against a newer API, or a forged value
        raise InvalidInput(f"{field} {value} is not a value this server knows; use one of "
                           f"{', '.join(enum.keys())}") from None


def _state(value: int) -> Any:
    name = _enum_name(compress_pb2.JobState, "states", value)
    if name == "JOB_STATE_UNSPECIFIED":
        raise InvalidInput("states holds JOB_STATE_UNSPECIFIED; give job states like QUEUED or "
                           "RUNNING, or none for every state")
    return convert.state_from_proto(value)
