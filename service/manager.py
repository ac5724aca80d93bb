"""The job manager: the only writer of job state and the only owner of the metrics.

RPC threads call in to submit, read, cancel and watch jobs and, over the worker channel, to
report a worker's events and outcome; each such call is a short store transaction. One
scheduler thread launches queued jobs onto free slots (one job per GPU, or per CPU slot),
reaps workers that ended, retries lost ones when the policy allows, and kills a cancelled
worker that outlives its grace period. At start, jobs left RUNNING by a previous server are
re-queued: they resume from their last epoch checkpoint, since their output folder is the same.

Nothing a user names may hold a thread for long: input checks run through ``BoundedCalls``
(bounded in number and time). The scheduler survives any error in a round: a failing store
(full disk) is probed by a real write, with backoff, until it writes again; meanwhile new jobs
stay queued, Compress answers UNAVAILABLE and the health listeners hear NOT_SERVING.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from compression.errors import ErrorKind, InvalidInput
from compression.spec import parse_spec
from service.errors import (AlreadyExists, FailedPrecondition, NotFound, PermissionDenied,
                            QueueFull, StoreUnavailable, Unauthenticated)
from service.guards import InputChecks, RateLimitedLog, StoreHealth
from service.launcher import ExitStatus, LaunchRequest, Launcher
from service.metrics import Metrics, NoMetrics, QueueSnapshot, complete
from service.security import InputPolicy
from service.states import JobState, is_terminal
from service.store import EventRecord, JobRecord, JobStore
from service.worker_contract import TOKEN_METADATA, WORKER_ENV, worker_env

__all__ = ["ManagerConfig", "JobManager", "OUTCOMES", "WORKER_ENV"]

log = logging.getLogger("tpet.manager")
OUTCOMES = {"SUCCEEDED": JobState.SUCCEEDED, "REJECTED": JobState.REJECTED,
            "FAILED": JobState.FAILED, "CANCELLED": JobState.CANCELLED}


@dataclass(frozen=True)
class ManagerConfig:
    state_dir: Path
    max_queued: int = 100
    # One concurrent job per slot (worker_contract.Slot): "cpu<n>", "k8s<n>", or a GPU index
    # the worker sees as its only GPU.
    # No slots: jobs are accepted and queued but none starts (e.g. while draining).
    slots: tuple[str, ...] = ("cpu0",)
    max_attempts: int = 1  # worker launches per job when workers die
    cancel_grace_s: float = 30.0  # then a cancelled worker is killed
    poll_interval_s: float = 0.2
    inputs: InputPolicy | None = None  # what a job may read; None: anything (library use)
    input_check_timeout_s: float = 10.0  # then Compress answers "could not check ..."
    max_input_checks: int = 4  # running at once, each holding the RPC thread that waits
    max_waiting_checks: int = 16  # Compress calls waiting for one of those; more: retry later
    store_probe_s: float = 2.0  # a real write this often (and the longest retry backoff)

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"


@dataclass
class _Running:
    handle: Any
    slot: str
    cancel_at: float | None = None  # monotonic time of the cancel request
    killed: bool = False


@dataclass
class JobManager:
    store: JobStore
    launcher: Launcher
    config: ManagerConfig
    metrics: Metrics = field(default_factory=NoMetrics)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._running: dict[str, _Running] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker_target = ""
        self._hooks = complete(self.metrics)  # an implementation may leave hooks out
        self._hooks.watch_queue(self.queue_snapshot)
        self._checks = InputChecks(self.config.inputs, self.config.max_input_checks,
                                   self.config.max_waiting_checks,
                                   self.config.input_check_timeout_s, self._stopping.is_set)
        self._health = StoreHealth(self.store, self.config.store_probe_s, self.clock)
        self._round_errors = RateLimitedLog(log)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, worker_target: str) -> None:
        """Recover, then schedule in a thread; workers reach the manager at ``worker_target``."""
        self.recover(worker_target)
        self._thread = threading.Thread(target=self._loop, name="tpet-scheduler", daemon=True)
        self._thread.start()

    def recover(self, worker_target: str) -> None:
        """Re-queue the jobs a previous server left RUNNING (their workers are gone)."""
        self._worker_target = worker_target
        for job in self.store.list([JobState.RUNNING], limit=1_000_000):
            if job.cancel_requested:
                self._transition(job.id, JobState.CANCELLED, token_hash="",
                                 error="cancelled (the service restarted during the cancel)")
            else:
                self._transition(job.id, JobState.QUEUED, token_hash="", event={
                    "reason": "the service restarted; resuming from the last checkpoint"})

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop scheduling and end the workers; their jobs are re-queued at the next start."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for run in self._running.values():
                self.launcher.kill(run.handle)
            deadline = time.monotonic() + grace_s
            for run in self._running.values():
                while self.launcher.poll(run.handle) is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.launcher.kill(run.handle, force=True)
            self._running.clear()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def watch_health(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(serving)`` from the scheduler thread whenever the store stops or
        starts being able to write."""
        self._health.listen(listener)

    # -- the public API ------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], request_id: str | None = None) -> JobRecord:
        """Queue a job (``spec`` in the job-file mapping); ``InvalidInput`` lists problems,
        ``PermissionDenied`` names an input outside the server's data roots."""
        parsed = parse_spec(spec)
        if not self.store.writable:
            raise self.store.unavailable()
        self._checks.at_submit(parsed)  # off this thread, bounded: a file may block
        with self._lock:
            if request_id:
                existing = self.store.find_request(request_id)
                if existing is not None:
                    return _same_request(existing, spec)
            queued = self.store.count(JobState.QUEUED)
            if queued >= self.config.max_queued:
                raise QueueFull(f"the queue holds {queued} jobs (max_queued "
                                f"{self.config.max_queued}); retry later")
            job_id = "j" + secrets.token_hex(6)
            out = (self.config.artifacts_dir / job_id).resolve()
            job, _ = self.store.create(job_id, request_id or None, parsed.name,
                                       {**spec, "output_dir": str(out)}, str(out), self.clock())
            self._hooks.job_submitted()
            self._changed.notify_all()
        return job

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def list(self, states: Iterable[JobState] = (), page_token: str = "",
             page_size: int = 0) -> tuple[list[JobRecord], str]:
        """One page of jobs in submission order and the token of the next ('' at the end)."""
        if page_size < 0 or page_size > 1000:
            raise InvalidInput(f"page_size is {page_size}; use 1 to 1000 (0: 50)")
        if page_token and not (page_token.isascii() and page_token.isdigit()
                               and len(page_token) <= 18):  # SQLite integers are 64-bit
            raise InvalidInput(f"page_token {page_token!r} is not one this server gave out; "
                               "pass the next_page_token of the previous page, or none")
        size = page_size or 50
        jobs = self.store.list(states, int(page_token or 0), size + 1)
        more = len(jobs) > size
        return jobs[:size], str(jobs[size - 1].seq) if more else ""

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job now; ask a running one to stop (killed after the grace)."""
        with self._lock:
            job = self.store.get(job_id)
            if is_terminal(job.state):
                raise FailedPrecondition(f"job {job_id} already finished ({job.state.value}); "
                                         "there is nothing to cancel")
            if job.state is JobState.QUEUED:
                return self._transition(job_id, JobState.CANCELLED,
                                        error="cancelled before it started")
            if not job.cancel_requested:
                job = self._append(job_id, [("log", job.stage, {
                    "level": "info", "message": "cancel requested"})], cancel_requested=True)
                if job_id in self._running:
                    self._running[job_id].cancel_at = time.monotonic()
            return job

    def wait_events(self, job_id: str, after: int,
                    timeout: float) -> tuple[list[EventRecord], bool]:
        """Events after ``after``, waiting up to ``timeout`` s for some; the flag is True when
        the job has finished and every event was returned before (the watch can end)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                job = self.store.get(job_id)  # read before the events: see the final ones
                events = self.store.events(job_id, after)
                if events or is_terminal(job.state):
                    return events, not events
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return [], False
                self._changed.wait(remaining)

    # -- the worker channel ----------------------------------------------------------------

    def worker_start(self, job_id: str, token: str) -> tuple[dict[str, Any], int]:
        """The job's spec and attempt number, for the worker holding the attempt's token."""
        job = self._authorize(job_id, token)
        return job.spec, job.attempts

    def worker_report(self, job_id: str, token: str,
                      events: list[tuple[str, str, dict[str, Any]]]) -> bool:
        """Record a worker's events; return True when it should stop (cancel requested)."""
        with self._lock:
            job = self._authorize(job_id, token)
            if events:
                stages = [stage for kind, stage, _ in events if kind == "stage_started"]
                fields = {"stage": stages[-1]} if stages else {}
                job = self._append(job_id, events, **fields)
                self._hooks.job_reported(job_id, events, self.clock())
            return job.cancel_requested

    def worker_finish(self, job_id: str, token: str, outcome: str, error: str = "",
                      error_kind: str = "", report_json: str = "") -> JobRecord:
        if outcome not in OUTCOMES:
            raise InvalidInput(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        with self._lock:
            self._authorize(job_id, token)
            # The token dies with the attempt: nothing can report for it afterwards.
            return self._transition(job_id, OUTCOMES[outcome], error=error,
                                    error_kind=error_kind, report_json=report_json,
                                    token_hash="")

    def _authorize(self, job_id: str, token: str) -> JobRecord:
        """The job, when ``token`` is its running attempt's. One answer for every refusal:
        a caller without the token learns nothing of whether the job exists or runs."""
        if not token:
            raise Unauthenticated(f"the worker channel needs the job token ({TOKEN_METADATA})")
        try:
            job: JobRecord | None = self.store.get(job_id)
        except NotFound:
            job = None
        expected = job.token_hash if job is not None else "0" * 64
        granted = hmac.compare_digest(_hash(token), expected)  # compared whatever the job
        if job is None or job.state is not JobState.RUNNING or not granted:
            raise PermissionDenied(f"this token does not grant job {job_id} (a token is good "
                                   "for one attempt of a running job)")
        return job

    # -- scheduling ------------------------------------------------------------------------

    def tick(self) -> None:
        """One scheduling round: reap ended workers, then fill free slots (not while the
        store cannot write). Inputs are checked outside the lock: that may take a while."""
        with self._lock:
            self._reap()
            self._sweep_orphans()
            todo = self._to_launch() if self.store.writable else []
        for job, slot in todo:
            denied = self._checks.at_launch(job.id, parse_spec(job.spec))
            if denied is not None:
                with self._lock:
                    self._launch(job.id, slot, denied)

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            failures = 0 if self._round() else failures + 1
            delay = self.config.poll_interval_s * 2 ** min(failures, 10)
            with self._changed:
                self._changed.wait(min(delay, max(self.config.store_probe_s,
                                                  self.config.poll_interval_s)))

    def _round(self) -> bool:
        """Probe the store when due, then tick; never raises. True when all went through."""
        try:
            self._health.probe_when_due()
            self.tick()
            self._round_errors.clear("scheduling rounds go through again")
            return self.store.writable
        except StoreUnavailable:  # the store logs its failures itself
            return False
        except Exception as exc:  # a bug must not end scheduling; its traceback is logged
            self._round_errors.failure(f"a scheduling round failed: {exc!r}", exc_info=exc)
            return False
        finally:
            self._health.publish()

    def _reap(self) -> None:
        for job_id, run in list(self._running.items()):
            status = self.launcher.poll(run.handle)
            if status is None:
                overdue = run.cancel_at is not None and (
                    time.monotonic() - run.cancel_at > self.config.cancel_grace_s)
                if overdue and not run.killed:
                    self.launcher.kill(run.handle, force=True)
                    run.killed = True
                continue
            job = self.store.get(job_id)
            if job.state is JobState.RUNNING:  # it ended without reporting an outcome
                self._worker_lost(job, status)
            del self._running[job_id]  # only once recorded: a failed write retries next round

    def _sweep_orphans(self) -> None:
        """RUNNING jobs with no worker here: a store outage kept their launch or their end
        from being recorded. They are lost workers (retried while attempts remain)."""
        for job in self.store.list([JobState.RUNNING], limit=1_000_000):
            if job.id not in self._running:
                self._worker_lost(job, ExitStatus(-1, "the service lost track of the worker "
                                                      "while its job store could not write"))

    def _worker_lost(self, job: JobRecord, status: ExitStatus) -> None:
        if job.cancel_requested:
            self._transition(job.id, JobState.CANCELLED, token_hash="",
                             error=f"cancelled ({status.reason})",
                             error_kind=ErrorKind.CANCELLED.value)
        elif job.attempts < self.config.max_attempts:
            self._transition(job.id, JobState.QUEUED, token_hash="", event={
                "reason": f"{status.reason}; retrying (attempt {job.attempts} of "
                          f"{self.config.max_attempts})"})
        else:
            self._transition(job.id, JobState.FAILED, token_hash="", error=status.reason,
                             error_kind=ErrorKind.WORKER_LOST.value)

    def _to_launch(self) -> list[tuple[JobRecord, str]]:
        free = [s for s in self.config.slots if s not in {r.slot for r in self._running.values()}]
        if not free:
            return []
        return list(zip(self.store.list([JobState.QUEUED], limit=len(free)), free))

    def _launch(self, job_id: str, slot: str, denied: str) -> None:
        job = self.store.get(job_id)
        if job.state is not JobState.QUEUED:  # cancelled while its inputs were checked
            return
        token = secrets.token_urlsafe(32)
        attempt = job.attempts + 1
        self._transition(job.id, JobState.RUNNING, event={"attempt": attempt, "slot": slot},
                         attempts=attempt, token_hash=_hash(token), stage="", error="",
                         error_kind="")
        if denied:
            self._transition(job.id, JobState.FAILED, token_hash="", error=denied,
                             error_kind=ErrorKind.PERMISSION_DENIED.value)
            return
        env = worker_env(self._worker_target, job.id, token, slot)
        try:
            handle = self.launcher.start(
                LaunchRequest(job.id, attempt, Path(job.output_dir)), env)
        except OSError as exc:
            self._transition(job.id, JobState.FAILED, token_hash="",
                             error_kind=ErrorKind.INTERNAL.value,
                             error=f"cannot start a worker: {exc}")
            return
        self._running[job.id] = _Running(handle, slot)
        self.store.update(job.id, self.clock(), worker=handle.name)

    def queue_snapshot(self) -> QueueSnapshot:
        """Jobs by state and the oldest queued job's wait, for the metrics."""
        counts = {state.value: self.store.count(state) for state in JobState}
        oldest = self.store.list([JobState.QUEUED], limit=1)
        age = max(0.0, self.clock() - oldest[0].created) if oldest else 0.0
        return QueueSnapshot(counts, age, self.config.max_queued)

    # -- the only writes -------------------------------------------------------------------

    def _transition(self, job_id: str, new: JobState, event: dict[str, Any] | None = None,
                    **fields: Any) -> JobRecord:
        with self._changed:
            old = self.store.get(job_id).state
            job = self.store.transition(job_id, new, self.clock(), event, **fields)
            self._hooks.job_transition(old, new)
            self._hooks.job_changed(job, old)
            log.info("job %s %s -> %s%s", job_id, old.value, new.value,
                     f": {job.error}" if job.error and new is not JobState.RUNNING else "")
            self._changed.notify_all()
            return job

    def _append(self, job_id: str, events: list[tuple[str, str, dict[str, Any]]],
                **fields: Any) -> JobRecord:
        with self._changed:
            self.store.append_events(job_id, events, self.clock(), **fields)
            self._changed.notify_all()
            return self.store.get(job_id)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _same_request(existing: JobRecord, spec: dict[str, Any]) -> JobRecord:
    if {**spec, "output_dir": existing.output_dir} != existing.spec:
        raise AlreadyExists(f"request_id {existing.request_id!r} was used for job {existing.id} "
                            "with a different spec; use a new request_id for a new job")
    return existing
