"""One table maps every error to a status code; clients get the same exceptions back."""

import errno

import grpc
import pytest

from compression.access import AccessDenied
from compression.errors import Cancelled, InvalidInput, ParityFailed, StageFailed, TpetError
from service.errors import (AlreadyExists, FailedPrecondition, NotFound, PermissionDenied,
                            QueueFull, Unauthenticated, Unavailable, error_from_status,
                            status_of)

CASES = [
    (InvalidInput(["a is 1", "b is 2"], "invalid job spec"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound("no job"), grpc.StatusCode.NOT_FOUND),
    (AlreadyExists("used"), grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition("finished"), grpc.StatusCode.FAILED_PRECONDITION),
    (QueueFull("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated("token"), grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied("bad"), grpc.StatusCode.PERMISSION_DENIED),
    (Cancelled("stop"), grpc.StatusCode.CANCELLED),
    (StageFailed("export", "parity"), grpc.StatusCode.ABORTED),
    (TpetError("other"), grpc.StatusCode.INTERNAL),
    (ParityFailed("export_onnx", "differs"), grpc.StatusCode.ABORTED),
    (AccessDenied("data.path '/etc' is outside the roots"), grpc.StatusCode.PERMISSION_DENIED),
]


@pytest.mark.parametrize("exc,code", CASES)
def test_each_error_has_its_code_and_keeps_its_message(exc, code):
    assert status_of(exc) == (code, str(exc))


@pytest.mark.parametrize("exc,code", CASES[1:8])
def test_clients_get_the_same_error_class_back(exc, code):
    back = error_from_status(code, str(exc))
    assert type(back) is type(exc) and str(back) == str(exc)


def test_invalid_argument_comes_back_with_its_problem_list():
    code, message = status_of(InvalidInput(["epochs is 0", "lr is -1"], "invalid job spec"))
    back = error_from_status(code, message)
    assert isinstance(back, InvalidInput)
    assert (back.context, back.problems) == ("invalid job spec", ["epochs is 0", "lr is -1"])
    assert error_from_status(code, "plain words").problems == ["plain words"]


def test_unknown_errors_are_internal_without_details(caplog):
    code, message = status_of(KeyError("secret path /etc/x"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in message and message.startswith("internal error (ref ")
    assert "secret path" in caplog.text  # the server log keeps the traceback


def test_unreachable_server_is_unavailable():
    assert isinstance(error_from_status(grpc.StatusCode.UNAVAILABLE, "down"), Unavailable)
    assert isinstance(error_from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"), Unavailable)


def test_a_full_disk_is_internal_even_as_invalid_input():
    try:
        raise InvalidInput("cannot write report.json") from OSError(errno.ENOSPC, "disk full")
    except InvalidInput as exc:
        assert status_of(exc) == (grpc.StatusCode.INTERNAL, str(exc))  # the message is kept
