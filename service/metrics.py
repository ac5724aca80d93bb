"""The metrics seam: the job manager reports through this interface and owns the instance.

``NoMetrics`` is the default; a Prometheus implementation (with its own registry) plugs in
without touching the manager.
"""

from __future__ import annotations

from typing import Protocol

from service.states import JobState

__all__ = ["Metrics", "NoMetrics"]


class Metrics(Protocol):
    def job_submitted(self) -> None: ...

    def job_transition(self, old: JobState, new: JobState) -> None: ...


class NoMetrics:
    def job_submitted(self) -> None:
        pass

    def job_transition(self, old: JobState, new: JobState) -> None:
        del old, new
