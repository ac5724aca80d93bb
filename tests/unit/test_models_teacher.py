"""Teacher loading refuses what it cannot use safely or correctly, saying why."""

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from compression import access
from compression.errors import InvalidInput
from compression.models import build_model, load_teacher, save_exported, save_weights
from compression.spec import TeacherSpec

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*torch.jit.trace:FutureWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
]

SHAPE = (1, 8, 8)


def _write_marker(path: str) -> None:
    Path(path).write_text("unpickled")


class Booby(nn.Module):
    """A module whose unpickling writes a file: proof of code running on load."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.fc = nn.Linear(4, 3)

    def __reduce__(self):
        return _write_marker, (self.marker,)


def _load(path, num_classes=3, shape=SHAPE, **spec):
    return load_teacher(TeacherSpec(path=str(path), **spec), shape, num_classes)


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("name,fmt", [("teacher.pt", "auto"), ("teacher.pth", "auto"),
                                      ("teacher.pt", "torchscript"), ("teacher.pt", "weights")])
def test_pickled_module_is_refused_without_running_its_code(tmp_path, name, fmt, zip_format):
    marker = tmp_path / "marker"
    path = tmp_path / name
    torch.save(Booby(str(marker)), path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(InvalidInput) as err:
        _load(path, format=fmt, arch="tiny_cnn")
    msg = str(err.value)
    assert str(path) in msg and "pickled Python code" in msg and "never loaded" in msg
    assert "torch.export.save(" in msg and "safetensors.torch.save_file(" in msg
    assert "_write_marker" in msg  # names what the pickle wanted to call
    assert not marker.exists()
    # the payload is real: an unrestricted load runs it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "unpickled"


def _tampered_pt2(tmp_path: Path, member: str, data: bytes) -> tuple[Path, Path]:
    """A good .pt2 and a copy with ``member`` (path under the top folder) set to ``data``."""
    good = save_exported(build_model("tiny_cnn", 1, 3), SHAPE, tmp_path / "good.pt2")
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        top = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            if info.filename != f"{top}/{member}":
                dst.writestr(info, src.read(info.filename))
        dst.writestr(f"{top}/{member}", data)
    return good, bad


def test_export_archive_with_pickled_code_inside_is_refused(tmp_path):
    # torch.export.load would unpickle these sample inputs unrestricted after a failed
    # weights-only try, running the payload
    marker = tmp_path / "marker"
    payload = io.BytesIO()
    torch.save(Booby(str(marker)), payload)
    good, bad = _tampered_pt2(tmp_path, "data/sample_inputs/model.pt", payload.getvalue())
    with pytest.raises(InvalidInput) as err:
        _load(bad)
    msg = str(err.value)
    assert f"{bad} embeds code or pickled Python objects in data/sample_inputs/model.pt" in msg
    assert "never loaded" in msg and "torch.export.save(" in msg
    assert not marker.exists()
    _load(good)  # the untouched archive passes the same check


def test_export_archive_with_compiled_code_is_refused(tmp_path):
    _, bad = _tampered_pt2(tmp_path, "data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(InvalidInput, match="embeds code .* in data/aotinductor"):
        _load(bad)


def test_plain_pickle_of_a_module_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps(nn.Linear(2, 2)))
    with pytest.raises(InvalidInput, match="pickled Python code"):
        _load(path, arch="tiny_cnn")


def test_wrong_class_count_names_expected_and_found(tmp_path):
    path = save_exported(build_model("tiny_cnn", 1, 4), SHAPE, tmp_path / "t.pt2")
    with pytest.raises(InvalidInput) as err:
        _load(path, num_classes=3)
    msg = str(err.value)
    assert "cannot load teacher checkpoint" in msg and str(path) in msg
    assert "outputs [2, 4]" in msg and "expected logits [2, 3]" in msg


def test_wrong_input_shape_names_the_file(tmp_path):
    path = save_exported(build_model("tiny_cnn", 1, 3), SHAPE, tmp_path / "t.pt2")
    with pytest.raises(InvalidInput) as err:
        _load(path, shape=(3, 8, 8))
    assert str(path) in str(err.value) and "[2, 3, 8, 8]" in str(err.value)


def test_non_tensor_output_is_refused(tmp_path):
    class Pair(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x

    path = tmp_path / "pair.pt"
    torch.jit.trace(Pair(), torch.rand(2, 3, 8, 8), strict=False).save(str(path))
    with access.granted(access.InputAccess(allow_torchscript=True)), \
            pytest.raises(InvalidInput, match="returned a tuple, not a logits tensor"):
        _load(path, shape=(3, 8, 8))


def test_missing_keys_and_the_fitting_arch_are_listed(tmp_path):
    path = save_weights(build_model("resnet8", 1, 3, width=0.5), tmp_path / "t.safetensors")
    with pytest.raises(InvalidInput) as err:
        _load(path, arch="resnet14")
    msg = str(err.value)
    assert f"{path} does not fit arch resnet14 at width 1" in msg
    assert "missing keys, e.g. ['blocks.3.conv1.0.weight'" in msg
    assert "it looks like arch resnet8, width 0.5" in msg


def test_wrong_width_lists_shape_mismatches(tmp_path):
    path = save_weights(build_model("tiny_cnn", 1, 3), tmp_path / "t.safetensors")
    with pytest.raises(InvalidInput) as err:
        _load(path, arch="tiny_cnn", width=2.0)
    msg = str(err.value)
    assert "features.0.0.weight: file [16, 1, 3, 3] vs model [32, 1, 3, 3]" in msg
    assert "arch tiny_cnn, width 1" in msg


def test_unexpected_keys_are_listed(tmp_path):
    state = build_model("tiny_cnn", 1, 3).state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "t.pth")
    with pytest.raises(InvalidInput, match=r"1 unexpected keys, e.g. \['extra.weight'\]"):
        _load(tmp_path / "t.pth", arch="tiny_cnn")


def test_tv_weights_trained_with_the_other_stem_still_load(tmp_path):
    torch.manual_seed(0)
    model = build_model("tv_resnet18", 3, 3, image_size=224).eval()  # 7x7 stride-2 stem
    path = save_weights(model, tmp_path / "big.safetensors")
    teacher = _load(path, arch="tv_resnet18", shape=(3, 32, 32))
    assert teacher.module.conv1.kernel_size == (7, 7)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make,fmt,fragment", [
    (lambda p: None, "auto", "does not exist"),
    (lambda p: p.write_bytes(b"not a model"), "onnx", "is not a loadable ONNX model"),
    (lambda p: p.write_bytes(b"not a model"), "auto", "cannot tell the format"),
    (lambda p: p.write_bytes(b"not a model"), "weights", "not a readable torch weights file"),
    (lambda p: p.write_bytes(b"not a model"), "export", "is not a readable torch.export archive"),
])
def test_unreadable_files(tmp_path, make, fmt, fragment):
    path = tmp_path / "teacher.bin"
    make(path)
    with pytest.raises(InvalidInput, match="cannot load teacher checkpoint") as err:
        _load(path, format=fmt, arch="tiny_cnn")
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_declared_format_contradicted_by_the_file(tmp_path):
    path = save_exported(build_model("tiny_cnn", 1, 3), SHAPE, tmp_path / "t.pt2")
    with pytest.raises(InvalidInput, match="is a torch.export program .* set teacher.format "
                                           "to export"):
        _load(path, format="torchscript")
    torch.save(build_model("tiny_cnn", 1, 3).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InvalidInput, match="set teacher.format to weights and teacher.arch"):
        _load(tmp_path / "sd.pt", format="torchscript")


def test_state_dict_without_arch_asks_for_it(tmp_path):
    torch.save(build_model("tiny_cnn", 1, 3).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InvalidInput, match="holds weights only; set teacher.arch"):
        _load(tmp_path / "sd.pt")


def test_onnx_input_is_checked_against_the_data(tmp_path):
    path = tmp_path / "t.onnx"
    torch.onnx.export(build_model("tiny_cnn", 1, 3).eval(), (torch.rand(1, *SHAPE),), str(path),
                      dynamo=False, input_names=["pixels"])
    with pytest.raises(InvalidInput) as err:
        _load(path, shape=(3, 8, 8))
    assert "input 'pixels' has shape [1, 1, 8, 8]: C is 1 but the data has 3" in str(err.value)


def test_teacher_output_is_detached_float32_on_the_input_device(tmp_path):
    model = build_model("tiny_cnn", 1, 3)
    teacher = _load(save_exported(model, SHAPE, tmp_path / "t.pt2"))
    x = torch.rand(3, *SHAPE, dtype=torch.float64, requires_grad=True)
    out = teacher(x)
    assert out.dtype == torch.float32 and out.device == x.device and not out.requires_grad
    # usable in a loss whose gradient flows to a student
    student = torch.zeros(3, 3, requires_grad=True)
    (student * out).sum().backward()
    torch.testing.assert_close(student.grad, out)
