"""Every bad call is a clean error: malformed requests are INVALID_ARGUMENT naming the field,
huge values come back clipped, a wrong worker token learns nothing, checks that hang are
bounded, and a full disk is the service's failure."""

import errno
import threading
from pathlib import Path

import grpc
import pytest

from compression.errors import InvalidInput
from service._proto import compress_pb2, compress_pb2_grpc, worker_pb2, worker_pb2_grpc
from service.client import TpetClient
from service.config import ServerConfig
from service.errors import (MAX_DETAILS_BYTES, QueueFull, Unavailable, clip_details,
                            error_from_status, is_out_of_space, status_of)
from service.guards import BoundedCalls
from service.server import start_server
from service.worker import TOKEN_METADATA

SPEC = {"name": "q", "teacher": {"path": "t.pt2"}}


@pytest.fixture
def server(tmp_path):
    server = start_server(ServerConfig(port=0, state_dir=str(tmp_path), gpus=[],
                                       max_concurrent_jobs=0, rpc_threads=9, metrics_port=-1))
    yield server
    server.stop(grace_s=1)


@pytest.fixture
def stubs(server):
    with grpc.insecure_channel(server.address) as channel:
        yield (compress_pb2_grpc.CompressServiceStub(channel),
               worker_pb2_grpc.WorkerServiceStub(channel))


