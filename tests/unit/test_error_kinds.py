"""One table of failure kinds: total, and the one every path (worker, CLI, RPC, metrics) uses."""

import errno
import re
from concurrent import futures

import grpc
import numpy as np
import pytest

from compression import access
from compression.access import AccessDenied, InputAccess
from compression.errors import (Cancelled, ErrorKind, InvalidInput, ParityFailed, StageFailed,
                                TpetError)
from compression.export import Parity, check_parity
from compression.spec import ExportSpec
from service import cli
from service._proto import compress_pb2
from service.commands import exit_code_of_job
from service.convert import dict_to_proto
from service.errors import (ERROR_METADATA, KINDS, AlreadyExists, ErrorInterceptor,
                            FailedPrecondition, NotFound, PermissionDenied, QueueFull,
                            StoreUnavailable, Unauthenticated, Unavailable, error_from_status,
                            kind_named, kind_of)
from service.worker import run_job

ONE_OF_EACH = [
    InvalidInput("bad"), AccessDenied("outside"), Cancelled("stop"), StageFailed("s", "why"),
    ParityFailed("export_onnx", "differs"), TpetError("other"), NotFound("no job"),
    AlreadyExists("used"), FailedPrecondition("finished"), QueueFull("full"),
    Unauthenticated("token"), PermissionDenied("roots"), Unavailable("down"),
    StoreUnavailable("disk"),
]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_the_table_is_total_and_its_labels_are_bounded_and_distinct():
    assert set(KINDS) == set(ErrorKind)
    for kind, info in KINDS.items():
        assert info.exit_code in (cli.EXIT_INVALID, cli.EXIT_FAILED, cli.EXIT_CANCELLED), kind
        assert isinstance(info.status, grpc.StatusCode) and info.status != grpc.StatusCode.OK
        assert re.fullmatch(r"[a-z_]+", info.label), kind
    assert len({info.label for info in KINDS.values()}) == len(KINDS)


def test_every_error_class_carries_a_kind_of_the_table():
    classes = {TpetError, *_subclasses(TpetError)}
    assert {type(e) for e in ONE_OF_EACH} <= classes
    for cls in classes:
        assert isinstance(cls.kind, ErrorKind) and cls.kind in KINDS, cls


@pytest.mark.parametrize("exc,kind", [
    (AccessDenied("x"), ErrorKind.PERMISSION_DENIED),  # an InvalidInput, but refused, not wrong
    (ParityFailed("export_onnx", "x"), ErrorKind.PARITY_FAILED),  # a StageFailed of its own
    (StageFailed("distill", "loss became nan"), ErrorKind.STAGE_FAILED),
    (KeyError("a bug"), ErrorKind.INTERNAL),
])
def test_kind_of_an_exception(exc, kind):
    assert kind_of(exc) is kind


def test_a_full_disk_is_internal_whatever_wrapped_it():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise InvalidInput("cannot write out/report.json") from cause
    except InvalidInput as exc:
        assert kind_of(exc) is ErrorKind.INTERNAL
    # the cause dropped ("from None"): the system's words are what is left
    assert kind_of(AccessDenied("x: [Errno 28] No space left on device")) is ErrorKind.INTERNAL


def test_check_parity_raises_a_parity_failure_that_is_still_a_stage_failure():
    with pytest.raises(ParityFailed) as err:
        check_parity(Parity(n=10, max_abs_diff=0.5, top1_agreement=1.0), ExportSpec())
    assert isinstance(err.value, StageFailed) and kind_of(err.value) is ErrorKind.PARITY_FAILED


def test_recorded_kinds_are_read_back_and_unknown_ones_are_internal():
    for kind in ErrorKind:
        assert kind_named(kind.value) is kind
    assert kind_named("") is ErrorKind.INTERNAL and kind_named("gremlins") is ErrorKind.INTERNAL


# -- the worker's outcome ------------------------------------------------------------------

