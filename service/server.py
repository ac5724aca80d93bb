"""The gRPC server: CompressService, WorkerService, health checking and reflection.

``start_server(config)`` binds (port 0 picks a free port; ``Server.port`` is the bound one),
recovers and starts the job manager, and returns; ``Server.stop`` stops gracefully. RPC
threads only convert and touch the store; pipelines run in worker processes.

With TLS configured the public port speaks only TLS. Local workers then reach the manager
through a second, plaintext server on 127.0.0.1 that serves the worker channel alone (each
of its calls needs a job's token); Kubernetes worker pods cannot reach loopback, so with that
launcher there is no second server and pods dial the TLS port with the Secret the config names
(``kubernetes.tls_secret``). Metrics are served over HTTP on their own port.

Health follows the job store: NOT_SERVING while it cannot write (a full disk), SERVING again
once a probe write succeeds. Replies are at most ``max_request_bytes`` plus a spec
(``max_spec_bytes``); ``service.client`` receives up to ``CLIENT_MAX_RECEIVE_BYTES``, and the
server refuses to start with limits whose replies would not fit.
"""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from compression.errors import InvalidInput
from service._proto import compress_pb2, compress_pb2_grpc, worker_pb2, worker_pb2_grpc
from service.auth import BearerTokenInterceptor
from service.client import CLIENT_MAX_RECEIVE_BYTES
from service.config import ServerConfig, resolve_slots
from service.errors import ErrorInterceptor
from service.launcher import Launcher, LocalLauncher
from service.manager import JobManager, ManagerConfig
from service.metrics import Metrics, NoMetrics, PrometheusMetrics
from service.security import server_credentials
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
    metrics_port: int | None = None  # the bound /metrics port; None: not served
    closers: list[Callable[[], None]] = field(default_factory=list)  # extra listeners

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
        for close in self.closers:
            close()
        self.store.close()


def start_server(config: ServerConfig, launcher: Launcher | None = None,
                 metrics: Metrics | None = None,
                 manager_options: Mapping[str, Any] | None = None) -> Server:
    """``manager_options``: ``ManagerConfig`` fields to override (timeouts, probe interval)
    for an embedding application."""
    _check_reply_limits(config)
    token = config.auth_token()  # unreadable secrets fail before anything is opened
    credentials = server_credentials(config.tls_cert_file, config.tls_key_file,
                                     config.tls_client_ca_file) if config.tls_cert_file else None
    launcher = launcher or _launcher(config)
    metrics = metrics if metrics is not None else _metrics(config)
    state_dir = Path(config.state_dir).resolve()
    store = JobStore(state_dir / "store.db")
    manager = JobManager(store, launcher, _manager_config(config, state_dir, manager_options),
                         metrics)
    interceptors = _interceptors(metrics, BearerTokenInterceptor(token) if token else None)
    # Compress calls waiting on input checks get threads of their own, on top of
    # rpc_threads: however many hang, the rest of the API keeps what rpc_threads promises.
    checking = manager.config.max_input_checks + manager.config.max_waiting_checks
    server = grpc.server(futures.ThreadPoolExecutor(config.rpc_threads + checking, "tpet-rpc"),
                         interceptors=interceptors, options=_options(config))
    compress_pb2_grpc.add_CompressServiceServicer_to_server(
        CompressServicer(manager, max_watches=max(1, config.rpc_threads - 8),
                         max_spec_bytes=config.max_spec_bytes), server)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(manager), server)
    health_servicer = _add_health(server)
    manager.watch_health(lambda serving: _set_health(health_servicer, serving))
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _bind(server, config.host, config.port, store, credentials)
    handle = Server(server, manager, store, health_servicer, config.host, port)
    worker_target = _worker_target(config.host, port)
    try:
        handle.metrics_port = _serve_metrics(config, metrics, handle.closers)
        if config.tls_cert_file and config.launcher == "local":
            worker_target = _local_worker_server(manager, metrics, config, handle.closers)
    except InvalidInput:
        for close in handle.closers:
            close()
        store.close()
        raise
    server.start()
    manager.start(worker_target=worker_target)
    log.info("serving on %s, state in %s, slots %s", handle.address, state_dir,
             ", ".join(manager.config.slots) or "none (queue only)")
    return handle