def refused(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_list_jobs_names_unknown_states_and_bad_page_tokens(stubs):
    compress, _ = stubs
    for request, named in (
            (compress_pb2.ListJobsRequest(states=[99]), "states 99"),
            (compress_pb2.ListJobsRequest(states=[0]), "JOB_STATE_UNSPECIFIED"),
            (compress_pb2.ListJobsRequest(page_token="abc"), "page_token 'abc'"),
            (compress_pb2.ListJobsRequest(page_token="\u00b2"), "page_token '\u00b2'"),
            (compress_pb2.ListJobsRequest(page_token="9" * 40), "page_token '999"),
            (compress_pb2.ListJobsRequest(page_size=-1), "page_size is -1")):
        code, details = refused(lambda: compress.ListJobs(request, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and named in details


def test_empty_and_huge_ids_are_invalid_arguments(stubs):
    compress, worker = stubs
    for job_id, named in (("", "job_id is empty"), ("j" * 100_000, "job_id is 100,000")):
        for call in (lambda: compress.GetJob(compress_pb2.GetJobRequest(job_id=job_id),
                                             timeout=5),
                     lambda: compress.CancelJob(compress_pb2.CancelJobRequest(job_id=job_id),
                                                timeout=5),
                     lambda: list(compress.WatchJob(
                         compress_pb2.WatchJobRequest(job_id=job_id), timeout=5))):
            code, details = refused(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and named in details
    request = compress_pb2.CompressRequest(request_id="r" * 1000)
    request.spec.name, request.spec.teacher.path = "q", "t.pt2"
    code, details = refused(lambda: compress.Compress(request, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "request_id is 1,000" in details
    code, details = refused(lambda: compress.Compress(compress_pb2.CompressRequest(), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec is empty" in details


def test_a_spec_over_max_spec_bytes_is_refused_before_anything_is_stored(server, stubs):
    compress, _ = stubs
    request = compress_pb2.CompressRequest()
    request.spec.name, request.spec.teacher.path = "q", "t" * (2 * 2**20)  # under 16 MiB
    code, details = refused(lambda: compress.Compress(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_spec_bytes" in details
    assert server.store.list() == []


def test_a_huge_value_echoed_in_an_error_comes_back_clipped(server):
    client = TpetClient(server.address, retries=0)
    with pytest.raises(InvalidInput) as err:  # not a transport error: the details fit
        client.compress({"name": "bad name " + "x" * 500_000, "teacher": {"path": "t.pt2"},
                         "training": {"epochs": 0}})
    text = str(err.value)
    assert "epochs is 0" in text and "characters)" in text and len(text) < MAX_DETAILS_BYTES


def test_clipping_keeps_the_problem_list_and_fits_the_budget():
    problems = [f"field{i} {'é' * 300!r} is wrong" for i in range(200)]
    code, details = status_of(InvalidInput(problems, "invalid job spec"))
    encoded = sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in details.encode())
    assert encoded <= MAX_DETAILS_BYTES
    back = error_from_status(code, details)
    assert back.context == "invalid job spec" and back.problems[0].startswith("field0 'éé")
    assert back.problems[-1].endswith("more line(s) left out")
    assert clip_details("short\n  - fine") == "short\n  - fine"


def test_a_wrong_worker_token_gets_one_answer_whatever_the_job(server, stubs):
    compress, worker = stubs
    client = TpetClient(server.address, retries=0)
    queued = client.compress(SPEC).id
    answers = set()
    for job_id in (queued, "jdoesnotexist", "j000000000000"):
        metadata = ((TOKEN_METADATA, "guess"),)
        for call in (lambda: worker.StartJob(worker_pb2.StartJobRequest(job_id=job_id),
                                             metadata=metadata, timeout=5),
                     lambda: worker.ReportEvents(worker_pb2.ReportEventsRequest(
                         job_id=job_id), metadata=metadata, timeout=5)):
            code, details = refused(call)
            answers.add((code, details.replace(job_id, "<id>")))
    assert answers == {(grpc.StatusCode.PERMISSION_DENIED,
                        "this token does not grant job <id> (a token is good for one attempt "
                        "of a running job)")}
    code, _ = refused(lambda: worker.StartJob(worker_pb2.StartJobRequest(job_id=queued),
                                              timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED  # no token at all


def test_an_unknown_outcome_is_invalid_not_internal(stubs):
    _, worker = stubs
    request = worker_pb2.FinishJobRequest(job_id="j1", outcome=42)
    code, details = refused(lambda: worker.FinishJob(
        request, metadata=((TOKEN_METADATA, "guess"),), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outcome 42" in details


def test_bounded_calls_time_out_refuse_when_full_and_give_up_when_stopping():
    release, stopping = threading.Event(), threading.Event()
    calls = BoundedCalls("input checks", 1, 0.3, stopping.is_set)
    try:
        with pytest.raises(InvalidInput, match="could not check data.path 'f' within 0.3 s"):
            calls.run(release.wait, "data.path 'f'")  # still running: it holds the slot
        with pytest.raises(QueueFull, match="1 input checks are running"):
            calls.run(lambda: 1, "x")
    finally:
        release.set()
    wait = threading.Event()
    assert BoundedCalls("c", 1, 5).run(lambda: 7, "x") == 7
    with pytest.raises(ValueError, match="raised inside"):
        BoundedCalls("c", 1, 5).run(lambda: int("raised inside"), "x")
    stopping.set()
    with pytest.raises(Unavailable, match="stopping"):
        BoundedCalls("c", 1, 5, stopping.is_set).run(wait.wait, "x")
    wait.set()


def dev_full_error() -> OSError:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is not available")
    try:
        with open("/dev/full", "w") as f:
            f.write("x")
    except OSError as exc:
        return exc
    raise AssertionError("writing /dev/full did not fail")


def test_a_full_disk_is_never_the_users_fault():
    exc = dev_full_error()
    assert exc.errno == errno.ENOSPC
    try:
        raise InvalidInput(f"cannot write checkpoint: {exc.strerror}") from exc
    except InvalidInput as wrapped:
        assert is_out_of_space(wrapped)
    assert is_out_of_space(InvalidInput(f"cannot write x: {exc.strerror}"))  # chain dropped
    assert not is_out_of_space(InvalidInput("epochs is 0"))


def test_the_worker_reports_a_full_disk_as_an_internal_failure(monkeypatch):
    import compression.pipeline
    from service.convert import dict_to_proto
    from service.worker import run_job

    exc = dev_full_error()

    def run(spec, on_event, should_stop):  # the real failure needs a full file system
        raise InvalidInput(f"cannot write checkpoint out/ckpt.pt: {exc.strerror}") from exc

    class Reporter:
        def __call__(self, event):
            pass

        def should_stop(self):
            return False

    monkeypatch.setattr(compression.pipeline, "run", run)
    outcome, error, kind, _ = run_job(dict_to_proto(SPEC), Reporter())
    assert (outcome, kind) == ("FAILED", "internal") and "No space left" in error
