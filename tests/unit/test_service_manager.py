"""The job manager's rules, driven one scheduling round at a time with a recording launcher.

(The integration tests run the same manager with real worker processes.)
"""

from dataclasses import dataclass, field

import pytest

from compression.errors import InvalidInput
from service.errors import (AlreadyExists, FailedPrecondition, NotFound, PermissionDenied,
                            QueueFull, Unauthenticated)
from service.launcher import ExitStatus
from service.manager import JobManager, ManagerConfig
from service.states import JobState
from service.store import JobStore

SPEC = {"name": "bars", "teacher": {"path": "t.pt2"}}


@dataclass
class Handle:
    name: str
    exit: ExitStatus | None = None
    kills: list = field(default_factory=list)


class RecordingLauncher:
    def __init__(self):
        self.started = []  # (request, env, handle)

    def start(self, job, env):
        handle = Handle(f"fake {len(self.started)}")
        self.started.append((job, dict(env), handle))
        return handle

    def poll(self, handle):
        return handle.exit

    def kill(self, handle, force=False):
        handle.kills.append(force)
        if force:
            handle.exit = ExitStatus(-9, "worker killed by signal SIGKILL")


class Metrics:
    def __init__(self):
        self.calls = []

    def job_submitted(self):
        self.calls.append("submitted")

    def job_transition(self, old, new):
        self.calls.append(f"{old.value}->{new.value}")


@pytest.fixture
def make(tmp_path):
    made = []

    def _make(store=None, **config):
        store = store or JobStore(tmp_path / "store.db")
        launcher = RecordingLauncher()
        manager = JobManager(store, launcher, ManagerConfig(state_dir=tmp_path, **config),
                             Metrics())
        manager.recover("127.0.0.1:1")
        made.append(store)
        return manager, launcher

    yield _make
    for store in made:
        store.close()


def token_of(launcher, i=-1):
    return launcher.started[i][1]["TPET_JOB_TOKEN"]


def test_submit_queues_with_forced_output_dir_and_is_idempotent(make, tmp_path):
    manager, _ = make()
    job = manager.submit({**SPEC, "output_dir": "/elsewhere"}, "req-1")
    assert job.state is JobState.QUEUED and job.name == "bars"
    assert job.output_dir == str((tmp_path / "artifacts" / job.id).resolve())
    assert job.spec["output_dir"] == job.output_dir
    assert manager.submit({**SPEC, "output_dir": "/other"}, "req-1").id == job.id
    with pytest.raises(AlreadyExists, match="request_id 'req-1' was used for job"):
        manager.submit({**SPEC, "name": "other"}, "req-1")
    assert manager.submit(SPEC, "").id != job.id
    assert manager.metrics.calls == ["submitted", "submitted"]


def test_invalid_spec_lists_every_problem_and_stores_nothing(make):
    manager, _ = make()
    with pytest.raises(InvalidInput) as err:
        manager.submit({"name": "bad name!", "training": {"epochs": 0}})
    assert len(err.value.problems) == 2
    assert manager.list() == ([], "")


def test_queue_bound(make):
    manager, _ = make(max_queued=2, slots=())
    manager.submit(SPEC, "a")
    manager.submit(SPEC, "b")
    with pytest.raises(QueueFull, match=r"the queue holds 2 jobs \(max_queued 2\)"):
        manager.submit(SPEC, "c")
    assert manager.submit(SPEC, "a").state is JobState.QUEUED  # a known request still answers


def test_one_job_per_slot_with_its_own_device_and_token(make):
    manager, launcher = make(slots=("0", "1"))
    ids = [manager.submit(SPEC).id for _ in range(3)]
    manager.tick()
    assert [r.job_id for r, _, _ in launcher.started] == ids[:2]
    envs = [env for _, env, _ in launcher.started]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert envs[0]["TPET_SERVER"] == "127.0.0.1:1" and envs[0]["TPET_JOB_ID"] == ids[0]
    assert envs[0]["TPET_JOB_TOKEN"] != envs[1]["TPET_JOB_TOKEN"]
    first = manager.get(ids[0])
    assert (first.state, first.attempts, first.worker) == (JobState.RUNNING, 1, "fake 0")
    assert manager.get(ids[2]).state is JobState.QUEUED


def test_cpu_slot_hides_gpus_and_no_slots_means_queue_only(make, tmp_path):
    manager, launcher = make(slots=())
    manager.submit(SPEC)
    manager.tick()
    assert launcher.started == []
    manager, launcher = make(store=manager.store, slots=("cpu0",))
    manager.tick()
    assert launcher.started[0][1]["CUDA_VISIBLE_DEVICES"] == ""


def test_worker_channel_needs_the_attempts_token(make):
    manager, launcher = make()
    job_id = manager.submit(SPEC).id
    manager.tick()
    token = token_of(launcher)
    spec, attempt = manager.worker_start(job_id, token)
    assert spec["teacher"] == {"path": "t.pt2"} and attempt == 1
    with pytest.raises(Unauthenticated):
        manager.worker_start(job_id, "")
    with pytest.raises(PermissionDenied, match=f"does not grant job {job_id}"):
        manager.worker_report(job_id, "guess", [])
    with pytest.raises(PermissionDenied, match="does not grant job nope"):  # no existence oracle
        manager.worker_start("nope", token)


