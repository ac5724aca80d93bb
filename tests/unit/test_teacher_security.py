"""Hostile teacher files are refused before anything in them runs or opens a file.

Each test builds the hostile file, checks that loading it is an InvalidInput saying why, and
that its payload left no trace (the marker file it would write does not exist). Where it is
cheap, the test also shows the payload is real: torch's own loader, unguarded, runs it.
"""

import io
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compression import access
from compression.errors import InvalidInput
from compression.models import build_model, load_teacher, save_exported, save_weights
from compression.spec import TeacherSpec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning")

SHAPE = (1, 8, 8)
TORCHSCRIPT_OK = access.InputAccess(allow_torchscript=True)


def _load(path, num_classes=3, shape=SHAPE, **spec):
    return load_teacher(TeacherSpec(path=str(path), **spec), shape, num_classes)


def _write_marker(path: str) -> None:
    Path(path).write_text("ran")


class Payload:
    """Unpickling this writes ``marker``: proof that a pickle was loaded unrestricted."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _write_marker, (self.marker,)


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_exported(build_model("tiny_cnn", 1, 3), SHAPE,
                         tmp_path_factory.mktemp("good") / "good.pt2")


def _rewrite(src: Path, dst: Path, change=None, extra=()) -> Path:
    """A copy of the zip ``src`` with ``change(name, data) -> data`` applied to each entry
    (names without the top folder) and ``extra`` (name, data) entries appended."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        top = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            name = info.filename.split("/", 1)[1]
            data = zin.read(info)
            zout.writestr(info.filename, change(name, data) if change else data)
        for name, data in extra:
            zout.writestr(f"{top}/{name}", data)
    return dst


def _program_edit(src: Path, dst: Path, edit) -> Path:
    def change(name, data):
        if name != "models/model.json":
            return data
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()
    return _rewrite(src, dst, change)


# --- torch.export archives -------------------------------------------------------------

@pytest.mark.parametrize("payload_first", [True, False])
def test_duplicate_entries_are_refused_and_never_unpickled(tmp_path, good_pt2, payload_first):
    marker = tmp_path / "marker"
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    member = "data/sample_inputs/model.pt"
    with zipfile.ZipFile(good_pt2) as z:
        top = z.namelist()[0].split("/")[0]
        harmless = z.read(f"{top}/{member}")
    bad = tmp_path / "dup.pt2"
    with pytest.warns(UserWarning, match="Duplicate name"):
        # torch's reader takes the first copy, Python's zipfile the last
        copies = [payload.getvalue(), harmless] if payload_first else [harmless,
                                                                       payload.getvalue()]
        _rewrite(good_pt2, bad, lambda n, d: copies[0] if n == member else d,
                 extra=[(member, copies[1])])
    with pytest.raises(InvalidInput, match=f"entry '{top}/{member}' occurs more than once"):
        _load(bad)
    assert not marker.exists()
    if payload_first:  # the payload is real: torch.export.load runs it (then fails on
        with pytest.raises(Exception):  # the None it returns)
            torch.export.load(str(bad))
        assert marker.read_text() == "ran"


def test_symbolic_shape_code_is_refused_before_sympy_evaluates_it(tmp_path, good_pt2):
    marker = tmp_path / "marker"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"

    def edit(program):  # the batch size of input x: parsed by sympy.sympify, i.e. eval
        program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {
            "as_expr": {"expr_str": code, "hint": {"as_int": 2}}}
    bad = _program_edit(good_pt2, tmp_path / "sym.pt2", edit)
    with pytest.raises(InvalidInput, match="holds a program that is not loaded") as err:
        _load(bad)
    assert "shape expression \"__import__('pathlib')" in str(err.value)
    assert not marker.exists()
    with pytest.raises(Exception):  # unguarded, torch evaluates it while deserializing
        torch.export.load(str(bad))
    assert marker.read_text() == "ran"


def test_stored_guards_are_refused_before_module_compiles_them(tmp_path, good_pt2):
    marker = tmp_path / "marker"
    guard = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran') > 0"
    bad = _program_edit(good_pt2, tmp_path / "guards.pt2",
                        lambda p: p.__setitem__("guards_code", [guard]))
    with pytest.raises(InvalidInput, match="guards_code is not empty"):
        _load(bad)
    assert not marker.exists()
    # unguarded, .module() compiles the guard into the forward, which runs it
    torch.export.load(str(bad)).module()(torch.zeros(2, *SHAPE))
    assert marker.read_text() == "ran"


def _graph(program):
    return program["graph_module"]["graph"]


def _first_spec(program):
    return program["graph_module"]["signature"]["input_specs"][0]["parameter"]


