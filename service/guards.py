"""Guards that keep the server answering when a user's file or the disk misbehaves.

``BoundedCalls`` runs a call that may block on a user's file (a FIFO, a stalled network mount)
on a daemon thread of its own, at most ``max_running`` at once, and waits at most
``timeout_s`` for it: an RPC thread is never held longer than that, a full set of running
checks is refused at once instead of queueing without bound, and a call that never returns
keeps its thread (and its slot) but never blocks shutdown.

``RateLimitedLog`` says a repeating failure once, then at most once per interval with how
many times it happened since, so an outage leaves a few lines in the log, not thousands.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

from compression.errors import InvalidInput
from service.errors import QueueFull, Unavailable

__all__ = ["BoundedCalls", "RateLimitedLog"]

T = TypeVar("T")
_POLL_S = 0.1  # how often a waiting caller looks at the stop flag


class BoundedCalls:
    """``what`` names the calls in messages ("input checks"); ``stopping`` says when the
    server is shutting down (a waiting caller then gives up at once)."""

    def __init__(self, what: str, max_running: int, timeout_s: float,
                 stopping: Callable[[], bool] = lambda: False):
        if max_running < 1 or timeout_s <= 0:
            raise ValueError("max_running must be >= 1 and timeout_s > 0")
        self.what, self.max_running, self.timeout_s = what, max_running, timeout_s
        self._stopping = stopping
        self._slots = threading.BoundedSemaphore(max_running)

    def run(self, call: Callable[[], T], subject: str) -> T:
        """``call()``'s result or exception. ``QueueFull`` when ``max_running`` calls are
        running; ``InvalidInput`` "could not check ``subject`` within N s" on timeout;
        ``Unavailable`` when the server stops meanwhile."""
        if not self._slots.acquire(blocking=False):
            raise QueueFull(f"{self.max_running} {self.what} are running (an input that "
                            "blocks its reader, such as a FIFO or a stalled network mount, "
                            "holds one until it answers); retry in a few seconds")
        done, box = threading.Event(), {}

        def target() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # handed to the caller, who raises it
                box["error"] = exc
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=target, name=f"tpet-{self.what.replace(' ', '-')}",
                         daemon=True).start()
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

    def failure(self, message: str, level: int = logging.WARNING) -> None:
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since, self._last, self._repeats = now, now, 0
                self.logger.log(level, "%s", message)
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
