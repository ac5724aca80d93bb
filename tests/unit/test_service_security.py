"""What a job may read (roots, '..', symlinks, sizes), tokens, and the security settings."""

import os
from pathlib import Path

import pytest

from compression.errors import InvalidInput
from compression.spec import parse_spec
from service.auth import BearerTokenInterceptor, token_matches
from service.config import ServerConfig, load_config
from service.errors import PermissionDenied, Unauthenticated
from service.security import (ClientTls, InputPolicy, channel_credentials, job_inputs,
                              worker_channel)


def npz_job(train, test="", teacher="", source="npz"):
    return parse_spec({"name": "j", "teacher": {"path": teacher or train},
                       "data": {"source": source, "path": train, "test_path": test or train}})


@pytest.fixture
def tree(tmp_path):
    """root/ (allowed) with a data file, outside/ (not allowed) with a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "train.npz").write_bytes(b"x" * 100)
    (outside / "secret.npz").write_bytes(b"s" * 10)
    return root, outside, InputPolicy.of([str(root)], max_bytes=1000)


def test_paths_under_a_root_pass_and_others_are_denied_by_name(tree):
    root, outside, policy = tree
    policy.check(npz_job(str(root / "train.npz")))
    policy.check(npz_job(str(root / "not-yet.npz")))  # missing: the worker says so later
    with pytest.raises(PermissionDenied) as err:
        policy.check(npz_job(str(root / "train.npz"), teacher=str(outside / "secret.npz")))
    message = str(err.value)
    assert f"teacher.path '{outside / 'secret.npz'}'" in message
    assert str(root) in message and "data_roots" in message


def test_dot_dot_is_refused_even_when_it_lands_inside(tree):
    root, _, policy = tree
    (root / "sub").mkdir()
    with pytest.raises(PermissionDenied, match=r"data.path .* contains '\.\.'"):
        policy.check(npz_job(str(root / "sub" / ".." / "train.npz")))


def test_a_symlink_out_of_the_roots_is_denied_with_its_target(tree):
    root, outside, policy = tree
    (root / "link.npz").symlink_to(outside / "secret.npz")
    with pytest.raises(PermissionDenied, match=f"resolves to {outside / 'secret.npz'}"):
        policy.check(npz_job(str(root / "train.npz"), test=str(root / "link.npz")))


def test_relative_paths_resolve_against_the_working_directory(tree, monkeypatch):
    root, outside, policy = tree
    monkeypatch.chdir(root)
    policy.check(npz_job("train.npz"))
    monkeypatch.chdir(outside)
    with pytest.raises(PermissionDenied, match="'train.npz' .*resolves to"):
        policy.check(npz_job("train.npz"))


def test_every_file_of_a_folder_is_checked_and_counted(tree):
    root, outside, policy = tree
    images = root / "images" / "cat"
    images.mkdir(parents=True)
    (images / "1.png").write_bytes(b"p" * 600)
    job = npz_job(str(root / "images"), source="imagefolder")
    policy.check(job)  # 600 bytes, plus the 100 of the teacher file
    (root / "images" / "loop").symlink_to(root / "images")  # a cycle must not hang the walk
    policy.check(job)
    (images / "2.png").write_bytes(b"p" * 600)
    with pytest.raises(InvalidInput, match=r"data.path .*images' holds more than 1000 bytes, "
                                           "the server's max_data_bytes"):
        policy.check(job)
    (images / "2.png").unlink()
    (images / "3.png").symlink_to(outside / "secret.npz")
    with pytest.raises(PermissionDenied, match="3.png"):
        policy.check(job)
    policy.check(job, deep=False)  # the folder itself is inside: the quick check passes


def test_manifest_entries_are_checked_and_counted(tree):
    root, outside, policy = tree
    (root / "a.png").write_bytes(b"a" * 500)
    manifest = root / "m.csv"
    manifest.write_text("path,label\na.png,0\n")
    job = npz_job(str(manifest), teacher=str(root / "train.npz"), source="manifest")
    policy.check(job)  # m.csv and a.png, 500+ bytes, twice (path and test_path) but each < 1000
    manifest.write_text(f"path,label\na.png,0\n{outside / 'secret.npz'},1\n")
    with pytest.raises(PermissionDenied, match=r"an image listed in data.path"):
        policy.check(job)
    jsonl = root / "m.jsonl"
    jsonl.write_text('{"path": "a.png", "label": 0}\n{"path": "a.png", "label": 1}\n')
    with pytest.raises(InvalidInput, match="holds more than"):
        policy.check(npz_job(str(jsonl), teacher=str(root / "train.npz"), source="manifest"))


def test_job_inputs_lists_only_what_the_source_reads():
    fmnist = parse_spec({"name": "j", "teacher": {"path": "t.pt2"},
                         "data": {"test_path": "ignored"}})
    assert job_inputs(fmnist) == [("data.path", "/usr/share/datasets/fashion-mnist"),
                                  ("teacher.path", "t.pt2")]
    assert [f for f, _ in job_inputs(npz_job("a", "b"))] == [
        "data.path", "data.test_path", "teacher.path"]


def test_default_roots_are_the_working_directory_and_the_datasets(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    policy = ServerConfig().input_policy()
    assert policy.roots == (tmp_path.resolve(), Path(os.path.realpath("/usr/share/datasets")))
    assert policy.max_bytes == 32 * 2**30


def test_tokens_compare_and_missing_or_wrong_ones_are_unauthenticated():
    assert token_matches("s3cret", "s3cret") and not token_matches("s3cre", "s3cret")
    auth = BearerTokenInterceptor("s3cret")
    assert auth._check({"authorization": "Bearer s3cret"}) is None
    assert auth._check({"authorization": "bearer s3cret"}) is None  # the scheme is caseless
    for metadata in ({}, {"authorization": "s3cret"}, {"authorization": "Bearer "}):
        assert isinstance(auth._check(metadata), Unauthenticated)
        assert "needs a token" in str(auth._check(metadata))
    wrong = auth._check({"authorization": "Bearer guess"})
    assert isinstance(wrong, Unauthenticated) and "not valid" in str(wrong)
    with pytest.raises(ValueError):
        BearerTokenInterceptor("")


def test_the_token_file_comes_from_config_or_environment(tmp_path, monkeypatch):
    (tmp_path / "t").write_text("  from-file\n")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.delenv("TPET_TOKEN_FILE", raising=False)
    assert ServerConfig().auth_token() == ""
    monkeypatch.setenv("TPET_TOKEN_FILE", str(tmp_path / "t"))
    assert ServerConfig().auth_token() == "from-file"
    monkeypatch.setenv("TPET_TOKEN_FILE", str(tmp_path / "empty"))
    with pytest.raises(InvalidInput, match="auth token file .*empty is empty"):
        ServerConfig().auth_token()
    monkeypatch.setenv("TPET_TOKEN_FILE", str(tmp_path / "nope"))
    with pytest.raises(InvalidInput, match="cannot read the auth token file .*nope"):
        ServerConfig().auth_token()


def test_security_settings_are_validated_together(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(InvalidInput) as err:
        load_config(tls_cert_file=str(tmp_path / "cert.pem"), data_roots=[],
                    max_data_bytes=0, metrics_port=-2, tls_client_ca_file=str(tmp_path / "ca"))
    problems = err.value.problems
    assert len(problems) == 5, problems
    assert "tls_cert_file and tls_key_file go together; set both or neither" in problems
    assert any(p.startswith("data_roots is []") for p in problems)
    assert any(p.startswith("tls_client_ca_file") and "does not exist" in p for p in problems)
    assert load_config(data_roots=["/data"], metrics_port=-1).data_roots == ["/data"]


def test_client_tls_needs_a_key_with_its_certificate(tmp_path, monkeypatch):
    with pytest.raises(InvalidInput, match="both a client certificate and its key"):
        channel_credentials(ClientTls(cert_file="c.pem"))
    with pytest.raises(InvalidInput, match="cannot read the TLS CA file .*nope.pem"):
        channel_credentials(ClientTls(ca_file=str(tmp_path / "nope.pem")))
    for key in ("TPET_TLS_CA", "TPET_TLS_CERT", "TPET_TLS_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert ClientTls.from_env() is None
    monkeypatch.setenv("TPET_TLS_CA", "ca.pem")
    assert ClientTls.from_env() == ClientTls("ca.pem", "", "")


def test_worker_tls_files_that_cannot_be_read_are_named_with_their_variables(tmp_path,
                                                                            monkeypatch):
    for key in ("CA", "CERT", "KEY", "SERVER_NAME"):
        monkeypatch.delenv(f"TPET_WORKER_TLS_{key}", raising=False)
    monkeypatch.setenv("TPET_WORKER_TLS_CA", str(tmp_path / "ca.crt"))
    with pytest.raises(InvalidInput) as err:
        worker_channel("tpet-api:50051")
    (problem,) = err.value.problems
    assert problem.startswith(f"cannot read the TLS CA file {tmp_path}/ca.crt: No such file")
    assert "the Secret named by kubernetes.tls_secret holds ca.crt" in problem
    assert f"TPET_WORKER_TLS_CA={tmp_path}/ca.crt" in err.value.context
    (tmp_path / "ca.crt").write_text("")
    with pytest.raises(InvalidInput, match="the TLS CA file .*ca.crt is empty"):
        worker_channel("tpet-api:50051")
    monkeypatch.delenv("TPET_WORKER_TLS_CA")
    monkeypatch.setenv("TPET_WORKER_TLS_CERT", str(tmp_path / "tls.crt"))
    with pytest.raises(InvalidInput, match="both a client certificate and its key"):
        worker_channel("tpet-api:50051")


def test_the_manager_checks_inputs_at_submission_and_again_at_launch(tree, tmp_path):
    from service.manager import JobManager, ManagerConfig
    from service.states import JobState
    from service.store import JobStore
    from tests.unit.test_service_metrics import Launcher

    root, outside, policy = tree
    store = JobStore(tmp_path / "store.db")
    launcher = Launcher()
    manager = JobManager(store, launcher, ManagerConfig(state_dir=tmp_path, inputs=policy))
    manager.recover("127.0.0.1:1")
    spec = {"name": "j", "teacher": {"path": str(root / "t.pt2")},
            "data": {"source": "npz", "path": str(root / "train.npz"),
                     "test_path": str(root / "train.npz")}}
    with pytest.raises(PermissionDenied, match="outside the server's data roots"):
        manager.submit({**spec, "teacher": {"path": str(outside / "secret.npz")}})
    assert manager.list() == ([], "")
    job_id = manager.submit(spec).id
    (root / "t.pt2").symlink_to(outside / "secret.npz")  # swapped in while it waited
    manager.tick()
    job = manager.get(job_id)
    assert (job.state, job.error_kind) == (JobState.FAILED, "permission_denied")
    assert "teacher.path" in job.error and launcher.started == []
    store.close()