def _manager_config(config: ServerConfig, state_dir: Path,
                    overrides: Mapping[str, Any] | None) -> ManagerConfig:
    return ManagerConfig(**{
        "state_dir": state_dir, "max_queued": config.max_queued, "slots": resolve_slots(config),
        "max_attempts": config.max_attempts, "cancel_grace_s": config.cancel_grace_s,
        "inputs": config.input_policy(), **(overrides or {})})


def _add_health(server: grpc.Server) -> health.HealthServicer:
    servicer = health.HealthServicer()
    _set_health(servicer, True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def _set_health(servicer: health.HealthServicer, serving: bool) -> None:
    """Every name at once (ignored once a graceful stop has begun: that stays NOT_SERVING)."""
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", *SERVICE_NAMES):
        servicer.set(name, status)


def _check_reply_limits(config: ServerConfig) -> None:
    largest = config.max_request_bytes + config.max_spec_bytes + 2**16  # a Job reply at most
    if largest > CLIENT_MAX_RECEIVE_BYTES:
        raise InvalidInput(
            f"max_request_bytes ({config.max_request_bytes}) and max_spec_bytes "
            f"({config.max_spec_bytes}) allow replies of {largest} bytes, more than tpet "
            f"clients receive ({CLIENT_MAX_RECEIVE_BYTES}); lower max_request_bytes")


def _metrics(config: ServerConfig) -> Metrics:
    if config.metrics_port < 0:
        return NoMetrics()
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no *_created twin of every counter: half the series to store
    return PrometheusMetrics(recent_jobs=config.metrics_recent_jobs)


def _interceptors(metrics: Metrics, auth: grpc.ServerInterceptor | None) -> list[Any]:
    # Order matters: metrics first (they see every final code), then the error mapping
    # (it turns what the later ones raise into codes), then authentication.
    chain: list[Any] = [metrics.rpc_interceptor()] if isinstance(
        metrics, PrometheusMetrics) else []
    return [*chain, ErrorInterceptor(), *([auth] if auth else [])]


def _options(config: ServerConfig) -> list[tuple[str, int]]:
    # A report a worker sent (up to max_request_bytes) goes back out in GetJob with the spec.
    return [("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.max_send_message_length",
             config.max_request_bytes + config.max_spec_bytes + 2**16)]


def _serve_metrics(config: ServerConfig, metrics: Metrics,
                   closers: list[Callable[[], None]]) -> int | None:
    """Serve /metrics over HTTP; return the bound port (None when metrics are off)."""
    if not isinstance(metrics, PrometheusMetrics) or config.metrics_port < 0:
        return None
    from prometheus_client import start_http_server

    try:
        httpd, _ = start_http_server(config.metrics_port, config.metrics_host,
                                     registry=metrics.registry)
    except OSError as exc:
        raise InvalidInput(f"cannot serve metrics on {config.metrics_host}:"
                           f"{config.metrics_port}: {exc.strerror}; pick another port with "
                           "--metrics-port (0: any free port, -1: none)") from exc
    closers.append(lambda: (httpd.shutdown(), httpd.server_close()))
    return httpd.server_port


def _local_worker_server(manager: JobManager, metrics: Metrics, config: ServerConfig,
                         closers: list[Callable[[], None]]) -> str:
    """A plaintext loopback server with only the worker channel, for local workers while
    the public port speaks TLS; return its address."""
    server = grpc.server(futures.ThreadPoolExecutor(4, "tpet-worker-rpc"),
                         interceptors=_interceptors(metrics, None), options=_options(config))
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(manager), server)
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        raise InvalidInput("cannot listen on 127.0.0.1 for the local workers")
    server.start()
    closers.append(lambda: server.stop(1).wait())
    return f"127.0.0.1:{port}"


def _bind(server: grpc.Server, host: str, port: int, store: Any,
          credentials: grpc.ServerCredentials | None = None) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
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


def _launcher(config: ServerConfig) -> Launcher:
    if config.launcher == "kubernetes":  # the Kubernetes client loads only for this launcher
        from service.k8s_launcher import KubernetesLauncher
        return KubernetesLauncher.from_config(config.kubernetes,
                                              client_cert=bool(config.tls_client_ca_file))
    return LocalLauncher(config.worker_python)
