"""The service's exceptions and the ONE table mapping every kind of failure to what it means
outside: an exit code for the CLI, a gRPC status code, and a metric label.

Library errors (``compression.errors``) and service errors share one hierarchy rooted at
``TpetError``; each carries its ``ErrorKind``. ``kind_of`` says the kind of any exception (a
full disk is the service's failure whatever wrapped it; anything unexpected is internal) and
``KINDS`` maps the kind: the worker records it on the job, the CLI exits by it, the server's
``ErrorInterceptor`` answers its status code with the error's own message (anything else is a
bug: logged with its traceback, answered INTERNAL without one) and metrics count its label.
The client maps codes back (``error_from_status``) so the CLI sees the same exceptions.

Every message sent as status details goes through ``clip_details`` first: a request can echo
a megabyte-long value into an error, and gRPC refuses status details larger than its metadata
limit (the client would see a transport error instead of the message).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import uuid
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import grpc

from compression.errors import Cancelled, ErrorKind, InvalidInput, TpetError

__all__ = [
    "ServiceError", "NotFound", "FailedPrecondition", "AlreadyExists", "QueueFull",
    "Unauthenticated", "PermissionDenied", "Unavailable", "StoreUnavailable", "KindInfo",
    "KINDS", "kind_of", "kind_named", "info_of", "status_of", "error_from_status",
    "ErrorInterceptor", "clip_details", "is_out_of_space", "ERROR_METADATA", "from_server",
    "EXIT_OK", "EXIT_INVALID", "EXIT_REJECTED", "EXIT_FAILED", "EXIT_CANCELLED",
]

log = logging.getLogger("tpet.server")


class ServiceError(TpetError):
    """Base of the errors the service raises on purpose."""


class NotFound(ServiceError):
    """No such job (or other named thing)."""

    kind = ErrorKind.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The request is valid but the job is not in a state that allows it."""

    kind = ErrorKind.FAILED_PRECONDITION


class AlreadyExists(ServiceError):
    """A request_id was reused for a different spec."""

    kind = ErrorKind.ALREADY_EXISTS


class QueueFull(ServiceError):
    """The job queue is at its bound; retry later."""

    kind = ErrorKind.RESOURCE_EXHAUSTED


class Unauthenticated(ServiceError):
    """No (or an unreadable) credential."""

    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """A credential that does not grant this call, or an input outside the data roots."""

    kind = ErrorKind.PERMISSION_DENIED


class Unavailable(ServiceError):
    """The server cannot serve the call now: unreachable, stopping, or its store is failing."""

    kind = ErrorKind.UNAVAILABLE


class StoreUnavailable(Unavailable):
    """The job store cannot write (a full disk, a read-only or broken database file)."""


# Exit codes, for pipelines. REJECTED is a result (the guardrails said no), not an error.
EXIT_OK, EXIT_INVALID, EXIT_REJECTED, EXIT_FAILED, EXIT_CANCELLED = 0, 2, 3, 4, 5


@dataclass(frozen=True)
class KindInfo:
    exit_code: int  # how `tpet` ends
    status: grpc.StatusCode  # how an RPC ends
    label: str  # the value of a metric's `kind` label (bounded: one per kind)


_C = grpc.StatusCode
# Exit 2 is "change what you asked for" (the input, or what it points at); what the caller
# cannot fix by editing the job exits 4.
_ROWS = (
    (ErrorKind.INVALID_INPUT, EXIT_INVALID, _C.INVALID_ARGUMENT),
    (ErrorKind.PERMISSION_DENIED, EXIT_INVALID, _C.PERMISSION_DENIED),
    (ErrorKind.UNAUTHENTICATED, EXIT_FAILED, _C.UNAUTHENTICATED),
    (ErrorKind.NOT_FOUND, EXIT_FAILED, _C.NOT_FOUND),
    (ErrorKind.ALREADY_EXISTS, EXIT_FAILED, _C.ALREADY_EXISTS),
    (ErrorKind.FAILED_PRECONDITION, EXIT_FAILED, _C.FAILED_PRECONDITION),
    (ErrorKind.RESOURCE_EXHAUSTED, EXIT_FAILED, _C.RESOURCE_EXHAUSTED),
    (ErrorKind.UNAVAILABLE, EXIT_FAILED, _C.UNAVAILABLE),
    (ErrorKind.STAGE_FAILED, EXIT_FAILED, _C.ABORTED),
    (ErrorKind.PARITY_FAILED, EXIT_FAILED, _C.ABORTED),
    (ErrorKind.WORKER_LOST, EXIT_FAILED, _C.ABORTED),
    (ErrorKind.CANCELLED, EXIT_CANCELLED, _C.CANCELLED),
    (ErrorKind.INTERNAL, EXIT_FAILED, _C.INTERNAL),
)
# The one table: every reader of a failure's kind (worker, CLI, interceptor, metrics) uses it.
KINDS: Mapping[ErrorKind, KindInfo] = MappingProxyType(
    {kind: KindInfo(exit_code, status, kind.value) for kind, exit_code, status in _ROWS})


