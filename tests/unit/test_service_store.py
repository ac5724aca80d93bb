"""The SQLite job store: idempotent creation, WAL, per-job event sequences, transitions."""

import sqlite3
import threading

import pytest

from service.errors import NotFound
from service.states import IllegalTransition, JobState
from service.store import STATE_EVENT, JobStore


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "state" / "store.db")
    yield s
    s.close()


def make(store, job_id, request_id=None, now=1.0):
    return store.create(job_id, request_id, "n", {"name": "n"}, f"/out/{job_id}", now)


def test_wal_mode_and_files(store, tmp_path):
    assert store.journal_mode() == "wal"
    make(store, "j1")
    assert (tmp_path / "state" / "store.db-wal").exists()


def test_same_request_id_returns_the_first_job(store):
    job, created = make(store, "j1", "req-1")
    again, created_again = make(store, "j2", "req-1", now=5.0)
    assert created and not created_again
    assert again.id == "j1" and again.created == 1.0
    assert [j.id for j in store.list()] == ["j1"]
    assert store.find_request("req-1").id == "j1" and store.find_request("nope") is None


def test_request_ids_are_optional_and_many_jobs_may_have_none(store):
    make(store, "j1")
    make(store, "j2")
    assert [(j.id, j.request_id) for j in store.list()] == [("j1", None), ("j2", None)]


def test_new_job_is_queued_with_one_state_event(store):
    job, _ = make(store, "j1")
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.last_sequence == 1
    [event] = store.events("j1")
    assert (event.sequence, event.kind, event.payload) == (1, STATE_EVENT, {"state": "QUEUED"})


def test_event_sequences_count_per_job(store):
    make(store, "a")
    make(store, "b")
    assert store.append_events("a", [("log", "s", {"i": 1}), ("log", "s", {"i": 2})], 2.0) == 3
    assert store.append_events("b", [("progress", "distill", {"step": 1})], 2.0) == 2
    assert store.append_events("a", [("log", "s", {"i": 3})], 3.0) == 4
    assert [e.sequence for e in store.events("a")] == [1, 2, 3, 4]
    assert [e.payload.get("i") for e in store.events("a", after=2)] == [2, 3]
    assert [e.sequence for e in store.events("a", after=1, limit=2)] == [2, 3]
    assert [e.sequence for e in store.events("b")] == [1, 2]


def test_transition_sets_fields_and_records_the_change(store):
    make(store, "j1")
    job = store.transition("j1", JobState.RUNNING, 7.0, {"attempt": 1}, attempts=1,
                           worker="pid 9")
    assert (job.state, job.attempts, job.worker, job.updated) == (JobState.RUNNING, 1, "pid 9", 7.0)
    last = store.events("j1")[-1]
    assert last.payload == {"state": "RUNNING", "previous": "QUEUED", "attempt": 1}


def test_illegal_transition_changes_nothing(store):
    make(store, "j1")
    with pytest.raises(IllegalTransition):
        store.transition("j1", JobState.SUCCEEDED, 2.0, error="x")
    job = store.get("j1")
    assert job.state is JobState.QUEUED and job.error == "" and job.last_sequence == 1
    assert len(store.events("j1")) == 1


def test_update_cannot_change_state_and_unknown_job_is_not_found(store):
    make(store, "j1")
    with pytest.raises(ValueError, match="state"):
        store.update("j1", 2.0, state="RUNNING")
    assert store.update("j1", 2.0, stage="distill", cancel_requested=True).cancel_requested
    with pytest.raises(NotFound, match="no job 'zz'"):
        store.get("zz")
    with pytest.raises(NotFound):
        store.update("zz", 1.0, stage="x")


def test_list_filters_by_state_and_pages_in_submission_order(store):
    for i in range(5):
        make(store, f"j{i}")
    store.transition("j1", JobState.CANCELLED, 2.0)
    store.transition("j3", JobState.RUNNING, 2.0)
    assert [j.id for j in store.list([JobState.QUEUED])] == ["j0", "j2", "j4"]
    first = store.list(limit=2)
    assert [j.id for j in first] == ["j0", "j1"]
    assert [j.id for j in store.list(after_seq=first[-1].seq, limit=2)] == ["j2", "j3"]
    assert store.count(JobState.QUEUED) == 3 and store.count(JobState.RUNNING) == 1


def test_everything_survives_reopening(tmp_path):
    path = tmp_path / "store.db"
    store = JobStore(path)
    make(store, "j1", "r1")
    store.transition("j1", JobState.RUNNING, 2.0, attempts=1)
    store.close()
    reopened = JobStore(path)
    job = reopened.get("j1")
    assert (job.state, job.attempts, job.request_id, job.spec) == (
        JobState.RUNNING, 1, "r1", {"name": "n"})
    assert reopened.append_events("j1", [("log", "", {})], 3.0) == 3
    reopened.close()
    # the file is a plain SQLite database other tools can read
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM events").fetchone() == (3,)


def test_concurrent_appends_keep_sequences_contiguous(store):
    make(store, "j1")

    def append():
        for _ in range(25):
            store.append_events("j1", [("log", "", {}), ("log", "", {})], 1.0)

    threads = [threading.Thread(target=append) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.sequence for e in store.events("j1", limit=10_000)] == list(range(1, 202))
