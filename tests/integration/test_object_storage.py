"""Jobs that read their teacher and WebDataset shards from S3 and upload their bundle there:
`tpet run` against moto's S3 server on 127.0.0.1, reached as users reach S3 (AWS_ENDPOINT_URL
and credentials in the environment), and Compress refusing URIs outside the allowed prefixes.

The whole job runs in a `tpet run` process; the failing ones stop while loading, so they run
the same command in this process (``cli.main``), which saves a torch import each."""

import json
import os
import signal
import subprocess

import grpc
import pytest
import yaml

from service import cli
from service.config import ServerConfig
from service.server import start_server
from tests.integration.conftest import JOB_TIMEOUT_S, REPO, TPET
from tests.integration.test_security import compress_code
from tests.s3server import SECRET, s3_server
from tests.wds import bars_samples, shard

pytestmark = pytest.mark.integration

TRAIN = "s3://data/bars/train-{000..001}.tar"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """Bucket 'data' with a teacher and bars shards (train in two, test in one); bucket
    'bundles' for the outputs."""
    pytest.importorskip("s3fs")
    from compression.models import build_model, save_weights

    teacher = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(build_model("tiny_cnn", 1, 4, 1.0).eval(), teacher)
    train, test = bars_samples(800, 4, seed=0), bars_samples(200, 4, seed=1, start=800)
    with s3_server("data", "bundles") as server:
        server.put("data", "teachers/teacher.safetensors", teacher.read_bytes())
        server.put("data", "bars/train-000.tar", shard(train[:400]))
        server.put("data", "bars/train-001.tar", shard(train[400:]))
        server.put("data", "bars/test-000.tar", shard(test))
        yield server


def job_file(tmp_path, **overrides) -> str:
    job = {"name": "bars", "output_dir": str(tmp_path / "out"),
           "teacher": {"path": "s3://data/teachers/teacher.safetensors", "arch": "tiny_cnn"},
           "data": {"source": "webdataset", "path": TRAIN,
                    "test_path": "s3://data/bars/test-000.tar", "holdout_fraction": 0.2},
           "student": {"arch": "tiny_cnn"},
           "training": {"epochs": 1, "batch_size": 32, "lr": 0.05},
           "mitigation": {"name": "kd", "alpha": 0.5},
           "export": {"onnx": True, "int8": False, "tensorrt": "off"}}
    for key, value in overrides.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def tpet_run(s3, job: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TPET, "run", job], cwd=REPO, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S, env={**os.environ, **s3.env()})


@pytest.fixture
def tpet_here(s3, monkeypatch, capsys):
    """`tpet run JOB` in this process, with the S3 environment; returns (code, stdout+err)."""
    import s3fs

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    handler = signal.getsignal(signal.SIGINT)  # the CLI installs its own for Ctrl-C

    def run(job: str, **env) -> tuple[int, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # clients made with other credentials
        code = cli.main(["run", job])
        out = capsys.readouterr()
        return code, out.out + out.err

    yield run
    signal.signal(signal.SIGINT, handler)
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_job_reads_from_s3_and_uploads_its_bundle_report_last(s3, tmp_path):
    s3.put("bundles", "runs/bars/report.json", b'{"status": "stale"}')  # an earlier run's
    ran = tpet_run(s3, job_file(tmp_path, output_uri="s3://bundles/runs/bars"))
    assert ran.returncode == 0, ran.stderr
    assert "==> upload" in ran.stderr and SECRET not in ran.stdout + ran.stderr

    local = (tmp_path / "out" / "report.json").read_bytes()
    assert s3.get("bundles", "runs/bars/report.json") == local  # what the server stores too
    report = json.loads(local)
    assert report["status"] == "SUCCEEDED"
    assert report["data"]["splits"]["test"]["size"] == 200
    assert report["teacher"]["sha256"]  # the teacher was loaded, from the bucket
    uploads = report["uploads"]
    assert uploads["uri"] == "s3://bundles/runs/bars"
    assert uploads["marker"] == "s3://bundles/runs/bars/report.json"
    assert set(uploads["artifacts"]) == set(report["files"])
    assert {"student.pt2", "model.onnx", "model_card.md"} <= set(uploads["artifacts"])
    for name, record in uploads["artifacts"].items():
        assert record["uri"] == f"s3://bundles/runs/bars/{name}"
        assert record["sha256"] == s3.sha256("bundles", f"runs/bars/{name}")
        assert record["sha256"] == report["files"][name]["sha256"]
    assert s3.keys("bundles", "runs/bars/") == sorted(
        [f"runs/bars/{n}" for n in uploads["artifacts"]] + ["runs/bars/report.json"])


@pytest.mark.parametrize("case", ["missing bucket", "missing key", "denied credentials"])
def test_storage_errors_exit_2_naming_the_uri(s3, tpet_here, tmp_path, case):
    quick = {"export": {"onnx": False, "int8": False}}
    if case == "missing bucket":
        job = job_file(tmp_path, data={"path": "s3://no-such-bucket/train-{000..001}.tar"},
                       **quick)
        needles = ["s3://no-such-bucket/train-000.tar", "bucket 'no-such-bucket' does not exist"]
    elif case == "missing key":
        job = job_file(tmp_path, teacher={"path": "s3://data/teachers/gone.pt2"}, **quick)
        needles = ["teacher.path s3://data/teachers/gone.pt2 does not exist"]  # after the data
    else:
        job = job_file(tmp_path, **quick)
        needles = ["s3://data/bars/train-000.tar", "access denied"]
    if case == "denied credentials":
        with s3.iam_enforced():
            code, said = tpet_here(job, AWS_ACCESS_KEY_ID="AKIANOTKNOWNTOIAM000")
    else:
        code, said = tpet_here(job)
    assert code == 2, said
    for needle in needles:
        assert needle in said
    assert "Traceback" not in said and SECRET not in said and "==> distill" not in said


def test_compress_refuses_uris_outside_the_allowed_prefixes(tmp_path):
    server = start_server(ServerConfig(
        port=0, state_dir=str(tmp_path / "state"), gpus=[], metrics_port=-1,
        max_concurrent_jobs=0,
        data_roots=[str(tmp_path), "s3://data/bars/", "s3://data/teachers/", "s3://bundles/runs"]))
    try:
        spec = yaml.safe_load(open(job_file(tmp_path, output_uri="s3://bundles/runs/bars")))
        assert compress_code(server, spec) == (grpc.StatusCode.OK, "")

        def refused(section: str, value: dict) -> tuple[grpc.StatusCode, str]:
            changed = {**spec, section: {**spec[section], **value}} if value else spec
            return compress_code(server, changed)

        code, details = refused("data", {"test_path": "s3://data/other/test.tar"})
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "data.test_path s3://data/other/test.tar is outside" in details
        code, details = refused("data", {"path": "s3://data/bars/{a,../b}/x.tar"})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'..' segment" in details
        code, details = compress_code(server, {**spec, "output_uri": "s3://bundles/runsx/b"})
        assert code == grpc.StatusCode.PERMISSION_DENIED and "output_uri" in details
        code, details = refused("teacher", {"path": "s3://AKIA:hunter2@data/teachers/t.pt2"})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "carries credentials" in details
        assert "hunter2" not in details
        code, details = refused("data", {"source": "fashion-mnist", "test_path": ""})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "reads local paths only" in details
    finally:
        server.stop(grace_s=1)
