"""Launchers start, watch and stop worker processes; the job manager owns the only instance.

``LocalLauncher`` runs ``python -m service.worker`` as a child process;
``service.k8s_launcher`` implements the same three calls with Jobs and pods. The worker talks
back to the manager over gRPC either way, so nothing else changes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from service import worker_contract

__all__ = ["LaunchRequest", "ExitStatus", "WorkerHandle", "Launcher", "LocalLauncher",
           "exit_reason", "torchrun_args", "WORKER_MODULE"]


@dataclass(frozen=True)
class LaunchRequest:
    job_id: str
    attempt: int
    output_dir: Path  # the job's artifacts folder; the local worker logs there


@dataclass(frozen=True)
class ExitStatus:
    code: int  # negative: killed by that signal
    reason: str  # for people: "killed by signal SIGKILL", "exited with code 1: ..."


class WorkerHandle(Protocol):
    @property
    def name(self) -> str: ...  # where it runs, for the job record ("pid 1234", a pod name)


class Launcher(Protocol):
    def start(self, job: LaunchRequest, env: Mapping[str, str]) -> WorkerHandle:
        """Start a worker with ``env`` (``worker_contract.worker_env``) added to its own."""

    def poll(self, handle: Any) -> ExitStatus | None:
        """None while the worker runs; its exit status once it has ended."""

    def kill(self, handle: Any, force: bool = False) -> None:
        """Ask the worker to end (SIGTERM); ``force``: end it now (SIGKILL)."""


@dataclass
class _LocalHandle:
    process: subprocess.Popen
    log_path: Path

    @property
    def name(self) -> str:
        return f"pid {self.process.pid}"


WORKER_MODULE = ("-m", worker_contract.WORKER_MODULE)


def torchrun_args(processes: int) -> tuple[str, ...]:
    """``LocalLauncher`` arguments that run the worker as ``processes`` data-parallel ranks."""
    return ("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            *WORKER_MODULE)


class LocalLauncher:
    """Workers as child processes of the server, logging to ``<output_dir>/worker.log``.

    ``worker_args`` follow the Python executable: the worker module, or ``torchrun_args(n)``
    (on CPU slots only: a GPU slot shows its worker one GPU, and each rank needs its own).
    Each worker leads its own process group, so signals reach torchrun's ranks too.
    """

    def __init__(self, python: str = sys.executable, cwd: str | Path | None = None,
                 extra_env: Mapping[str, str] | None = None,
                 worker_args: tuple[str, ...] = WORKER_MODULE):
        self.python = python
        self.worker_args = tuple(worker_args)
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.extra_env = dict(extra_env or {})

    def start(self, job: LaunchRequest, env: Mapping[str, str]) -> _LocalHandle:
        job.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = job.output_dir / "worker.log"
        with open(log_path, "ab") as log:
            log.write(f"--- attempt {job.attempt}\n".encode())
            log.flush()
            process = subprocess.Popen(
                [self.python, *self.worker_args], cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.extra_env, **env},
                start_new_session=True)  # Ctrl-C on the server's terminal is not the worker's
        return _LocalHandle(process, log_path)

    def poll(self, handle: _LocalHandle) -> ExitStatus | None:
        code = handle.process.poll()
        if code is None:
            return None
        return ExitStatus(code, exit_reason(code, _last_line(handle.log_path)))

    def kill(self, handle: _LocalHandle, force: bool = False) -> None:
        if handle.process.poll() is None:
            try:
                os.killpg(handle.process.pid, signal.SIGKILL if force else signal.SIGTERM)
            except ProcessLookupError:  # ended in between
                pass


def exit_reason(code: int, last_output: str = "") -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        reason = f"worker killed by signal {name}"
    else:
        reason = f"worker exited with code {code}"
    return f"{reason}: {last_output}" if last_output and code > 0 else reason


def _last_line(path: Path, max_bytes: int = 4096) -> str:
    """The worker's last output line (often the error that ended it)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:500] if lines and not lines[-1].startswith("---") else ""
