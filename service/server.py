"""The gRPC server: CompressService, WorkerService, health checking and reflection.

``start_server(config)`` binds (port 0 picks a free port; ``Server.port`` is the bound one),
recovers and starts the job manager, and returns; ``Server.stop`` stops gracefully. RPC
threads only convert and touch the store; pipelines run in worker processes.
"""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from compression.errors import InvalidInput
from service._proto import compress_pb2, compress_pb2_grpc, worker_pb2, worker_pb2_grpc
from service.auth import BearerTokenInterceptor
from service.config import ServerConfig, resolve_slots
from service.errors import ErrorInterceptor
from service.launcher import Launcher, LocalLauncher
from service.manager import JobManager, ManagerConfig
from service.metrics import Metrics, NoMetrics
from service.servicer import CompressServicer, WorkerServicer
from service.store import JobStore

__all__ = ["Server", "start_server", "SERVICE_NAMES"]

log = logging.getLogger("tpet.server")
SERVICE_NAMES = (compress_pb2.DESCRIPTOR.services_by_name["CompressService"].full_name,
                 worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name)


@dataclass
class Server:
    grpc_server: grpc.Server
    manager: JobManager
    store: JobStore
    health: health.HealthServicer
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()

    def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, end the workers (their jobs resume at the next start), let
        in-flight calls finish for up to ``grace_s``, close the store."""
        self.health.enter_graceful_shutdown()
        self.manager.stop(grace_s)
        self.grpc_server.stop(grace_s).wait()
        self.store.close()


def start_server(config: ServerConfig, launcher: Launcher | None = None,
                 metrics: Metrics | None = None) -> Server:
    state_dir = Path(config.state_dir).resolve()
    store = JobStore(state_dir / "store.db")
    manager = JobManager(store, launcher or LocalLauncher(config.worker_python), ManagerConfig(
        state_dir=state_dir, max_queued=config.max_queued, slots=resolve_slots(config),
        max_attempts=config.max_attempts, cancel_grace_s=config.cancel_grace_s),
        metrics or NoMetrics())
    interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor()]  # first: sees all errors
    if config.auth_token_file:
        interceptors.append(BearerTokenInterceptor(config.auth_token()))
    server = grpc.server(futures.ThreadPoolExecutor(config.rpc_threads, "tpet-rpc"),
                         interceptors=interceptors)
    compress_pb2_grpc.add_CompressServiceServicer_to_server(
        CompressServicer(manager, max_watches=max(1, config.rpc_threads - 8)), server)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(manager), server)
    health_servicer = _add_health(server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _bind(server, config.host, config.port, store)
    server.start()
    handle = Server(server, manager, store, health_servicer, config.host, port)
    manager.start(worker_target=_worker_target(config.host, port))
    log.info("serving on %s, state in %s, slots %s", handle.address, state_dir,
             ", ".join(manager.config.slots) or "none (queue only)")
    return handle


def _add_health(server: grpc.Server) -> health.HealthServicer:
    servicer = health.HealthServicer()
    for name in ("", *SERVICE_NAMES):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def _bind(server: grpc.Server, host: str, port: int, store: Any) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        store.close()
        raise InvalidInput(f"cannot listen on {address}: the port is in use or the address is "
                           "not local; pick another with --port (0: any free port)")
    return bound


def _worker_target(host: str, port: int) -> str:
    # Workers on this machine reach a wildcard bind through loopback.
    if host in ("0.0.0.0", "", "::", "[::]"):
        return f"127.0.0.1:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