class _Sink(list):
    """The reporter's two calls: events are kept, ``stop`` answers should_stop."""

    def __init__(self, stop=False):
        super().__init__()
        self.stop = stop

    def __call__(self, event):
        self.append(event)

    def should_stop(self):
        return self.stop


def _job(tmp_path, data_dir, **training):
    x = np.zeros((40, 8, 8), np.uint8)
    for split in ("train", "test"):
        np.savez(data_dir / f"{split}.npz", x=x, y=np.arange(40) % 4)
    return dict_to_proto({
        "name": "kinds", "output_dir": str(tmp_path / "out"), "mitigation": {"name": "one_hot"},
        "data": {"source": "npz", "path": str(data_dir / "train.npz"),
                 "test_path": str(data_dir / "test.npz")},
        "student": {"arch": "tiny_cnn"}, "training": {"epochs": 1, **training}})


def test_worker_outcomes_carry_the_kind(tmp_path):
    (tmp_path / "allowed").mkdir(), (tmp_path / "elsewhere").mkdir()
    outside = _job(tmp_path, tmp_path / "elsewhere")
    with access.granted(InputAccess.of([str(tmp_path / "allowed")])):
        outcome, error, kind, report = run_job(outside, _Sink())
    assert (outcome, kind, report) == ("FAILED", "permission_denied", "")
    assert "outside the allowed data roots" in error
    outcome, error, kind, _ = run_job(_job(tmp_path, tmp_path, epochs=0), _Sink())
    assert (outcome, kind) == ("FAILED", "invalid_input") and "epochs is 0" in error
    outcome, error, kind, _ = run_job(_job(tmp_path, tmp_path), _Sink(stop=True))
    assert (outcome, kind) == ("CANCELLED", "cancelled") and "cancelled" in error


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_a_finished_job_exits_by_its_kind(kind):
    job = compress_pb2.Job(id="j1", state=compress_pb2.JobState.Value("FAILED"),
                           error_kind=kind.value)
    assert exit_code_of_job(job) == KINDS[kind].exit_code


def test_a_job_refused_by_the_roots_exits_2_like_invalid_input():
    job = compress_pb2.Job(id="j1", state=compress_pb2.JobState.Value("FAILED"),
                           error_kind="permission_denied")
    assert exit_code_of_job(job) == cli.EXIT_INVALID == KINDS[ErrorKind.INVALID_INPUT].exit_code


# -- the CLI's exit code -------------------------------------------------------------------

@pytest.mark.parametrize("exc", ONE_OF_EACH, ids=lambda e: type(e).__name__)
def test_the_cli_exits_by_the_kind(exc, capsys):
    def command():
        raise exc

    assert cli._exit_code_of(command) == KINDS[exc.kind].exit_code
    assert str(exc) in capsys.readouterr().err


def test_the_cli_exits_4_with_a_traceback_for_a_bug(capsys):
    assert cli._exit_code_of(lambda: {}["missing"]) == KINDS[ErrorKind.INTERNAL].exit_code
    assert "Traceback" in capsys.readouterr().err


# -- the RPC status ------------------------------------------------------------------------

@pytest.fixture
def raising_server():
    """A real server on loopback with the service's interceptor; method /t.T/Raise raises
    the exception whose index in ONE_OF_EACH it is sent (as text)."""
    def behave(request, context):
        raise ONE_OF_EACH[int(request.decode())]

    handler = grpc.method_handlers_generic_handler(
        "t.T", {"Raise": grpc.unary_unary_rpc_method_handler(behave)})
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel.unary_unary("/t.T/Raise")
    server.stop(None)


def test_rpc_status_and_trailing_kind_come_from_the_table(raising_server):
    for i, exc in enumerate(ONE_OF_EACH):
        with pytest.raises(grpc.RpcError) as err:
            raising_server(str(i).encode(), timeout=10)
        info = KINDS[exc.kind]
        assert err.value.code() == info.status, exc
        assert dict(err.value.trailing_metadata())[ERROR_METADATA] == info.label
        back = error_from_status(err.value.code(), err.value.details())
        assert KINDS[back.kind].exit_code == info.exit_code, exc  # the client exits alike
