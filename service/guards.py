"""Guards that keep the server answering when a user's file or the disk misbehaves.

``BoundedCalls`` runs a call that may block on a user's file (a FIFO, a stalled network mount)
on a daemon thread of its own, at most ``max_running`` at once; up to ``max_waiting`` more
callers wait for a slot (a burst of submissions), and past that a caller is refused at once
instead of queueing without bound. A caller waits at most ``timeout_s`` for a slot and as
long for its call, so it holds its RPC thread for at most twice that; a call that never
returns keeps its thread (and its slot) but never blocks shutdown.

``RateLimitedLog`` says a repeating failure once, then at most once per interval with how
many times it happened since, so an outage leaves a few lines in the log, not thousands.

``InputChecks`` applies the input policy through ``BoundedCalls``: at submission (the RPC
thread waits, bounded) and at launch (the scheduler's own slots, so hanging submissions cannot
keep jobs from starting).

``StoreHealth`` probes the job store by a real write when due (every round while it fails)
and tells its listeners (the health service) when the store stops or starts writing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, TypeVar

from compression.errors import InvalidInput
from compression.storage import redact
from compression.spec import JobSpec
from service.errors import PermissionDenied, QueueFull, Unavailable
from service.security import InputPolicy, job_inputs

__all__ = ["BoundedCalls", "InputChecks", "RateLimitedLog", "StoreHealth"]

log = logging.getLogger("tpet.manager")
T = TypeVar("T")
_POLL_S = 0.1  # how often a waiting caller looks at the stop flag


class BoundedCalls:
    """``what`` names the calls in messages ("input checks"); ``stopping`` says when the
    server is shutting down (a waiting caller then gives up at once)."""

    def __init__(self, what: str, max_running: int, timeout_s: float,
                 stopping: Callable[[], bool] = lambda: False, max_waiting: int = 0):
        if max_running < 1 or max_waiting < 0 or timeout_s <= 0:
            raise ValueError("max_running must be >= 1, max_waiting >= 0, timeout_s > 0")
        self.what, self.max_running, self.timeout_s = what, max_running, timeout_s
        self._stopping = stopping
        self._slots = threading.BoundedSemaphore(max_running)
        self._admitted = threading.BoundedSemaphore(max_running + max_waiting)
        self._waiting_allowed = max_waiting > 0

    def run(self, call: Callable[[], T], subject: str) -> T:
        """``call()``'s result or exception. ``QueueFull`` when every slot is taken and
        ``max_waiting`` callers wait already, or no slot frees within ``timeout_s``;
        ``InvalidInput`` "could not check ``subject`` within N s" when the call takes longer;
        ``Unavailable`` when the server stops meanwhile."""
        if not self._admitted.acquire(blocking=False):
            raise self._full()
        try:
            self._take_slot()
        finally:
            self._admitted.release()
        return self._run_in_slot(call, subject)

    def _full(self) -> QueueFull:
        return QueueFull(f"{self.max_running} {self.what} are running (an input that blocks "
                         "its reader, such as a FIFO or a stalled network mount, holds one "
                         "until it answers) and more wait; retry in a few seconds")

    def _take_slot(self) -> None:
        if not self._waiting_allowed:
            if not self._slots.acquire(blocking=False):
                raise self._full()
            return
        deadline = time.monotonic() + self.timeout_s
        while not self._slots.acquire(timeout=min(_POLL_S, self.timeout_s)):
            if self._stopping():
                raise Unavailable("the server is stopping; submit again when it is back")
            if time.monotonic() >= deadline:
                raise self._full()

    def _run_in_slot(self, call: Callable[[], T], subject: str) -> T:
        done, box = threading.Event(), {}

        def target() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # handed to the caller, who raises it
                box["error"] = exc
            finally:
                self._slots.release()
                done.set()

        try:
            threading.Thread(target=target, name=f"tpet-{self.what.replace(' ', '-')}",
                             daemon=True).start()
        except BaseException:  # no thread to give the slot back
            self._slots.release()
            raise
        deadline = time.monotonic() + self.timeout_s
        while not done.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
            if self._stopping():
                raise Unavailable("the server is stopping; submit again when it is back")
            if time.monotonic() >= deadline:
                raise InvalidInput(
                    f"could not check {subject} within {self.timeout_s:g} s: is it a FIFO, a "
                    "device or on a stalled network mount? give regular files on a local or "
                    "responsive file system")
        if "error" in box:
            raise box["error"]
        return box["value"]


class InputChecks:
    """``policy``: what jobs may read (None: anything, no checks)."""

    def __init__(self, policy: InputPolicy | None, max_running: int, max_waiting: int,
                 timeout_s: float, stopping: Callable[[], bool]):
        self.policy = policy
        self._submits = BoundedCalls("input checks", max_running, timeout_s, stopping,
                                     max_waiting)
        # Never waits for a slot: the scheduler has other jobs to reap and start.
        self._launches = BoundedCalls("launch checks", 2, timeout_s, stopping)
        self._waits = RateLimitedLog(log)

    def at_submit(self, spec: JobSpec) -> None:
        """Raise ``PermissionDenied``/``InvalidInput`` for a bad input, ``QueueFull`` when
        too many checks run, ``InvalidInput`` when this one does not answer in time."""
        if self.policy is not None:
            policy = self.policy
            self._submits.run(lambda: policy.check(spec), _subject(spec))

    def at_launch(self, job_id: str, spec: JobSpec) -> str | None:
        """Why the job may no longer read its inputs ('' when it may; None: cannot tell now,
        try next round): a path checked at submission can since have become a symlink out
        of the roots, or the roots changed."""
        if self.policy is None:
            return ""
        policy = self.policy
        try:
            self._launches.run(lambda: policy.check(spec, deep=False), _subject(spec))
        except (PermissionDenied, InvalidInput) as exc:
            return str(exc)
        except (QueueFull, Unavailable) as exc:  # earlier checks still hang, or stopping
            self._waits.failure(f"job {job_id} waits: {exc}")
            return None
        self._waits.clear("launch checks answer again")
        return ""


def _subject(spec: JobSpec) -> str:
    """The inputs a check reads, for its timeout message."""
    # redacted: the check that refuses a URI with credentials in it may be the one that hangs
    named = [f"{field} {redact(path)!r}" for field, path in job_inputs(spec)]
    return ", ".join(named) or "the job's inputs"


class RateLimitedLog:
    """Log ``message`` at ``level`` the first time, then at most once per ``every_s`` with
    the count of repeats since; ``clear`` logs the recovery once."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger, self.every_s, self.clock = logger, every_s, clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the failure began
        self._last = 0.0
        self._repeats = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failure(self, message: str, level: int = logging.WARNING,
                exc_info: BaseException | None = None) -> None:
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since, self._last, self._repeats = now, now, 0
                self.logger.log(level, "%s", message, exc_info=exc_info)
                return
            self._repeats += 1
            if now - self._last < self.every_s:
                return
            repeats, self._repeats, self._last = self._repeats, 0, now
        self.logger.log(level, "%s (%d more times in the last %.0f s; failing for %.0f s)",
                        message, repeats, self.every_s, now - self._since)

    def clear(self, message: str) -> None:
        with self._lock:
            if self._since is None:
                return
            lasted, self._since = self.clock() - self._since, None
        self.logger.info("%s (after %.0f s)", message, lasted)


class StoreHealth:
    """``store``: has ``writable`` and ``probe(now)`` (``service.store.JobStore``)."""

    def __init__(self, store: Any, probe_s: float, clock: Callable[[], float] = time.time):
        self.store, self.probe_s, self.clock = store, probe_s, clock
        self._listeners: list[Callable[[bool], None]] = []
        self._serving = True
        self._next_probe = 0.0

    def listen(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def probe_when_due(self) -> None:
        if not self.store.writable or time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + self.probe_s
            self.store.probe(self.clock())

    def publish(self) -> None:
        """Tell the listeners if writability changed since the last call."""
        serving = self.store.writable
        if serving != self._serving:
            self._serving = serving
            for listener in self._listeners:
                listener(serving)
