"""A corpus of bad inputs through both doors a user has: `tpet run` and the Compress RPC.

Every bad spec is exit 2 from `tpet run` and INVALID_ARGUMENT from Compress, naming the field,
with no job created. Every bad data file or checkpoint is exit 2 from `tpet run` and a job that
ends FAILED as invalid input through the server, naming the file; never a traceback.
"""

from __future__ import annotations

import io
import math
import signal
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch
import yaml

from compression.errors import InvalidInput
from service.cli import EXIT_INVALID, main
from service.client import job_state
from service.states import JobState
from service.client import TpetClient
from service.config import ServerConfig
from service.server import start_server
from tests.integration.test_server import job, teacher  # noqa: F401  (fixtures)
from tests.unit.test_spec_ranges import NUMERIC, _nested
from tests.integration.conftest import JOB_TIMEOUT_S

pytestmark = pytest.mark.integration

# one hostile value per numeric field, the kind a typo or an attacker sends
_BAD = {float: (math.nan, math.inf, -1e308), int: (2**70, -(2**40))}
SPEC_CASES = [(f"{path}={value}", _nested(path, value), path)
              for path, kind in NUMERIC for value in _BAD[kind][:2]]
SPEC_CASES += [
    ("unknown mitigation", {"mitigation": {"name": "kd2"}}, "mitigation.name"),
    ("unknown param", {"mitigation": {"name": "group_dro", "params": {"b": 1}}},
     "mitigation.params.b"),
    ("unknown arch", {"student": {"arch": "resnet9"}}, "student.arch"),
    ("empty arch", {"student": {"arch": ""}}, "arch is empty"),
    ("unknown field", {"training": {"epoch": 3}}, "training.epoch"),
    ("wrong type", {"training": {"epochs": "many"}}, "training.epochs"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One server for the module; jobs may read anything under pytest's temporary folders."""
    server = start_server(ServerConfig(
        port=0, metrics_port=0, state_dir=str(tmp_path_factory.mktemp("state")), gpus=[],
        max_concurrent_jobs=2, data_roots=[str(tmp_path_factory.getbasetemp())]))
    try:
        yield TpetClient(f"127.0.0.1:{server.port}", retries=0)
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def keep_sigint():
    """``tpet run`` installs its Ctrl-C handler; give pytest its own back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def _tpet_run(capsys, tmp_path, spec: dict) -> tuple[int, str]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _names(message: str, field: str) -> bool:
    """Whether ``message`` names ``field`` as "data.channels ..." or "data: channels ..."."""
    return field in message or field in message.replace(": ", ".")


def _with_defaults(job, spec: dict) -> dict:
    base = yaml.safe_load(job().read_text())
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


@pytest.mark.parametrize("case,spec,named", SPEC_CASES, ids=[c for c, _, _ in SPEC_CASES])
def test_a_bad_spec_is_refused_by_both_doors_naming_the_field(case, spec, named, capsys,
                                                              tmp_path, job, client):  # noqa: F811
    full = _with_defaults(job, spec)
    code, err = _tpet_run(capsys, tmp_path, full)
    assert code == EXIT_INVALID and _names(err, named), err
    before = len(list(client.list_jobs()))
    with pytest.raises(InvalidInput) as refused:
        client.compress(full)
    assert _names(str(refused.value), named)
    assert len(list(client.list_jobs())) == before  # nothing was queued


def _truncated_npz(path):
    x = np.zeros((40, 8, 8), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=np.arange(40) % 4)
    path.write_bytes(buffer.getvalue()[:300])


def _lying_npz(path):
    """An .npz whose x header declares 10^12 bytes of pixels."""
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000, 1000, 1000), }"
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", npy)
        buffer = io.BytesIO()
        np.save(buffer, np.arange(4))
        z.writestr("y.npy", buffer.getvalue())


def _zero_pixels_npz(path):
    np.savez(path, x=np.zeros((40, 0, 0), np.uint8), y=np.arange(40) % 4)


def _truncated_safetensors(path):
    path.write_bytes(struct.pack("<Q", 1_000_000) + b'{"w": {"dtype": "F32"')


def _pickled_module(path):
    torch.save(torch.nn.Linear(64, 4), path)


def _torchscript(path):
    with warnings.catch_warnings():  # TorchScript is deprecated, and refused: that is the point
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(64, 4)), path)


FILE_CASES = {
    "truncated npz": ("data", "train.npz", _truncated_npz),
    "npz declaring 10^12 bytes": ("data", "train.npz", _lying_npz),
    "0x0-pixel images": ("data", "train.npz", _zero_pixels_npz),
    "truncated safetensors": ("teacher", "teacher.safetensors", _truncated_safetensors),
    "pickled nn.Module": ("teacher", "teacher.pt", _pickled_module),
    "TorchScript teacher": ("teacher", "teacher.pt2", _torchscript),
}


def _file_spec(job, tmp_path, case: str) -> tuple[dict, str]:
    field, name, write = FILE_CASES[case]
    path = tmp_path / "hostile" / name
    path.parent.mkdir(exist_ok=True)
    write(path)
    spec = yaml.safe_load(job(training={"epochs": 1}).read_text())
    if field == "data":
        spec["data"]["path"] = str(path)
    else:
        spec["teacher"] = {"path": str(path), **({"arch": "tiny_cnn"}
                                                 if name.endswith(".safetensors") else {})}
    return spec, str(path)


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_a_bad_file_is_a_clean_invalid_input_through_both_doors(case, capsys, tmp_path, job,
                                                                client):  # noqa: F811
    spec, path = _file_spec(job, tmp_path, case)
    code, err = _tpet_run(capsys, tmp_path, spec)
    assert code == EXIT_INVALID and path in err, err
    done = client.wait(client.compress(spec).id, timeout_s=JOB_TIMEOUT_S)
    assert job_state(done) is JobState.FAILED and done.error_kind == "invalid_input", done
    assert path in done.error and "Traceback" not in done.error
