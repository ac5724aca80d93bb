"""Job states and the one table of allowed transitions.

Every state change goes through ``check_transition`` (the store calls it inside the same
transaction that writes the new state), so no code path can move a job any other way.
"""

from __future__ import annotations

from enum import Enum

from service.errors import FailedPrecondition

__all__ = ["JobState", "TERMINAL", "TRANSITIONS", "IllegalTransition", "check_transition",
           "is_terminal"]


class JobState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    REJECTED = "REJECTED"  # finished; a subgroup is below its guardrail floor
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.REJECTED, JobState.FAILED,
                      JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    # RUNNING -> QUEUED: the worker was lost (retry policy, or a service restart).
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.REJECTED, JobState.FAILED,
                                 JobState.CANCELLED, JobState.QUEUED}),
    **{state: frozenset() for state in TERMINAL},
}


class IllegalTransition(FailedPrecondition):
    """A state change the table does not allow."""

    def __init__(self, job_id: str, old: JobState, new: JobState):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none (finished)"
        super().__init__(f"job {job_id} is {old.value}; it cannot become {new.value} "
                         f"(allowed from {old.value}: {allowed})")
        self.old, self.new = old, new


def check_transition(job_id: str, old: JobState | str, new: JobState | str) -> None:
    """Raise ``IllegalTransition`` unless ``old -> new`` is in the table."""
    old, new = JobState(old), JobState(new)
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(job_id, old, new)


def is_terminal(state: JobState | str) -> bool:
    return JobState(state) in TERMINAL
