"""The service's exceptions and the ONE table mapping every error to a gRPC status code.

Library errors (``compression.errors``) and service errors share one hierarchy rooted at
``TpetError``. The server's ``ErrorInterceptor`` turns them into status codes with the error's
own message; anything else is a bug: logged with its traceback, answered INTERNAL without one.
The client maps codes back (``error_from_status``) so the CLI sees the same exceptions.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable, Iterator

import grpc

from compression.errors import Cancelled, InvalidInput, StageFailed, TpetError

__all__ = [
    "ServiceError", "NotFound", "FailedPrecondition", "AlreadyExists", "QueueFull",
    "Unauthenticated", "PermissionDenied", "Unavailable", "STATUS_CODES", "status_of",
    "error_from_status", "ErrorInterceptor",
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
    """The server cannot be reached (client side)."""


# Most specific first: the first matching class decides the code.
STATUS_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (StageFailed, grpc.StatusCode.ABORTED),
    (TpetError, grpc.StatusCode.INTERNAL),
)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for ``exc``; unknown errors are logged."""
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code, str(exc)
    ref = uuid.uuid4().hex[:8]
    log.error("internal error %s", ref, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); see the server log"


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
            context.abort(*status_of(exc))
    return wrapped


def _wrap_stream(behavior: Callable) -> Callable:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            context.abort(*status_of(exc))
    return wrapped