def test_reported_events_update_the_stage_and_finish_sets_the_outcome(make):
    manager, launcher = make()
    job_id = manager.submit(SPEC).id
    manager.tick()
    token = token_of(launcher)
    stop = manager.worker_report(job_id, token, [
        ("stage_started", "load_data", {}), ("stage_finished", "load_data", {"seconds": 1}),
        ("stage_started", "distill", {}), ("progress", "distill", {"epoch": 1})])
    assert stop is False and manager.get(job_id).stage == "distill"
    job = manager.worker_finish(job_id, token, "SUCCEEDED", report_json='{"status": 1}')
    assert (job.state, job.report_json) == (JobState.SUCCEEDED, '{"status": 1}')
    with pytest.raises(PermissionDenied):  # the attempt is over: its token is dead
        manager.worker_report(job_id, token, [])
    events, done = manager.wait_events(job_id, 0, timeout=0)
    assert [e.kind for e in events] == ["state", "state", "stage_started", "stage_finished",
                                        "stage_started", "progress", "state"]
    assert done is False and manager.wait_events(job_id, events[-1].sequence, 0) == ([], True)
    assert manager.metrics.calls == ["submitted", "QUEUED->RUNNING", "RUNNING->SUCCEEDED"]


def test_cancel_queued_running_and_finished(make):
    manager, launcher = make(cancel_grace_s=0.0)
    running, queued = manager.submit(SPEC).id, manager.submit(SPEC).id
    manager.tick()
    assert manager.cancel(queued).state is JobState.CANCELLED
    job = manager.cancel(running)
    assert job.state is JobState.RUNNING and job.cancel_requested
    assert manager.worker_report(running, token_of(launcher), []) is True
    manager.tick()  # past the (zero) grace: killed, then reaped as CANCELLED
    manager.tick()
    handle = launcher.started[0][2]
    assert handle.kills == [True]
    job = manager.get(running)
    assert job.state is JobState.CANCELLED and "SIGKILL" in job.error
    with pytest.raises(FailedPrecondition, match="already finished"):
        manager.cancel(running)


def test_lost_worker_fails_with_the_reason(make):
    manager, launcher = make(max_attempts=1)
    job_id = manager.submit(SPEC).id
    manager.tick()
    launcher.started[0][2].exit = ExitStatus(-9, "worker killed by signal SIGKILL")
    manager.tick()
    job = manager.get(job_id)
    assert (job.state, job.error, job.error_kind) == (
        JobState.FAILED, "worker killed by signal SIGKILL", "worker_lost")


def test_lost_worker_is_retried_while_attempts_remain(make):
    manager, launcher = make(max_attempts=2)
    job_id = manager.submit(SPEC).id
    manager.tick()
    first_token = token_of(launcher)
    launcher.started[0][2].exit = ExitStatus(1, "worker exited with code 1")
    manager.tick()  # reaped and re-queued, then launched again in the same round
    job = manager.get(job_id)
    assert (job.state, job.attempts, len(launcher.started)) == (JobState.RUNNING, 2, 2)
    with pytest.raises(PermissionDenied):
        manager.worker_report(job_id, first_token, [])
    reasons = [e.payload.get("reason") for e in manager.store.events(job_id)]
    assert "worker exited with code 1; retrying (attempt 1 of 2)" in reasons
    launcher.started[1][2].exit = ExitStatus(1, "worker exited with code 1")
    manager.tick()
    assert manager.get(job_id).state is JobState.FAILED


def test_restart_requeues_running_jobs_and_cancels_those_being_cancelled(make):
    manager, launcher = make(slots=("cpu0", "cpu1"))
    resumed, cancelled = manager.submit(SPEC).id, manager.submit(SPEC).id
    manager.tick()
    manager.cancel(cancelled)
    # a new manager on the same store: the old workers are gone
    manager, launcher = make(store=manager.store, slots=())
    assert manager.get(resumed).state is JobState.QUEUED
    assert manager.get(resumed).attempts == 1
    assert manager.get(cancelled).state is JobState.CANCELLED
    manager, launcher = make(store=manager.store)
    manager.tick()
    assert manager.get(resumed).state is JobState.RUNNING and manager.get(resumed).attempts == 2


def test_list_pages_and_rejects_bad_arguments(make):
    manager, _ = make(slots=())
    ids = [manager.submit(SPEC).id for _ in range(5)]
    page, token = manager.list(page_size=2)
    assert [j.id for j in page] == ids[:2] and token
    page, token = manager.list(page_token=token, page_size=2)
    assert [j.id for j in page] == ids[2:4]
    page, token = manager.list(page_token=token, page_size=2)
    assert [j.id for j in page] == ids[4:] and token == ""
    with pytest.raises(InvalidInput, match="page_size is 5000"):
        manager.list(page_size=5000)
    with pytest.raises(InvalidInput, match="page_token 'abc'"):
        manager.list(page_token="abc")
