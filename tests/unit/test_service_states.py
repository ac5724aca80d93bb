"""The one transition table: exactly these seven moves are allowed."""

import itertools

import pytest

from service.errors import FailedPrecondition
from service.states import (TERMINAL, IllegalTransition, JobState, check_transition,
                            is_terminal)

Q, R, S, REJ, F, C = (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.REJECTED,
                      JobState.FAILED, JobState.CANCELLED)
ALLOWED = {(Q, R), (Q, C), (R, S), (R, REJ), (R, F), (R, C), (R, Q)}


@pytest.mark.parametrize("old,new", list(itertools.product(JobState, JobState)))
def test_every_pair_is_allowed_exactly_when_listed(old, new):
    if (old, new) in ALLOWED:
        check_transition("j1", old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition("j1", old, new)


def test_illegal_transition_names_the_job_and_what_is_allowed():
    with pytest.raises(FailedPrecondition) as err:
        check_transition("j42", "QUEUED", "SUCCEEDED")
    assert str(err.value) == ("job j42 is QUEUED; it cannot become SUCCEEDED "
                              "(allowed from QUEUED: CANCELLED, RUNNING)")
    with pytest.raises(IllegalTransition, match=r"allowed from FAILED: none \(finished\)"):
        check_transition("j42", F, Q)


def test_terminal_states():
    assert TERMINAL == {S, REJ, F, C}
    assert [is_terminal(s) for s in JobState] == [False, False, True, True, True, True]
    with pytest.raises(ValueError):
        check_transition("j1", "QUEUED", "DONE")