@pytest.mark.parametrize("edit,fragment", [
    (lambda p: _graph(p)["nodes"][0].__setitem__("name", "conv2d; import os"),
     "name 'conv2d; import os' is not a plain identifier"),
    (lambda p: _graph(p)["nodes"][0].__setitem__("target", "builtins.exec"),
     "call target 'builtins.exec' is not a torch operator"),
    (lambda p: _graph(p)["nodes"][0].__setitem__("target", "torch.ops.aten.from_file.default"),
     "operator aten::from_file touches files"),
    (lambda p: _graph(p)["nodes"][0].__setitem__("target", "torch.ops.higher_order.print"),
     "higher-order operator print is not one of the vetted"),
    # constant inputs become guard source code when .module() compiles the program
    (lambda p: _graph(p)["inputs"].__setitem__(-1, {"as_string": "x' or exec('1') or '"}),
     "a graph input of kind 'as_string'"),
    (lambda p: _graph(p)["inputs"].__setitem__(-1, {"as_int": "1 or exec('1')"}),
     "as_int \"1 or exec('1')\" is not of type"),
    # FX writes a non-identifier attribute name into generated source between quotes
    (lambda p: _first_spec(p).__setitem__("parameter_name", 'w"), exec("1'),
     "is not a module attribute path"),
])
def test_program_json_outside_plain_data_is_refused(tmp_path, good_pt2, edit, fragment):
    bad = _program_edit(good_pt2, tmp_path / "bad.pt2", edit)
    with pytest.raises(InvalidInput, match="holds a program that is not loaded") as err:
        _load(bad)
    assert fragment in str(err.value)


def test_example_inputs_other_than_positional_tensors_are_refused(tmp_path, good_pt2):
    inputs = io.BytesIO()
    torch.save(((torch.zeros(2, *SHAPE),), {"x'] or exec('1') or L['": torch.zeros(1)}), inputs)
    bad = _rewrite(good_pt2, tmp_path / "kwargs.pt2", lambda n, d: inputs.getvalue()
                   if n == "data/sample_inputs/model.pt" else d)
    with pytest.raises(InvalidInput, match="example inputs other than positional tensors"):
        _load(bad)


def test_an_input_spec_that_imports_a_module_is_refused(tmp_path, good_pt2):
    spec = [1, {"type": "collections.defaultdict", "context": json.dumps({
        "default_factory_module": "antigravity", "default_factory_name": "x",
        "dict_context": []}), "children_spec": []}]

    def edit(program):
        program["graph_module"]["module_call_graph"][0]["signature"]["in_spec"] = \
            json.dumps(spec)
    bad = _program_edit(good_pt2, tmp_path / "spec.pt2", edit)
    with pytest.raises(InvalidInput, match="inputs or outputs of type 'collections.defaultdict'"):
        _load(bad)


@pytest.mark.parametrize("extra,fragment", [
    ("code/__torch__.py", "is a TorchScript archive and is not loaded"),  # by content
    ("data/aotinductor/model/model.so", "embeds code or pickled Python objects in "
                                        "data/aotinductor"),
    ("data/weights/model.pt", "unexpected entries: data/weights/model.pt"),
    ("models/other.json", "unexpected entries: models/other.json"),
    ("../escape", "has a '..', '.' or empty path segment"),
])
def test_entries_outside_the_export_layout_are_refused(tmp_path, good_pt2, extra, fragment):
    bad = _rewrite(good_pt2, tmp_path / "extra.pt2", extra=[(extra, b"x")])
    with pytest.raises(InvalidInput) as err:
        _load(bad, format="export")
    assert fragment in str(err.value)


def test_pickled_weights_in_an_export_archive_are_refused(tmp_path, good_pt2):
    def change(name, data):
        if name != "data/weights/model_weights_config.json":
            return data
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()
    bad = _rewrite(good_pt2, tmp_path / "pickled.pt2", change)
    with pytest.raises(InvalidInput, match="embeds code or pickled Python objects in "
                                           "data/weights/weight_0"):
        _load(bad)


@torch.library.custom_op("tpet_test::touch", mutates_args=())
def _touch(x: torch.Tensor, marker: str) -> torch.Tensor:
    Path(marker).write_text("ran")
    return x.clone()


@_touch.register_fake
def _(x, marker):
    return torch.empty_like(x)


class Toucher(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x):
        return _touch(x, self.marker).mean((2, 3)).expand(-1, 3)


def test_custom_operator_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "custom.pt2"
    torch.export.save(torch.export.export(Toucher(str(marker)), (torch.rand(2, *SHAPE),)), path)
    assert not marker.exists()  # export traced it with its fake, without running it
    with pytest.raises(InvalidInput, match=r"custom operator tpet_test::touch \(namespace "
                                           "'tpet_test'\\): only built-in aten and prims"):
        _load(path)
    assert not marker.exists()
    torch.export.load(str(path)).module()(torch.zeros(2, *SHAPE))  # the operator is real
    assert marker.read_text() == "ran"


