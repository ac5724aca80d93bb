"""One exception hierarchy for the library and the service, and the kinds of failure.

Every error raised on purpose carries its ``kind`` (an ``ErrorKind``). The kind is what a job
record stores, what a metric counts and what decides the exit code and the gRPC status code
(``service.errors.KINDS``, the one table), so no reader has to match an error's class name or
its text. The service's own errors (``service.errors``) are kinds of this same enumeration:
the library never imports the service, the service extends the library.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ErrorKind", "TpetError", "InvalidInput", "Cancelled", "StageFailed", "ParityFailed"]


class ErrorKind(str, Enum):
    """Why something did not succeed; the value is what job records and metrics show."""

    INVALID_INPUT = "invalid_input"  # the user's spec, data or checkpoint is wrong
    PERMISSION_DENIED = "permission_denied"  # an input outside what the server allows
    UNAUTHENTICATED = "unauthenticated"  # no credential, or one that is not valid
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"  # valid, but not in this job's state
    RESOURCE_EXHAUSTED = "resource_exhausted"  # a bounded queue or pool is full
    UNAVAILABLE = "unavailable"  # the server (or its store) cannot serve now
    STAGE_FAILED = "stage_failed"  # a stage could not complete (a diverged loss, an export)
    PARITY_FAILED = "parity_failed"  # an exported model does not reproduce the validated one
    WORKER_LOST = "worker_lost"  # the worker ended without reporting an outcome
    CANCELLED = "cancelled"
    INTERNAL = "internal"  # the service's own failure: a bug, a full disk

    def __str__(self) -> str:
        return self.value


class TpetError(Exception):
    """Base of every error the library raises on purpose."""

    kind: ErrorKind = ErrorKind.INTERNAL


class InvalidInput(TpetError):
    """The user's input (spec, data, checkpoint) is wrong; every problem is listed."""

    kind = ErrorKind.INVALID_INPUT

    def __init__(self, problems: list[str] | str, context: str = "invalid input"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.context = context
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{context}:\n{lines}")


class Cancelled(TpetError):
    """The caller asked to stop (``should_stop`` returned True)."""

    kind = ErrorKind.CANCELLED


class StageFailed(TpetError):
    """A stage could not complete for a reason other than bad input (e.g. a diverged loss)."""

    kind = ErrorKind.STAGE_FAILED

    def __init__(self, stage: str, reason: str):
        self.stage = stage
        self.reason = reason
        super().__init__(f"stage {stage!r} failed: {reason}")


class ParityFailed(StageFailed):
    """An exported model does not reproduce the model that was validated, so it cannot ship."""

    kind = ErrorKind.PARITY_FAILED
