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

from compression import storage
from compression.errors import InvalidInput
from compression.safe_yaml import load_yaml_file
from compression.typed import choice, parse_into, ranged
from service.security import DEFAULT_DATA_ROOTS, InputPolicy, load_token

__all__ = ["ServerConfig", "load_config", "detect_gpus", "resolve_slots"]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = ranged(50051, 0, 65535)  # 0: any free port (the bound one is reported)
    state_dir: str = "state"  # store.db and artifacts/<job_id>/
    max_queued: int = ranged(100, 1, 1_000_000)  # more queued jobs: RESOURCE_EXHAUSTED
    max_concurrent_jobs: int | None = ranged(None, 0, 4096)  # None: one per GPU, else 1; 0: queue
    gpus: list[int] | str = "auto"  # "auto": CUDA_VISIBLE_DEVICES or nvidia-smi; [] for none
    max_attempts: int = ranged(1, 1, 100)  # launches per job when its worker dies (1: no retry)
    cancel_grace_s: float = ranged(30.0, 0.0, 86_400.0)
    rpc_threads: int = ranged(32, 1, 4096)  # WatchJob streams each hold one; 8 stay free
    auth_token_file: str = ""  # CompressService calls need `Bearer <token>` (or $TPET_TOKEN_FILE)
    worker_python: str = sys.executable
    # What jobs may read: real paths under these roots and objects under these URI prefixes
    # (s3://bucket/prefix/; output_uri too). None: working dir and /usr/share/datasets.
    data_roots: list[str] | None = None
    max_data_bytes: int = ranged(32 * 2**30, 1)  # the largest input (file, folder, manifest)
    allow_torchscript_teachers: bool = False  # a TorchScript teacher is code: off unless trusted
    max_request_bytes: int = ranged(16 * 2**20, 1, 2**31 - 1)  # gRPC messages accepted
    # a Compress spec; every Job reply carries it, and gRPC clients receive 4 MiB by default
    max_spec_bytes: int = ranged(2**20, 1, 3 * 2**20)
    tls_cert_file: str = ""  # with tls_key_file: serve TLS only
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # mutual TLS: clients need a certificate this CA signed
    metrics_host: str = "127.0.0.1"
    metrics_port: int = ranged(9464, -1, 65535)  # Prometheus /metrics; 0: any free, -1: none
    metrics_recent_jobs: int = ranged(20, 1, 10_000)  # finished jobs with per-subgroup series
    launcher: str = choice("local", "kubernetes", default="local")  # kubernetes: a Job each
    kubernetes: dict = dataclasses.field(default_factory=dict)  # that launcher's settings

    def problems(self) -> list[str]:
        out = []
        if self.gpus != "auto" and not (isinstance(self.gpus, list) and all(
                isinstance(g, int) and g >= 0 for g in self.gpus)):
            out.append(f"gpus is {self.gpus!r}; use auto or a list of GPU indices like [0, 1]")
        if self.auth_token_file and not Path(self.auth_token_file).is_file():
            out.append(f"auth_token_file {self.auth_token_file} does not exist")
        if self.launcher == "kubernetes":
            out += _kubernetes_problems(self.kubernetes) + self._worker_tls_problems()
        return out + self._security_problems()

    def _worker_tls_problems(self) -> list[str]:
        """Kubernetes worker pods dial the public port: with TLS on they need TLS too."""
        block = self.kubernetes if isinstance(self.kubernetes, dict) else {}
        if not self.tls_cert_file or block.get("tls_secret"):
            return []
        client = (", and for mutual TLS (tls_client_ca_file) tls.crt and tls.key, a client "
                  "certificate that CA signed") if self.tls_client_ca_file else ""
        return ["kubernetes.tls_secret: required with tls_cert_file, since worker pods reach "
                "the server on its TLS-only port; create a Secret holding ca.crt (the CA that "
                f"signed tls_cert_file){client}, and name it here (docs/operations.md, TLS "
                "and mutual TLS)"]

    def _security_problems(self) -> list[str]:
        out = []
        if self.data_roots is not None and not (
                isinstance(self.data_roots, list) and self.data_roots
                and all(isinstance(r, str) and r for r in self.data_roots)):
            out.append(f"data_roots is {self.data_roots!r}; give a list of directories or "
                       "URI prefixes (s3://bucket/prefix/), or leave it out for the working "
                       "directory and /usr/share/datasets")
        else:
            out += [f"data_roots: {p}" for p in map(storage.prefix_problem, self.data_roots or ())
                    if p]
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            out.append("tls_cert_file and tls_key_file go together; set both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            out.append("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                out.append(f"{name} {getattr(self, name)} does not exist")
        return out

    def auth_token(self) -> str:
        """The bearer token from auth_token_file, else from $TPET_TOKEN_FILE ('': no auth)."""
        path = self.auth_token_file or os.environ.get("TPET_TOKEN_FILE", "")
        return load_token(path) if path else ""

    def input_policy(self) -> InputPolicy:
        return InputPolicy.of(DEFAULT_DATA_ROOTS if self.data_roots is None
                              else self.data_roots, self.max_data_bytes,
                              self.allow_torchscript_teachers)


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` that are not None."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = load_yaml_file(path, "server config") or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidInput(f"cannot read server config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"server config {path} must be a mapping of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    problems: list[str] = []
    config = parse_into(ServerConfig, data, "", problems)
    if problems or config is None:
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
    if config.launcher == "kubernetes":  # pods get their GPUs from the cluster's scheduler
        count = 1 if config.max_concurrent_jobs is None else config.max_concurrent_jobs
        return tuple(f"k8s{i}" for i in range(count))
    gpus = detect_gpus() if config.gpus == "auto" else list(config.gpus)
    if gpus:
        count = len(gpus) if config.max_concurrent_jobs is None else config.max_concurrent_jobs
        return tuple(str(g) for g in gpus[:count])
    count = 1 if config.max_concurrent_jobs is None else config.max_concurrent_jobs
    return tuple(f"cpu{i}" for i in range(count))


def _kubernetes_problems(block: Any) -> list[str]:
    try:
        from service.k8s_objects import KubernetesConfig  # the client is needed only here
    except ImportError as exc:
        return [f"launcher kubernetes needs the kubernetes client ({exc}); "
                "pip install kubernetes"]
    return KubernetesConfig.problems_in(block)
