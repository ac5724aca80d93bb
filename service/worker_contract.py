"""What a worker process and the server that starts it agree on, in one light module.

A launcher starts ``python -m service.worker`` (``WORKER_MODULE``) with ``worker_env``: the
manager's address, the job id, the attempt's token and the devices its slot grants. The worker
reads them back with ``read_worker_env`` and sends the token as ``TOKEN_METADATA`` on every call
of the worker channel; its TLS settings come from ``WORKER_TLS_ENV`` and
``WORKER_TLS_SERVER_NAME_ENV``. Its exit codes (``WORKER_EXIT_FAILED``,
``WORKER_EXIT_MISCONFIGURED``) both say that starting the same worker again cannot help.

The servicer, the manager and the launchers import this module, not ``service.worker``: that
one runs the pipeline and imports torch, which a server answering RPCs has no need of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["ENV_SERVER", "ENV_JOB_ID", "ENV_JOB_TOKEN", "ENV_DEVICES", "WORKER_ENV",
           "WORKER_TLS_ENV", "WORKER_TLS_SERVER_NAME_ENV", "TOKEN_METADATA", "WORKER_MODULE",
           "WORKER_EXIT_FAILED", "WORKER_EXIT_MISCONFIGURED", "Slot", "worker_env",
           "read_worker_env"]

ENV_SERVER = "TPET_SERVER"  # host:port of the manager's worker channel
ENV_JOB_ID = "TPET_JOB_ID"
ENV_JOB_TOKEN = "TPET_JOB_TOKEN"  # good for one attempt of one running job
ENV_DEVICES = "CUDA_VISIBLE_DEVICES"  # the slot's GPU, or none
WORKER_ENV = (ENV_SERVER, ENV_JOB_ID, ENV_JOB_TOKEN, ENV_DEVICES)
# A worker's own variables, not TPET_TLS_*: a server started from a shell with client TLS
# settings passes its environment to local workers, which reach it over loopback plaintext.
WORKER_TLS_ENV = ("TPET_WORKER_TLS_CA", "TPET_WORKER_TLS_CERT", "TPET_WORKER_TLS_KEY")
# The name the server's certificate must carry, when it is not the host of the target (a pod
# dials tpet-api:50051; the certificate may name tpet-api.teachers-pet.svc).
WORKER_TLS_SERVER_NAME_ENV = "TPET_WORKER_TLS_SERVER_NAME"
TOKEN_METADATA = "x-tpet-job-token"
WORKER_MODULE = "service.worker"
# A worker exits 0 once it has reported the job's outcome (whatever it was). Otherwise starting
# the same worker again cannot help: 1, the manager refused the attempt's token, the job failed
# on this rank alone, or Python crashed; 2, its environment is missing or its TLS settings do
# not work. The manager retries with a new attempt and token when max_attempts allows.
WORKER_EXIT_FAILED, WORKER_EXIT_MISCONFIGURED = 1, 2

_PREFIX = {"cpu": "cpu", "pod": "k8s", "gpu": ""}  # the GPU's, empty, is tried last


@dataclass(frozen=True)
class Slot:
    """Where one job runs at a time: ``cpu<n>`` (no GPU), ``<n>`` (GPU n, the only one its
    worker sees) or ``k8s<n>`` (a pod: the cluster decides its devices)."""

    kind: str  # one of cpu, gpu, pod
    index: int

    @classmethod
    def parse(cls, name: str) -> Slot:
        for kind, prefix in _PREFIX.items():
            rest = name[len(prefix):] if name.startswith(prefix) else None
            if rest is not None and rest.isascii() and rest.isdigit():
                return cls(kind, int(rest))
        raise ValueError(f"slot {name!r} is not cpu<n>, k8s<n> or a GPU index")

    def __post_init__(self) -> None:
        if self.kind not in _PREFIX or self.index < 0:
            raise ValueError(f"slot kind {self.kind!r} index {self.index}: kinds are "
                             f"{', '.join(_PREFIX)}, indices from 0")

    def __str__(self) -> str:
        return f"{_PREFIX[self.kind]}{self.index}"

    @property
    def visible_devices(self) -> str:
        """``CUDA_VISIBLE_DEVICES`` for its worker: a CPU slot's worker sees no GPU; a pod's
        are set by the cluster's device plugin (the Kubernetes launcher decides)."""
        return str(self.index) if self.kind == "gpu" else ""


def worker_env(server: str, job_id: str, token: str, slot: Slot | str) -> dict[str, str]:
    """The environment a launcher starts a worker with."""
    slot = slot if isinstance(slot, Slot) else Slot.parse(slot)
    return {ENV_SERVER: server, ENV_JOB_ID: job_id, ENV_JOB_TOKEN: token,
            ENV_DEVICES: slot.visible_devices}


def read_worker_env(environ: Mapping[str, str]) -> tuple[str, str, str]:
    """(server, job id, token) from a worker's environment; ``KeyError`` names the first one
    missing."""
    return environ[ENV_SERVER], environ[ENV_JOB_ID], environ[ENV_JOB_TOKEN]
