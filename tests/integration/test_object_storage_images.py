"""A whole job whose image folder lives in S3: `tpet run` against moto's S3 server on
127.0.0.1, streaming the images through DataLoader workers as users' jobs do."""

import json
import os
import subprocess

import pytest

from tests.integration.conftest import JOB_TIMEOUT_S, REPO, TPET
from tests.integration.test_object_storage import job_file
from tests.s3server import SECRET, s3_server
from tests.wds import bars_samples

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """Bucket 'data': a teacher and the bars as image folders, train/<class>/<key>.png."""
    pytest.importorskip("s3fs")
    from compression.models import build_model, save_weights

    teacher = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(build_model("tiny_cnn", 1, 4, 1.0).eval(), teacher)
    with s3_server("data") as server:
        server.put("data", "teachers/teacher.safetensors", teacher.read_bytes())
        for split, samples in (("train", bars_samples(240, 4, seed=0)),
                               ("test", bars_samples(80, 4, seed=1, start=240))):
            for key, fields in samples:
                server.put("data", f"bars/{split}/c{fields['cls'].decode()}/{key}.png",
                           fields["png"])
        yield server


def test_a_job_streams_its_image_folder_from_s3(s3, tmp_path):
    job = job_file(tmp_path, data={"source": "imagefolder", "path": "s3://data/bars/train/",
                                   "test_path": "s3://data/bars/test/", "in_memory": "never",
                                   "workers": 2},
                   export={"onnx": False, "int8": False, "tensorrt": "off"})
    ran = subprocess.run([*TPET, "run", job], cwd=REPO, capture_output=True, text=True,
                         timeout=JOB_TIMEOUT_S, env={**os.environ, **s3.env()})
    assert ran.returncode == 0, ran.stderr
    assert SECRET not in ran.stdout + ran.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "SUCCEEDED"
    data = report["data"]
    assert data["loading"] == "streaming"
    assert data["class_names"] == ["c0", "c1", "c2", "c3"]
    assert data["splits"]["test"]["size"] == 80
    assert data["splits"]["train"]["size"] + data["splits"]["holdout"]["size"] == 240
