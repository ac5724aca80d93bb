"""Human-readable progress for the CLI: one line per stage, a live line while training."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from compression.events import Event

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """An ``on_event`` sink. On a terminal the training line updates in place; elsewhere (CI
    logs, pipes) it prints at most one progress line every ``interval_s`` seconds."""

    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 5.0):
        self.stream = stream
        self.live = stream.isatty()
        self.interval_s = interval_s
        self._last_print = 0.0
        self._line_open = False

    def __call__(self, event: Event) -> None:
        if event.kind == "progress":
            self._progress(event)
        elif event.kind == "stage_started":
            self._print(f"==> {event.stage}")
        elif event.kind == "stage_finished":
            details = ", ".join(f"{k}={_fmt(v)}" for k, v in event.payload.items())
            self._print(f"    {event.stage} done ({details})")
        elif event.kind == "log":
            self._print(f"    {event.payload.get('message', '')}")

    def _progress(self, event: Event) -> None:
        p = event.payload
        now = time.monotonic()
        at_epoch_end = p.get("step") == p.get("steps")
        if not self.live and not at_epoch_end and now - self._last_print < self.interval_s:
            return
        self._last_print = now
        parts = [event.stage if p.get("phase", "train") == "train" else
                 f"{event.stage} ({p['phase'].replace('_', ' ')})"]
        if "epoch" in p:
            parts.append(f"epoch {p['epoch']}/{p.get('epochs', '?')}")
        if "step" in p:
            parts.append(f"step {p['step']}/{p.get('steps', '?')}")
        for key, label in (("loss", "loss"), ("samples_per_s", "samples/s")):
            if p.get(key) is not None:
                parts.append(f"{label} {_fmt(p[key])}")
        line = "    " + "  ".join(parts)
        if self.live:
            self.stream.write("\r" + line.ljust(100))
            self._line_open = True
            self.stream.flush()
        else:
            self._print(line)

    def _print(self, line: str) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        self.stream.write(line + "\n")
        self.stream.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
