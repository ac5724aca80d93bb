"""The server's configuration: defaults, a YAML file (``tpet serve --config``), flags on top.

Every problem in a file is listed at once, like a job spec's.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compression.errors import InvalidInput

__all__ = ["ServerConfig", "load_config", "detect_gpus", "resolve_slots"]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (the bound one is reported)
    state_dir: str = "state"  # store.db and artifacts/<job_id>/
    max_queued: int = 100  # more queued jobs: RESOURCE_EXHAUSTED
    max_concurrent_jobs: int | None = None  # None: one per GPU, else 1; 0: queue only
    gpus: list[int] | str = "auto"  # "auto": CUDA_VISIBLE_DEVICES or nvidia-smi; [] for none
    max_attempts: int = 1  # launches per job when its worker dies (1: no retry)
    cancel_grace_s: float = 30.0
    rpc_threads: int = 32  # open WatchJob streams each hold one; 8 stay free for other calls
    auth_token_file: str = ""  # when set, CompressService calls need `Bearer <token>`
    worker_python: str = sys.executable

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.port <= 65535:
            out.append(f"port is {self.port}; use 0 to 65535 (0: any free port)")
        for name in ("max_queued", "max_attempts", "rpc_threads"):
            if getattr(self, name) < 1:
                out.append(f"{name} is {getattr(self, name)}; it must be >= 1")
        if self.max_concurrent_jobs is not None and self.max_concurrent_jobs < 0:
            out.append(f"max_concurrent_jobs is {self.max_concurrent_jobs}; it must be >= 0")
        if self.gpus != "auto" and not (isinstance(self.gpus, list) and all(
                isinstance(g, int) and g >= 0 for g in self.gpus)):
            out.append(f"gpus is {self.gpus!r}; use auto or a list of GPU indices like [0, 1]")
        if self.cancel_grace_s < 0:
            out.append(f"cancel_grace_s is {self.cancel_grace_s}; it must be >= 0")
        if self.auth_token_file and not Path(self.auth_token_file).is_file():
            out.append(f"auth_token_file {self.auth_token_file} does not exist")
        return out

    def auth_token(self) -> str:
        return Path(self.auth_token_file).read_text().strip() if self.auth_token_file else ""


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` that are not None."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidInput(f"cannot read server config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"server config {path} must be a mapping of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    problems = [f"{k}: unknown setting; known: {', '.join(sorted(fields))}"
                for k in data if k not in fields]
    if problems:
        raise InvalidInput(problems, f"invalid server config {path or ''}".rstrip())
    try:
        config = ServerConfig(**data)
        problems = config.problems()
    except TypeError as exc:  # a value of the wrong type fails a comparison
        problems = [f"a setting has the wrong type: {exc}"]
    if problems:
        raise InvalidInput(problems, f"invalid server config {path or ''}".rstrip())
    return config


def detect_gpus() -> list[int]:
    """GPU indices this server may hand out: CUDA_VISIBLE_DEVICES, else nvidia-smi's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(g) for g in visible.split(",") if g.strip().isdigit()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return list(range(sum(line.startswith("GPU ") for line in out.stdout.splitlines())))


def resolve_slots(config: ServerConfig) -> tuple[str, ...]:
    """One slot per concurrent job: GPU indices when there are GPUs, else ``cpu<n>``."""
    gpus = detect_gpus() if config.gpus == "auto" else list(config.gpus)
    if gpus:
        count = len(gpus) if config.max_concurrent_jobs is None else config.max_concurrent_jobs
        return tuple(str(g) for g in gpus[:count])
    count = 1 if config.max_concurrent_jobs is None else config.max_concurrent_jobs
    return tuple(f"cpu{i}" for i in range(count))
