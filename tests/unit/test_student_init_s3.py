"""student.init from object storage: a real S3 endpoint (moto on 127.0.0.1) through s3fs."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save

from compression.access import AccessDenied, InputAccess
from compression.errors import InvalidInput
from compression.models import build_model
from compression.models.init_weights import apply_init, read_init
from tests.s3server import SECRET, s3_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs")
    with s3_server("weights") as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    import s3fs

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3


def test_weights_are_read_from_s3_under_an_allowed_prefix(s3_env):
    trained = build_model("tiny_cnn", 1, 10, seed=4)
    data = save({k: v.contiguous() for k, v in trained.state_dict().items()})
    s3_env.put("weights", "students/tiny.safetensors", data)
    policy = InputAccess.of(["s3://weights/students/"])
    weights = read_init("s3://weights/students/tiny.safetensors", policy)
    assert weights.source == "s3://weights/students/tiny.safetensors"
    assert weights.sha256 == hashlib.sha256(data).hexdigest()
    student = build_model("tiny_cnn", 1, 3, seed=0)
    record = apply_init(student, weights, 3)
    assert record.replaced == ("fc.weight", "fc.bias")
    assert torch.equal(student.state_dict()["features.0.0.weight"],
                       trained.state_dict()["features.0.0.weight"])


def test_outside_the_prefix_and_missing_keys_are_refused_naming_the_uri(s3_env):
    with pytest.raises(AccessDenied, match="student.init s3://weights/other/w.safetensors"):
        read_init("s3://weights/other/w.safetensors", InputAccess.of(["s3://weights/students/"]))
    with pytest.raises(InvalidInput) as caught:
        read_init("s3://weights/students/missing.safetensors",
                  InputAccess.of(["s3://weights/"]))
    assert "s3://weights/students/missing.safetensors" in str(caught.value)
    assert SECRET not in str(caught.value)
