"""Progress events the library reports through the ``on_event`` callback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Event", "EventSink", "StopCheck", "emit_nothing", "never_stop"]


@dataclass(frozen=True)
class Event:
    """``kind`` is one of: stage_started, progress, stage_finished, log.

    ``progress`` payloads carry epoch, epochs, step, steps, loss and samples_per_s;
    ``stage_finished`` payloads carry the stage's result summary (JSON-ready).
    """

    kind: str
    stage: str
    payload: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[Event], None]
StopCheck = Callable[[], bool]


def emit_nothing(event: Event) -> None:
    del event


def never_stop() -> bool:
    return False
