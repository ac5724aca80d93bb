"""Workers that reach the manager over TLS, as Kubernetes worker pods do: a real server on
127.0.0.1 with TLS or mutual TLS (certificates made with the openssl CLI), the worker's channel
configured by its ``TPET_WORKER_TLS_*`` variables, and a job whose worker process dials the
public TLS port with no plaintext listener to fall back on."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from service._proto import worker_pb2, worker_pb2_grpc
from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.launcher import LocalLauncher
from service.security import ClientTls, worker_channel
from service.server import start_server
from service.states import JobState
from service.worker import TOKEN_METADATA
from tests.integration.conftest import JOB_TIMEOUT_S, INCLUSTER_NAME

pytestmark = pytest.mark.integration
WORKER_VARS = ("TPET_WORKER_TLS_CA", "TPET_WORKER_TLS_CERT", "TPET_WORKER_TLS_KEY",
               "TPET_WORKER_TLS_SERVER_NAME")


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(worker_launcher=None, **config):
        config = {"port": 0, "state_dir": str(tmp_path / "state"), "gpus": [],
                  "metrics_port": -1, "max_concurrent_jobs": 0, **config}
        started.append(start_server(ServerConfig(**config), launcher=worker_launcher))
        return started[-1]

    yield start
    for server in started:
        server.stop(grace_s=1)


@pytest.fixture
def worker_env(monkeypatch):
    """``worker_env(**vars)``: exactly these TPET_WORKER_TLS_* variables (CA=..., ...)."""
    def set_vars(**values):
        for name in WORKER_VARS:
            monkeypatch.delenv(name, raising=False)
        for key, value in values.items():
            monkeypatch.setenv(f"TPET_WORKER_TLS_{key}", str(value))

    set_vars()
    return set_vars


def tls_server(serve, pki, mutual=False, cert="server", **config):
    return serve(tls_cert_file=str(pki / f"{cert}.pem"), tls_key_file=str(pki / f"{cert}.key"),
                 tls_client_ca_file=str(pki / "ca.pem") if mutual else "", **config)


def start_job_code(server) -> grpc.StatusCode:
    """StartJob for a job that does not exist, over ``worker_channel``: PERMISSION_DENIED
    (the token grants nothing) is the manager's answer, so the handshake worked; UNAVAILABLE
    means it did not."""
    with worker_channel(server.address) as channel:
        try:
            worker_pb2_grpc.WorkerServiceStub(channel).StartJob(
                worker_pb2.StartJobRequest(job_id="jnope"),
                metadata=((TOKEN_METADATA, "guess"),), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_a_worker_with_the_ca_reaches_the_worker_service_over_tls(serve, pki, worker_env):
    server = tls_server(serve, pki)
    assert start_job_code(server) == grpc.StatusCode.UNAVAILABLE  # plaintext
    worker_env(CA=pki / "rogue-ca.pem")  # not the CA that signed the server
    assert start_job_code(server) == grpc.StatusCode.UNAVAILABLE
    worker_env(CA=pki / "ca.pem")
    assert start_job_code(server) == grpc.StatusCode.PERMISSION_DENIED


def test_the_server_name_override_checks_the_certificate_against_that_name(serve, pki,
                                                                           worker_env):
    server = tls_server(serve, pki, cert="incluster")  # names the Service, not 127.0.0.1
    worker_env(CA=pki / "ca.pem")
    assert start_job_code(server) == grpc.StatusCode.UNAVAILABLE
    worker_env(CA=pki / "ca.pem", SERVER_NAME="tpet-api.elsewhere.svc")
    assert start_job_code(server) == grpc.StatusCode.UNAVAILABLE
    worker_env(CA=pki / "ca.pem", SERVER_NAME=INCLUSTER_NAME)
    assert start_job_code(server) == grpc.StatusCode.PERMISSION_DENIED


def test_under_mutual_tls_a_worker_needs_a_client_certificate_from_the_ca(serve, pki,
                                                                          worker_env):
    server = tls_server(serve, pki, mutual=True)
    worker_env(CA=pki / "ca.pem")
    assert start_job_code(server) == grpc.StatusCode.UNAVAILABLE
    worker_env(CA=pki / "ca.pem", CERT=pki / "rogue.pem", KEY=pki / "rogue.key")
    assert start_job_code(server) == grpc.StatusCode.UNAVAILABLE
    worker_env(CA=pki / "ca.pem", CERT=pki / "client.pem", KEY=pki / "client.key")
    assert start_job_code(server) == grpc.StatusCode.PERMISSION_DENIED


class PodLikeLauncher(LocalLauncher):
    """Local worker processes given what the Kubernetes launcher gives a pod: the TLS
    variables, and no GPU."""

    def __init__(self, tls_env: dict[str, str]):
        super().__init__()
        self.tls_env, self.targets = tls_env, []

    def start(self, job, env):
        self.targets.append(env["TPET_SERVER"])
        return super().start(job, {**env, **self.tls_env, "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture
def teacher(tmp_path) -> Path:
    from compression.models import build_model, save_exported

    path = tmp_path / "teacher.pt2"
    save_exported(build_model("tiny_cnn", 1, 4, 1.0).eval(), (1, 8, 8), path)
    return path


def test_a_job_runs_with_its_worker_on_the_mutual_tls_port(serve, pki, bars_job, teacher,
                                                           tmp_path, worker_env):
    ca, cert, key = (str(pki / name) for name in ("ca.pem", "client.pem", "client.key"))
    launcher = PodLikeLauncher({"TPET_WORKER_TLS_CA": ca, "TPET_WORKER_TLS_CERT": cert,
                                "TPET_WORKER_TLS_KEY": key,
                                "TPET_WORKER_TLS_SERVER_NAME": "localhost"})
    # With the Kubernetes launcher's setting there is no plaintext listener for workers.
    server = tls_server(serve, pki, mutual=True, worker_launcher=launcher,
                        launcher="kubernetes", max_concurrent_jobs=1,
                        data_roots=[str(tmp_path)])
    assert server.closers == []  # no second listener (metrics are off too)
    job_file = bars_job(teacher={"path": str(teacher)},
                        training={"epochs": 1, "batch_size": 64, "lr": 0.05})
    with TpetClient(server.address, retries=0, timeout_s=10,
                    tls=ClientTls(ca, cert, key)) as client:
        done = client.wait(client.compress(job_file).id, timeout_s=JOB_TIMEOUT_S)
    log = Path(done.output_dir) / "worker.log"
    assert job_state(done) is JobState.SUCCEEDED, (done.error, log.read_text())
    assert launcher.targets == [server.address]  # the public TLS port


def test_the_kubernetes_launcher_gives_pods_the_client_certificate_under_mutual_tls(
        serve, pki, tmp_path, monkeypatch):
    pytest.importorskip("kubernetes", reason="needs the kubernetes client")
    import yaml

    from service.k8s_launcher import KubernetesLauncher

    # Credentials for a cluster that is never called: no Job is started here.
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    # The client reads $KUBECONFIG once, when it is imported: point its default there.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
                        str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    block = {"image": "w:1", "manager_target": "tpet-api:50051", "namespace": "tp",
             "tls_secret": "tpet-worker-tls"}
    for mutual in (False, True):
        server = tls_server(serve, pki, mutual=mutual, launcher="kubernetes", kubernetes=block,
                            state_dir=str(tmp_path / f"state-{mutual}"))
        assert isinstance(server.manager.launcher, KubernetesLauncher)
        assert server.manager.launcher.client_cert is mutual
        assert server.closers == []  # pods cannot reach loopback: no plaintext listener
