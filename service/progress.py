"""Progress a person can read: one line per stage, and per stage its percent, elapsed time and
ETA.

On a terminal a tqdm bar updates in place (tqdm: one small pure-Python package, and it knows
how to share a terminal with other output). Elsewhere (CI logs, pipes, a worker's log file)
the same numbers come as one plain line every ``interval_s`` seconds: a log must stay short
and must not be full of carriage returns.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from tqdm import tqdm

from compression.events import Event

__all__ = ["ProgressPrinter", "position"]


@dataclass(frozen=True)
class _Position:
    done: int
    total: int
    detail: str  # e.g. "epoch 2/5": where in the work ``done`` is


def position(payload: dict[str, Any]) -> _Position | None:
    """How far a progress event's work is: training counts steps over every epoch; other
    phases (the teacher cache) count their own steps. None when the event does not say."""
    step, steps = payload.get("step"), payload.get("steps")
    if not (_count(step) and _count(steps)) or step > steps:
        return None
    epoch, epochs = payload.get("epoch"), payload.get("epochs")
    if _count(epoch) and _count(epochs) and epoch <= epochs:
        return _Position((epoch - 1) * steps + step, epochs * steps, f"epoch {epoch}/{epochs}")
    return _Position(step, steps, "")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class ProgressPrinter:
    """An ``on_event`` sink writing to ``stream``. ``live`` (default: whether ``stream`` is a
    terminal) picks the bar; ``clock`` times the plain lines."""

    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 5.0,
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.interval_s, self.clock = interval_s, clock
        self._bar: tqdm | None = None
        self._key: tuple[str, str] | None = None  # (stage, phase) being counted
        self._since = 0.0  # when that began
        self._first = 0  # work already done then (a resumed job starts past 0)
        self._last_print = -math.inf
        self._stage_start: tuple[str, float] = ("", 0.0)  # the stage this printer saw start

    def __call__(self, event: Event) -> None:
        if event.kind == "progress":
            self._progress(event)
        elif event.kind == "stage_started":
            self.close()
            self._stage_start = (event.stage, self.clock())
            self._print(f"==> {event.stage}")
        elif event.kind == "stage_finished":
            self.close()
            details = ", ".join(f"{k}={_fmt(v)}" for k, v in event.payload.items())
            self._print(f"    {event.stage} done ({details})")
        elif event.kind == "log":
            self._print(f"    {event.payload.get('message', '')}")

    def close(self) -> None:
        """End the live bar, if one is open (the next output starts on its own line)."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None

    def _progress(self, event: Event) -> None:
        p = event.payload
        phase = str(p.get("phase", "train"))
        where = position(p)
        now = self.clock()
        if (event.stage, phase) != self._key:
            self.close()
            self._key, self._since = (event.stage, phase), now
            self._first = where.done if where else 0
            self._last_print = -math.inf  # each phase says at once that it began
        label = event.stage if phase == "train" else f"{event.stage} ({phase.replace('_', ' ')})"
        if self.live and where is not None:
            self._update_bar(label, where, p)
        elif now - self._last_print >= self.interval_s:
            self._last_print = now
            self._print(self._plain_line(label, where, p, now))

    def _update_bar(self, label: str, where: _Position, payload: dict[str, Any]) -> None:
        if self._bar is None:
            self._bar = tqdm(total=where.total, initial=where.done, desc=f"    {label}",
                             file=self.stream, unit="step", dynamic_ncols=True, leave=True)
        self._bar.set_postfix_str("  ".join(filter(None, (where.detail, *_metrics(payload)))),
                                  refresh=False)
        self._bar.update(where.done - self._bar.n)

    def _plain_line(self, label: str, where: _Position | None, payload: dict[str, Any],
                    now: float) -> str:
        stage, started = self._stage_start
        elapsed = now - (started if self._key and self._key[0] == stage else self._since)
        parts = [label]
        if where is not None:  # the rate from what this printer saw done, resumed work aside
            counted = now - self._since
            rate = (where.done - self._first) / counted if counted > 0 else 0.0
            parts += [f"{100 * where.done / where.total:3.0f}%", where.detail,
                      f"step {where.done}/{where.total}",
                      f"elapsed {tqdm.format_interval(elapsed)}",
                      f"ETA {_eta(where.total - where.done, rate)}"]
        return "    " + "  ".join(filter(None, (*parts, *_metrics(payload))))

    def _print(self, line: str) -> None:
        if self._bar is not None:  # above the bar, which is drawn again below
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()


def _eta(left: int, rate: float) -> str:
    if not left:
        return tqdm.format_interval(0)
    return tqdm.format_interval(left / rate) if rate > 0 else "?"  # no rate seen yet


def _metrics(payload: dict[str, Any]) -> list[str]:
    return [f"{label} {_fmt(payload[key])}" for key, label in
            (("loss", "loss"), ("samples_per_s", "samples/s")) if payload.get(key) is not None]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
