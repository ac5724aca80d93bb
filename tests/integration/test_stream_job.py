"""A whole job (`tpet run`) on WebDataset shards, streamed and held in memory: the report
says which path ran, and both train, evaluate and export the same student."""

import json
import subprocess

import pytest
import yaml

from tests.integration.conftest import REPO, TPET
from tests.wds import bars_samples, shard

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from compression.models import build_model, save_weights

    root = tmp_path_factory.mktemp("shards")
    save_weights(build_model("tiny_cnn", 1, 4, 1.0).eval(), root / "teacher.safetensors")
    train, test = bars_samples(800, 4, seed=0), bars_samples(200, 4, seed=1, start=800)
    (root / "train-0.tar").write_bytes(shard(train[:400]))
    (root / "train-1.tar").write_bytes(shard(train[400:]))
    (root / "test-0.tar").write_bytes(shard(test))
    return root


def run_job(data, out, in_memory: str) -> dict:
    job = {"name": "bars", "output_dir": str(out),
           "teacher": {"path": str(data / "teacher.safetensors"), "arch": "tiny_cnn"},
           "data": {"source": "webdataset", "path": str(data / "train-{0..1}.tar"),
                    "test_path": str(data / "test-0.tar"), "holdout_fraction": 0.2,
                    "in_memory": in_memory, "workers": 2},
           "student": {"arch": "tiny_cnn"},
           "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu",
                        "teacher_cache_ram_mib": 0},  # the logits spill to a file
           "mitigation": {"name": "kd", "alpha": 0.5},
           "export": {"onnx": True, "int8": False, "tensorrt": "off"}}
    path = out.parent / f"job-{in_memory}.yaml"
    path.write_text(yaml.safe_dump(job))
    ran = subprocess.run([*TPET, "run", str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def test_a_streamed_job_matches_the_in_memory_one(data, tmp_path):
    streamed = run_job(data, tmp_path / "streamed", "never")
    held = run_job(data, tmp_path / "held", "always")
    assert streamed["data"]["loading"] == "streaming" and held["data"]["loading"] == "in_memory"
    assert streamed["status"] == held["status"] == "SUCCEEDED"
    assert streamed["data"]["splits"] == held["data"]["splits"]
    assert streamed["data"]["splits"]["test"]["size"] == 200
    assert streamed["training"]["final_loss"] == held["training"]["final_loss"]
    for name in ("teacher", "student", "onnx"):
        a, b = streamed["evaluations"][name], held["evaluations"][name]
        assert a["overall"] == b["overall"] and a["groups"] == b["groups"], name
