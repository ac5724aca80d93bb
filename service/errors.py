"""The service's exceptions and the ONE table mapping every error to a gRPC status code.

Library errors (``compression.errors``) and service errors share one hierarchy rooted at
``TpetError``. The server's ``ErrorInterceptor`` turns them into status codes with the error's
own message; anything else is a bug: logged with its traceback, answered INTERNAL without one.
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
from typing import Any, Callable, Iterator

import grpc

from compression.errors import Cancelled, InvalidInput, StageFailed, TpetError

__all__ = [
    "ServiceError", "NotFound", "FailedPrecondition", "AlreadyExists", "QueueFull",
    "Unauthenticated", "PermissionDenied", "Unavailable", "StoreUnavailable", "STATUS_CODES",
    "status_of", "error_from_status", "ErrorInterceptor", "clip_details", "is_out_of_space",
    "ERROR_METADATA", "from_server",
]

log = logging.getLogger("tpet.server")


class ServiceError(TpetError):
    """Base of the errors the service raises on purpose."""


class NotFound(ServiceError):
    """No such job (or other named thing)."""


class FailedPrecondition(ServiceError):
    """The request is valid but the job is not in a state that allows it."""


class AlreadyExists(ServiceError):
    """A request_id was reused for a different spec."""


class QueueFull(ServiceError):
    """The job queue is at its bound; retry later."""


class Unauthenticated(ServiceError):
    """No (or an unreadable) credential."""


class PermissionDenied(ServiceError):
    """A credential that does not grant this call."""


class Unavailable(ServiceError):
    """The server cannot serve the call now: unreachable, stopping, or its store is failing."""


class StoreUnavailable(Unavailable):
    """The job store cannot write (a full disk, a read-only or broken database file)."""


# Most specific first: the first matching class decides the code.
STATUS_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),  # StoreUnavailable too
    (Cancelled, grpc.StatusCode.CANCELLED),
    (StageFailed, grpc.StatusCode.ABORTED),
    (TpetError, grpc.StatusCode.INTERNAL),
)


# The trailing metadata key naming the error class the server raised: a client tells the
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


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for ``exc`` (clipped to fit a status);
    unknown errors are logged."""
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code, clip_details(str(exc))
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


def error_from_status(code: grpc.StatusCode, details: str) -> TpetError:
    """The exception a client raises for a failed call (the inverse of ``status_of``)."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _invalid_input(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(details)
    for cls, known in STATUS_CODES:
        if known == code and issubclass(cls, ServiceError):
            return cls(details)
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(details)
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
    kind = type(exc).__name__ if isinstance(exc, TpetError) else "internal"
    context.set_trailing_metadata(((ERROR_METADATA, kind),))
    context.abort(code, details)
