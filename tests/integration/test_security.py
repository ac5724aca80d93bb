"""The server's security as a client meets it: TLS and mutual TLS (certificates made with the
openssl CLI, in conftest.py), bearer tokens from files, loopback-only defaults, data roots,
size limits, and a pickled teacher that must never be unpickled."""

from __future__ import annotations

import os
import socket
import subprocess

import grpc
import pytest

from service._proto import compress_pb2, compress_pb2_grpc
from service.client import TpetClient, job_state
from service.config import ServerConfig
from service.errors import Unauthenticated, Unavailable
from service.security import ClientTls
from service.server import start_server
from service.states import JobState
from tests.integration.conftest import JOB_TIMEOUT_S, REPO, TPET

pytestmark = pytest.mark.integration


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(**config):
        config = {"port": 0, "state_dir": str(tmp_path / "state"), "gpus": [],
                  "metrics_port": -1, "max_concurrent_jobs": 0, **config}
        started.append(start_server(ServerConfig(**config)))
        return started[-1]

    yield start
    for server in started:
        server.stop(grace_s=1)


def tls_server(serve, pki, mutual=False, **config):
    return serve(tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key"),
                 tls_client_ca_file=str(pki / "ca.pem") if mutual else "", **config)


def client(server, tls=None, token=None):
    return TpetClient(server.address, token=token, retries=0, timeout_s=10, tls=tls)


def test_a_tls_server_speaks_only_tls(serve, pki):
    server = tls_server(serve, pki)
    assert list(client(server, ClientTls(str(pki / "ca.pem"))).list_jobs()) == []
    with pytest.raises(Unavailable):
        list(client(server).list_jobs())  # plaintext
    with pytest.raises(Unavailable):  # a server this CA did not sign
        list(client(server, ClientTls(str(pki / "rogue-ca.pem"))).list_jobs())


def test_mutual_tls_needs_a_client_certificate_from_the_ca(serve, pki):
    server = tls_server(serve, pki, mutual=True)
    ca = str(pki / "ca.pem")
    good = ClientTls(ca, str(pki / "client.pem"), str(pki / "client.key"))
    assert list(client(server, good).list_jobs()) == []
    for tls in (ClientTls(ca), ClientTls(ca, str(pki / "rogue.pem"), str(pki / "rogue.key"))):
        with pytest.raises(Unavailable):
            list(client(server, tls).list_jobs())


