"""Server configuration: a YAML file, flags on top, every problem listed; job slots."""

import pytest
import yaml

from compression.errors import InvalidInput
from service.config import ServerConfig, load_config, resolve_slots


def test_defaults_file_and_overrides(tmp_path):
    assert load_config() == ServerConfig()
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({"port": 6000, "max_attempts": 3, "state_dir": "/s"}))
    config = load_config(path, port=0, state_dir=None)
    assert (config.port, config.max_attempts, config.state_dir) == (0, 3, "/s")


def test_every_problem_is_listed(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({"port": 70000, "max_queued": 0, "gpus": "all",
                                    "auth_token_file": str(tmp_path / "none")}))
    with pytest.raises(InvalidInput) as err:
        load_config(path)
    assert len(err.value.problems) == 4
    assert "port is 70000; it must be in [0, 65535]" in err.value.problems
    assert str(path) in err.value.context
    path.write_text(yaml.safe_dump({"prot": 1}))
    with pytest.raises(InvalidInput, match="prot: unknown field; known: .*port"):
        load_config(path)


def test_settings_are_typed_ranged_and_finite_like_a_job_spec(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("cancel_grace_s: .nan\nrpc_threads: many\nlauncher: slurm\n"
                    "maxQueued: 5\nmax_spec_bytes: 4000000\n")
    with pytest.raises(InvalidInput) as err:
        load_config(path)
    assert err.value.problems == [
        "cancel_grace_s: nan is not a finite number",
        "rpc_threads: expected int, got 'many'",
        "launcher: 'slurm' is not one of local, kubernetes",
        "max_spec_bytes is 4000000; it must be in [1, 3145728]"]


def test_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read server config .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_slots_one_per_gpu_or_cpu(monkeypatch):
    assert resolve_slots(ServerConfig(gpus=[])) == ("cpu0",)
    assert resolve_slots(ServerConfig(gpus=[], max_concurrent_jobs=2)) == ("cpu0", "cpu1")
    assert resolve_slots(ServerConfig(gpus=[], max_concurrent_jobs=0)) == ()
    assert resolve_slots(ServerConfig(gpus=[2, 3])) == ("2", "3")
    assert resolve_slots(ServerConfig(gpus=[2, 3], max_concurrent_jobs=1)) == ("2",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert resolve_slots(ServerConfig()) == ("0", "1", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resolve_slots(ServerConfig()) == ("cpu0",)


def test_auth_token_is_read_from_its_file(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    assert load_config(auth_token_file=str(tmp_path / "token")).auth_token() == "s3cret"


def test_kubernetes_workers_need_a_tls_secret_when_the_server_speaks_tls(tmp_path):
    pytest.importorskip("kubernetes", reason="the kubernetes block needs the client")
    for name in ("server.pem", "server.key", "clients.pem"):
        (tmp_path / name).write_text("x")
    block = {"image": "w:1", "manager_target": "tpet-api:50051"}
    tls = {"launcher": "kubernetes", "tls_cert_file": str(tmp_path / "server.pem"),
           "tls_key_file": str(tmp_path / "server.key")}
    with pytest.raises(InvalidInput) as err:
        load_config(**tls, kubernetes=block)
    (problem,) = err.value.problems
    assert problem.startswith("kubernetes.tls_secret: required with tls_cert_file")
    assert "holding ca.crt" in problem and "tls.crt" not in problem
    with pytest.raises(InvalidInput) as err:
        load_config(**tls, kubernetes=block, tls_client_ca_file=str(tmp_path / "clients.pem"))
    assert "for mutual TLS (tls_client_ca_file) tls.crt and tls.key" in err.value.problems[0]
    secret = {**block, "tls_secret": "tpet-worker-tls"}
    assert load_config(**tls, kubernetes=secret).kubernetes["tls_secret"] == "tpet-worker-tls"
    # Without TLS on the server, or with local workers (loopback), nothing more is needed.
    assert load_config(launcher="kubernetes", kubernetes=block).tls_cert_file == ""
    assert load_config(**{**tls, "launcher": "local"}).launcher == "local"