# The trailing metadata key naming the kind of the error the server raised: a client tells the
# server's own UNAVAILABLE ("the store cannot write") from a transport failure by it.
ERROR_METADATA = "tpet-error"
MAX_VALUE_CHARS = 200  # a run of non-blank characters (a path, a name) longer than this is cut
MAX_LINE_CHARS = 600
MAX_DETAILS_BYTES = 4096  # as sent: gRPC percent-encodes every byte outside printable ASCII
_LONG_VALUE = re.compile(r"\S{%d,}" % (MAX_VALUE_CHARS + 1))
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def clip_details(message: str) -> str:
    """``message`` cut to fit in a status: long values and lines shortened (saying how long
    they were), lines past the budget left out (saying how many); the line structure (the
    client rebuilds an ``InvalidInput``'s problem list from it) is kept."""
    lines = message.splitlines() or [""]
    out: list[str] = []
    budget = MAX_DETAILS_BYTES - 60  # room for the "left out" line
    for i, line in enumerate(lines):
        line = _LONG_VALUE.sub(lambda m: f"{m.group()[:MAX_VALUE_CHARS - 40]}..."
                               f"({len(m.group()):,} characters)", line)
        if len(line) > MAX_LINE_CHARS:
            line = f"{line[:MAX_LINE_CHARS - 40]}...({len(line):,} characters)"
        cost = _encoded_size(line) + 1
        if cost > budget:
            out.append(f"  - ... {len(lines) - i} more line(s) left out")
            break
        out.append(line)
        budget -= cost
    return "\n".join(out)


def _encoded_size(text: str) -> int:
    data = text.encode("utf-8", "replace")
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in data)


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or an exceeded quota: the
    service's failure, never the user's input, even when a library wrapped it as one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _OUT_OF_SPACE:
            return True
        current = current.__cause__ or current.__context__
    text = str(exc)  # a wrapper raised "from None" keeps only the system's words
    return any(os.strerror(code) in text for code in _OUT_OF_SPACE)


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of any exception: its own, except that a full disk is always the service's
    failure (a library may have reported it as a file it could not write), and an error not
    raised on purpose is a bug: INTERNAL."""
    if not isinstance(exc, TpetError) or is_out_of_space(exc):
        return ErrorKind.INTERNAL
    return ErrorKind(exc.kind)


def kind_named(name: str) -> ErrorKind:
    """The kind a job record names; one it does not name (empty, or from a newer server) is
    INTERNAL: a failure nobody classified is the service's to explain."""
    try:
        return ErrorKind(name)
    except ValueError:
        return ErrorKind.INTERNAL


def info_of(exc: BaseException) -> KindInfo:
    """Exit code, status code and metric label for ``exc`` (through ``kind_of``)."""
    return KINDS[kind_of(exc)]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for ``exc`` (clipped to fit a status);
    errors not raised on purpose are logged and answered without their details."""
    if isinstance(exc, TpetError):
        return info_of(exc).status, clip_details(str(exc))
    ref = uuid.uuid4().hex[:8]
    log.error("internal error %s", ref, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); see the server log"


def from_server(error: grpc.RpcError) -> bool:
    """Whether a failed call's status came from this service's error mapping (not from the
    transport: a refused connection, a deadline)."""
    trailing = getattr(error, "trailing_metadata", None)
    try:
        return any(key == ERROR_METADATA for key, _ in (trailing() if trailing else None) or ())
    except Exception:  # a call that never reached a server has no metadata to give
        return False


# What a client raises for a status code, by the code each one's kind has in ``KINDS``.
_CLIENT_ERRORS: tuple[type[TpetError], ...] = (
    NotFound, AlreadyExists, FailedPrecondition, QueueFull, Unauthenticated, PermissionDenied,
    Cancelled)


def error_from_status(code: grpc.StatusCode, details: str) -> TpetError:
    """The exception a client raises for a failed call (the inverse of ``status_of``)."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _invalid_input(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(details)
    for cls in _CLIENT_ERRORS:
        if KINDS[cls.kind].status == code:
            return cls(details)
    return TpetError(f"{code.name}: {details}")


def _invalid_input(details: str) -> InvalidInput:
    # The server's message is "context:\n  - problem\n  - problem"; rebuild the list.
    head, _, rest = details.partition(":\n")
    problems = [line.strip()[2:] for line in rest.splitlines() if line.strip().startswith("- ")]
    return InvalidInput(problems, head) if problems else InvalidInput(details)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so a raised error becomes its status code; never a traceback."""

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream))
        return handler  # no client-streaming methods in this API


def _wrap_unary(behavior: Callable) -> Callable:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:  # the one place errors become status codes
            _abort(context, exc)
    return wrapped


def _wrap_stream(behavior: Callable) -> Callable:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            _abort(context, exc)
    return wrapped


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code, details = status_of(exc)
    context.set_trailing_metadata(((ERROR_METADATA, info_of(exc).label),))
    context.abort(code, details)