def test_cli_flags_for_tls_and_a_token_file(serve, pki, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "wrong").write_text("guess\n")
    server = tls_server(serve, pki, mutual=True, auth_token_file=str(tmp_path / "token"))
    flags = ["--server", server.address, "--tls-ca", pki / "ca.pem", "--tls-cert",
             pki / "client.pem", "--tls-key", pki / "client.key"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPET_")}

    def tpet(*args):
        return subprocess.run([*TPET, *map(str, args)], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=60)

    ran = tpet("jobs", *flags, "--token-file", tmp_path / "token")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["ID", "NAME", "STATE", "STAGE", "ATTEMPTS", "CREATED", "REASON"]
    ran = tpet("jobs", *flags, "--token-file", tmp_path / "wrong")
    assert ran.returncode == 4 and "the token is not valid" in ran.stderr
    ran = tpet("jobs", "--server", server.address, "--token-file", tmp_path / "token")
    assert ran.returncode == 4 and "cannot reach the server" in ran.stderr  # no TLS


def test_token_from_the_environment_file_guards_the_api(serve, tmp_path, monkeypatch):
    (tmp_path / "token").write_text("from-env\n")
    monkeypatch.setenv("TPET_TOKEN_FILE", str(tmp_path / "token"))
    server = serve()  # no auth_token_file in the config: $TPET_TOKEN_FILE counts
    assert list(client(server).list_jobs()) == []  # the client reads the same variable
    monkeypatch.delenv("TPET_TOKEN_FILE")
    with pytest.raises(Unauthenticated, match="needs a token"):
        list(client(server).list_jobs())
    with pytest.raises(Unauthenticated, match="not valid"):
        list(client(server, token="guess").list_jobs())


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_default_listens_on_loopback_only(serve):
    defaults = ServerConfig()
    assert (defaults.host, defaults.metrics_host) == ("127.0.0.1", "127.0.0.1")
    server = serve(metrics_port=0)
    assert server.address == f"127.0.0.1:{server.port}"
    outward = _outward_address()
    if outward is None:
        return  # no other interface to try here
    for port in (server.port, server.metrics_port):
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((outward, port))


def bars_spec(tmp_path, **data):
    return {"name": "bars", "teacher": {"path": str(tmp_path / "data" / "teacher.pt2")},
            "data": {"source": "npz", "path": str(tmp_path / "data" / "train.npz"),
                     "test_path": str(tmp_path / "data" / "train.npz"), **data}}


def compress_code(server, spec) -> tuple[grpc.StatusCode, str]:
    from service.convert import dict_to_proto

    with grpc.insecure_channel(server.address) as channel:
        try:
            compress_pb2_grpc.CompressServiceStub(channel).Compress(
                compress_pb2.CompressRequest(spec=dict_to_proto(spec)), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_inputs_outside_the_roots_are_permission_denied(serve, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.npz").write_bytes(b"0" * 100)
    (tmp_path / "elsewhere.npz").write_bytes(b"0" * 100)
    (tmp_path / "data" / "escape.npz").symlink_to(tmp_path / "elsewhere.npz")
    server = serve(data_roots=[str(tmp_path / "data")])
    assert compress_code(server, bars_spec(tmp_path))[0] == grpc.StatusCode.OK
    for path, why in ((f"{tmp_path}/data/../elsewhere.npz", "contains '..'"),
                      (f"{tmp_path}/data/escape.npz", f"resolves to {tmp_path}/elsewhere.npz"),
                      ("/etc/passwd", "outside the server's data roots")):
        code, details = compress_code(server, bars_spec(tmp_path, test_path=path))
        assert code == grpc.StatusCode.PERMISSION_DENIED and why in details
        assert "data.test_path" in details and "Traceback" not in details


def test_request_and_input_size_limits(serve, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.npz").write_bytes(b"0" * 2000)
    server = serve(data_roots=[str(tmp_path)], max_data_bytes=1000,
                   max_request_bytes=64 * 1024)
    code, details = compress_code(server, bars_spec(tmp_path))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "train.npz' holds more than 1000 bytes, the server's max_data_bytes" in details
    huge = {**bars_spec(tmp_path), "data": {
        **bars_spec(tmp_path)["data"], "subgroups": {
            "by": "map", "mapping": {f"class{i}": "g" * 100 for i in range(1000)}}}}
    assert compress_code(server, huge)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # > 64 KiB


class _Boom:
    """Unpickling this would run a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_teacher_fails_cleanly_and_is_never_unpickled(serve, pki, bars_job, tmp_path):
    import torch

    marker = tmp_path / "unpickled"
    torch.save({"weight": torch.zeros(2), "boom": _Boom(marker)}, tmp_path / "teacher.pt")
    # TLS on: the local worker reaches the manager through the loopback worker port
    server = tls_server(serve, pki, data_roots=[str(tmp_path)], max_concurrent_jobs=1)
    tls_client = client(server, ClientTls(str(pki / "ca.pem")))
    job_file = bars_job(teacher={"path": str(tmp_path / "teacher.pt")},
                        training={"epochs": 1, "batch_size": 32})
    done = tls_client.wait(tls_client.compress(job_file).id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.FAILED and done.error_kind == "invalid_input"
    assert "pickled Python code" in done.error and "posix.system" in done.error
    assert "Traceback" not in done.error
    assert not marker.exists()


def _manifest_tree(root, n=8):
    """root/img/<i>.png (8x8 gray, two classes) and root/m.csv listing them."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    for i in range(n):
        Image.new("L", (8, 8), 200 * (i % 2)).save(root / "img" / f"{i}.png")
    rows = "".join(f"img/{i}.png,{i % 2}\n" for i in range(n))
    (root / "m.csv").write_text("path,label\n" + rows)
    return root / "m.csv"


def manifest_spec(tmp_path, manifest):
    return {"name": "manifest", "teacher": {"path": str(tmp_path / "data" / "teacher.pt2")},
            "data": {"source": "manifest", "path": str(manifest), "test_path": str(manifest)},
            "training": {"epochs": 1, "batch_size": 8}}


def test_a_manifest_line_added_after_compress_fails_the_job_in_the_worker(serve, tmp_path):
    """Compress checked the manifest; the worker, reading it later, checks again."""
    from PIL import Image

    manifest = _manifest_tree(tmp_path / "data")
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    Image.new("L", (8, 8), 99).save(secret)  # a real image: only the roots stop the read
    roots = [str(tmp_path / "data")]
    accepting = serve(data_roots=roots)  # accepts and queues, runs nothing
    queued = client(accepting).compress(manifest_spec(tmp_path, manifest))
    accepting.stop(grace_s=1)
    with manifest.open("a") as f:
        f.write(f"{secret},1\n")
    # A server that runs jobs, on the same state: it starts the job accepted above.
    done = client(serve(data_roots=roots, max_concurrent_jobs=1)).wait(queued.id,
                                                                       timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.FAILED and done.error_kind == "permission_denied"
    assert f"'{secret}' is outside the allowed data roots" in done.error
    assert "m.csv line 10" in done.error and "Traceback" not in done.error


def test_a_fifo_as_input_is_refused_at_compress_without_blocking(serve, tmp_path):
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "m.csv")
    server = serve(data_roots=[str(tmp_path / "data")])
    code, details = compress_code(server, manifest_spec(tmp_path, tmp_path / "data" / "m.csv"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # not DEADLINE_EXCEEDED: nothing blocked
    assert "data.path" in details and "is not a regular file (a FIFO)" in details
