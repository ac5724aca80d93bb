"""Job.result through a real server on 127.0.0.1: what a pipeline reads without parsing JSON
agrees with the finished job's report and with the files on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from compression.models import build_model, save_exported
from compression.report import JobReport
from service import cli
from service._proto import compress_pb2
from service.client import TpetClient
from service.config import ServerConfig
from service.errors import PermissionDenied
from service.server import start_server
from tests.integration.conftest import _bars

pytestmark = pytest.mark.integration

_VERDICTS = {"PASS": compress_pb2.VERDICT_PASS, "FAIL": compress_pb2.VERDICT_FAIL,
             "INSUFFICIENT_EVIDENCE": compress_pb2.VERDICT_INSUFFICIENT_EVIDENCE,
             "NOT JUDGED": compress_pb2.VERDICT_NOT_JUDGED}


def _job(root: Path, **guardrails) -> dict:
    """One epoch on the bars data, starting from pretrained weights (10 classes; the data
    has 4, so the head is replaced)."""
    return {"name": "result", "teacher": {"path": str(root / "teacher.pt2")},
            "data": {"source": "npz", "path": str(root / "train.npz"),
                     "test_path": str(root / "test.npz"), "holdout_fraction": 0.2,
                     "max_train": 200},
            "student": {"arch": "tiny_cnn", "init": str(root / "pretrained.safetensors")},
            "training": {"epochs": 1, "batch_size": 64, "lr": 0.05},
            "guardrails": {"min_samples": 10, **guardrails},
            "export": {"int8": False, "tensorrt": "off"}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server whose jobs may read ``root`` only, with a shipped and a rejected job done:
    (server, client, root, shipped job, rejected job)."""
    root = tmp_path_factory.mktemp("result")
    rng = np.random.default_rng(0)
    for name, n in (("train", 800), ("test", 200)):
        x, y = _bars(n, 4, rng)
        np.savez(root / f"{name}.npz", x=x, y=y, class_names=np.array(list("abcd")))
    save_exported(build_model("tiny_cnn", 1, 4, seed=0).eval(), (1, 8, 8), root / "teacher.pt2")
    save_file(build_model("tiny_cnn", 1, 10, seed=1).state_dict(),
              str(root / "pretrained.safetensors"))
    server = start_server(ServerConfig(
        port=0, state_dir=str(root / "state"), gpus=[], metrics_port=0, data_roots=[str(root)],
        max_concurrent_jobs=2))
    client = TpetClient(f"127.0.0.1:{server.port}", retries=0)
    ok = client.compress(_job(root, min_accuracy=0.0))
    rejected = client.compress(_job(root, min_accuracy=0.9))  # one epoch: a class far below
    done = client.wait(ok.id, timeout_s=300), client.wait(rejected.id, timeout_s=300)
    yield server, client, root, *done
    server.stop()


def _agrees(job: compress_pb2.Job) -> JobReport:
    report, result = JobReport.from_json(job.report_json), job.result
    assert result.status == job.state == compress_pb2.JobState.Value(report.status)
    assert result.deployable == report.deployable
    assert [(s.stage, s.verdict, s.passed) for s in result.stages] == [
        (v.stage, _VERDICTS[v.verdict if v.checks else "NOT JUDGED"], v.passed)
        for v in report.stages]
    for stage, verdict in zip(result.stages, report.stages):
        assert [g.name for g in stage.failing_subgroups] == list(verdict.failing_subgroups)
        groups = {g.name: g for g in verdict.groups}
        for g in stage.failing_subgroups:
            assert g.samples == groups[g.name].n and g.accuracy == groups[g.name].accuracy
    return report


def test_a_shipped_job_names_its_artifact_as_the_report_and_disk_do(served):
    *_, ok, _ = served
    report = _agrees(ok)
    shipped = ok.result.shipped
    assert ok.result.status == compress_pb2.SUCCEEDED and ok.result.deployable
    assert (shipped.stage, shipped.file) == (report.shipped,
                                             report.exports[report.shipped].path)
    assert Path(shipped.path) == Path(ok.output_dir) / shipped.file
    on_disk = Path(shipped.path).read_bytes()
    assert shipped.sha256 == hashlib.sha256(on_disk).hexdigest()
    assert shipped.sha256 == report.files[shipped.file].sha256
    assert shipped.bytes == len(on_disk)
    contract = shipped.input_contract
    assert (contract.dtype, list(contract.shape)) == ("float32", [1, 8, 8])
    assert report.student_init.replaced == ("fc.weight", "fc.bias")


def test_a_rejected_job_names_the_blocking_subgroups_and_rules(served):
    *_, rejected = served
    _agrees(rejected)
    result = rejected.result
    assert result.status == compress_pb2.REJECTED and not result.deployable
    assert not result.HasField("shipped")
    blocked = result.stages[0]
    assert blocked.verdict == compress_pb2.VERDICT_FAIL and blocked.failing_subgroups
    assert all("min_accuracy" in g.rules for g in blocked.failing_subgroups)
    assert len(blocked.reasons) >= len(blocked.failing_subgroups)


def test_list_jobs_leaves_the_result_to_get_job(served):
    _, client, _, ok, _ = served
    listed = {j.id: j for j in client.list_jobs()}
    assert not listed[ok.id].HasField("result") and client.get_job(ok.id).HasField("result")


def test_tpet_report_prints_the_result(served, capsys):
    server, _, _, ok, rejected = served
    address = f"127.0.0.1:{server.port}"
    capsys.readouterr()
    assert cli.main(["report", ok.id, "--server", address]) == 0
    shown = capsys.readouterr().out
    assert "result: SUCCEEDED, deployable" in shown
    assert f"ships: {ok.result.shipped.stage} {ok.result.shipped.file} (sha256 " in shown
    assert "input: float32 [batch, 1, 8, 8] NCHW gray, values in [0, 1]" in shown
    assert cli.main(["report", rejected.id, "--server", address]) == 3
    shown = capsys.readouterr().out
    assert "result: REJECTED, not deployable" in shown and "student: FAIL (blocked by " in shown


def test_student_init_outside_the_data_roots_is_refused_at_compress(served, tmp_path):
    _, client, root, *_ = served
    outside = tmp_path / "w.safetensors"
    save_file(build_model("tiny_cnn", 1, 4).state_dict(), str(outside))
    job = _job(root)
    job["student"]["init"] = str(outside)
    with pytest.raises(PermissionDenied, match="student.init"):
        client.compress(job)
