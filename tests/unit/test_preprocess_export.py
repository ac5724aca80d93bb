"""The served ONNX graph carries data.preprocess: it takes uint8 pixels, agrees with the
PyTorch model behind the transform, records its input contract, and Triton's config says it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from torch import nn

from compression.artifacts.triton import write_triton_model
from compression.data.preprocess import PreprocessSpec, Preprocessed, preprocess_batch, to_pixels
from compression.export.onnx_export import (OnnxModel, export_onnx, preprocessing_nodes,
                                            read_contract)

GRAY = PreprocessSpec(resize=12, crop=10, mean=(0.3,), std=(0.2,))
SHAPE = (1, 14, 18)  # as stored


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = Preprocessed(_Net(), GRAY).eval()
    path = export_onnx(model, SHAPE, tmp_path_factory.mktemp("onnx") / "m.onnx", pixels=True)
    return model, path


def _pixels(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8)


def test_the_graph_takes_uint8_and_matches_pytorch_on_raw_images(served):
    model, path = served
    x = _pixels()
    with torch.no_grad():
        expected = model.model(preprocess_batch(x, GRAY)).numpy()
    session = ort.InferenceSession(str(path))
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == list(SHAPE)
    np.testing.assert_allclose(session.run(None, {inp.name: x.numpy()})[0], expected, atol=1e-5)
    # what evaluation gives every model (pixels / 255) is turned back into the same pixels
    runner = OnnxModel(path)
    np.testing.assert_allclose(runner(x.float() / 255).numpy(), expected, atol=1e-5)


def test_the_contract_is_in_the_metadata_and_the_preprocessing_nodes_are_found(served):
    _, path = served
    contract = read_contract(path)
    assert contract["dtype"] == "uint8" and contract["shape"] == ["batch", *SHAPE]
    assert contract["channel_order"] == "gray" and contract["value_range"] == [0, 255]
    assert contract["model_input_shape"] == ["batch", 1, 10, 10]
    nodes = preprocessing_nodes(path)
    assert any("Cast" in n for n in nodes) and any("Resize" in n for n in nodes)
    assert not any("conv" in n.lower() for n in nodes)


def test_without_preprocessing_the_graph_takes_float_as_before(tmp_path):
    path = export_onnx(_Net().eval(), SHAPE, tmp_path / "f.onnx")
    assert ort.InferenceSession(str(path)).get_inputs()[0].type == "tensor(float)"
    assert read_contract(path)["dtype"] == "float32" and preprocessing_nodes(path) == []


def test_pixels_round_trip_exactly():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_pixels(x.float() / 255), x)


def _triton_config_class():
    """Triton's ModelConfig, the fields written for a contract (as in model_config.proto)."""
    T = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="mc_contract.proto", package="tc",
                                           syntax="proto3")
    dtype = f.enum_type.add(name="DataType")
    for i, t in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16",
                           "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
                           "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32"]):
        dtype.value.add(name=t, number=i)
    fmt = f.enum_type.add(name="Format")
    for i, t in enumerate(["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"]):
        fmt.value.add(name=t, number=i)
    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED

    def message(name, *fields):
        m = f.message_type.add(name=name)
        for n, (fname, ftype, label, type_name) in enumerate(fields, 1):
            m.field.add(name=fname, number=n, type=ftype, label=label, type_name=type_name)
        return m

    tensor = [("name", T.TYPE_STRING, opt, None), ("data_type", T.TYPE_ENUM, opt, ".tc.DataType"),
              ("dims", T.TYPE_INT64, rep, None)]
    message("ModelInput", *tensor, ("format", T.TYPE_ENUM, opt, ".tc.Format"))
    message("ModelOutput", *tensor, ("label_filename", T.TYPE_STRING, opt, None))
    message("ModelParameter", ("string_value", T.TYPE_STRING, opt, None))
    message("DynamicBatching")
    config = message("ModelConfig", ("name", T.TYPE_STRING, opt, None),
                     ("platform", T.TYPE_STRING, opt, None),
                     ("max_batch_size", T.TYPE_INT32, opt, None),
                     ("input", T.TYPE_MESSAGE, rep, ".tc.ModelInput"),
                     ("output", T.TYPE_MESSAGE, rep, ".tc.ModelOutput"),
                     ("dynamic_batching", T.TYPE_MESSAGE, opt, ".tc.DynamicBatching"),
                     ("parameters", T.TYPE_MESSAGE, rep, ".tc.ModelConfig.ParametersEntry"))
    entry = config.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=opt,
                    type_name=".tc.ModelParameter")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tc.ModelConfig"))


def test_triton_config_declares_the_contract(served, tmp_path):
    _, path = served
    folder = write_triton_model(tmp_path, "m", path, labels=list("abcde"))
    config = text_format.Parse((folder / "config.pbtxt").read_text(), _triton_config_class()())
    (inp,) = config.input
    assert (inp.data_type, list(inp.dims), inp.format) == (2, list(SHAPE), 2)  # UINT8, NCHW
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["input_dtype"] == "uint8" and params["input_layout"] == "NCHW"
    assert params["input_channel_order"] == "gray" and params["input_value_range"] == "0 to 255"
    assert json.loads(params["preprocess"])["center_crop"] == 10


@pytest.mark.slow
def test_the_torch_export_based_exporter_carries_the_transform_too(tmp_path):
    """Opset 18 goes through the other exporter: same graph input, same parity, and INT8
    still finds and keeps the preprocessing in float."""
    from compression.export.quantize import quantize_int8

    spec = PreprocessSpec(resize=12, crop=10, channel_order="bgr", mean=(0.3, 0.4, 0.5),
                          std=(0.2, 0.3, 0.25))
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 5)).eval()
    path = export_onnx(Preprocessed(inner, spec), (3, 14, 18), tmp_path / "m.onnx", opset=18,
                       pixels=True)
    x = torch.randint(0, 256, (8, 3, 14, 18), generator=torch.Generator().manual_seed(2),
                      dtype=torch.uint8)
    with torch.no_grad():
        expected = inner(preprocess_batch(x, spec)).numpy()
    np.testing.assert_allclose(OnnxModel(path)(x).numpy(), expected, atol=1e-5)
    kept = preprocessing_nodes(path)
    int8 = quantize_int8(path, tmp_path / "m.int8.onnx", x)
    assert len(kept) >= 5 and OnnxModel(int8)(x).shape == (8, 5)
    graph = onnx.load(str(int8)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    resize = next(n for n in graph.node if n.op_type == "Resize")
    assert made_by[resize.input[0]] == "Div"  # pixels / 255 in float, not dequantized