def test_control_flow_of_vetted_higher_order_operators_loads(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            with torch.no_grad():
                y = x * 2
            z = torch.cond(x.sum() > 0, lambda a: a.sin(), lambda a: a.cos(), (y,))
            return z.mean((2, 3)).expand(-1, 3)

    path = tmp_path / "branchy.pt2"
    torch.export.save(torch.export.export(Branchy(), (torch.rand(2, *SHAPE),)), path)
    x = torch.rand(2, *SHAPE)
    torch.testing.assert_close(_load(path)(x), Branchy()(x))


# --- TorchScript -------------------------------------------------------------------------

class FileWriter(nn.Module):
    """TorchScript whose forward creates ``marker`` (torch.from_file with shared=True)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x):
        t = torch.from_file(self.marker, shared=True, size=8, dtype=torch.uint8)
        return x.mean((2, 3)).expand(-1, 3) + t[:1].float()


@pytest.fixture
def writer(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    path = tmp_path / "writer.pt"
    torch.jit.script(FileWriter(str(marker))).save(str(path))
    return path, marker


@pytest.mark.parametrize("name,fmt", [("writer.pt", "auto"), ("writer.pt2", "auto"),
                                      ("writer.pt2", "export"), ("writer.pth", "weights"),
                                      ("writer.pt", "torchscript")])
def test_torchscript_is_refused_by_content_unless_allowed(tmp_path, writer, name, fmt):
    path, marker = writer
    renamed = tmp_path / "renamed" / name
    renamed.parent.mkdir()
    shutil.copy(path, renamed)
    with pytest.raises(InvalidInput, match="TorchScript teacher not allowed") as err:
        _load(renamed, format=fmt, arch="tiny_cnn")
    msg = str(err.value)
    assert "allow_torchscript_teachers" in msg and "torch.export.save(" in msg
    assert not marker.exists()


def test_torchscript_loads_when_the_operator_allows_it(writer):
    path, marker = writer
    with access.granted(TORCHSCRIPT_OK):
        teacher = _load(path)
    assert teacher.format == "torchscript"
    assert marker.exists()  # it is code indeed: the probe's forward wrote the file


# --- ONNX --------------------------------------------------------------------------------

def _onnx_model(weight: TensorProto, domain: str = "") -> onnx.ModelProto:
    """x: [N, 1, 2, 2] -> Flatten -> MatMul with ``weight`` [4, 3] -> [N, 3]."""
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"], domain=domain)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _external(location: str, length: int = 48) -> TensorProto:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        weight.external_data.add(key=key, value=value)
    return weight


def test_onnx_external_data_next_to_the_model_is_inlined(tmp_path):
    values = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    (tmp_path / "w.bin").write_bytes(values.numpy().tobytes())
    path = tmp_path / "t.onnx"
    onnx.save(_onnx_model(_external("w.bin")), str(path))
    x = torch.rand(5, 1, 2, 2)
    torch.testing.assert_close(_load(path, shape=(1, 2, 2))(x), x.flatten(1) @ values)


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "link.bin"])
def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(bytes(48))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    path = folder / "t.onnx"
    onnx.save(_onnx_model(_external(location)), str(path))
    with pytest.raises(InvalidInput, match=f"keeps tensor data in '{location}', outside the "
                                           "model's folder"):
        _load(path, shape=(1, 2, 2))


def test_onnx_custom_domain_is_refused(tmp_path):
    weight = numpy_helper.from_array(torch.ones(4, 3).numpy(), "w")
    path = tmp_path / "t.onnx"
    onnx.save(_onnx_model(weight, domain="evil.ops"), str(path))
    with pytest.raises(InvalidInput, match="operators of non-standard domains "
                                           r"\(evil.ops::MatMul\)"):
        _load(path, shape=(1, 2, 2))


# --- malformed weights -------------------------------------------------------------------

@pytest.fixture(scope="module")
def safetensors_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("st") / "t.safetensors"
    return save_weights(build_model("tiny_cnn", 1, 3), path).read_bytes()


@pytest.mark.parametrize("make,fragment", [
    (lambda good: good[:len(good) // 2], "not fully covered"),
    (lambda good: good[:20], "declares a"),
    (lambda good: b"", "it is empty"),
    (lambda good: good[:5], "holds 5 bytes, too few"),
    (lambda good: struct.pack("<Q", 10) + b"{not json}" + bytes(16), "header that is not JSON"),
    (lambda good: struct.pack("<Q", 2**62) + b"{}", f"declares a {2**62}-byte header"),
])
def test_malformed_safetensors_are_invalid_input_naming_the_file(tmp_path, safetensors_bytes,
                                                                make, fragment):
    path = tmp_path / "t.safetensors"
    path.write_bytes(make(safetensors_bytes))
    with pytest.raises(InvalidInput, match="cannot load teacher checkpoint") as err:
        _load(path, arch="tiny_cnn")
    msg = str(err.value)
    assert f"{path} is not a readable safetensors file" in msg and fragment in msg


@pytest.mark.parametrize("data", [b"", b"\x80\x04", b"PK\x03\x04garbage"])
def test_malformed_torch_weights_are_invalid_input(tmp_path, data):
    path = tmp_path / "t.pth"
    path.write_bytes(data)
    with pytest.raises(InvalidInput, match="cannot load teacher checkpoint") as err:
        _load(path, arch="tiny_cnn")
    assert str(path) in str(err.value)


def test_teacher_outside_the_roots_is_access_denied(tmp_path, good_pt2):
    with access.granted(access.InputAccess.of([str(tmp_path)])), \
            pytest.raises(access.AccessDenied, match="teacher.path"):
        _load(good_pt2)
    assert os.path.exists(good_pt2)
