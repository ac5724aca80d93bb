"""The model zoo: shapes, sizes, init and exportability of every architecture."""

import math

import onnxruntime as ort
import pytest
import torch
from torch import nn

from compression.errors import InvalidInput
from compression.models import build_model, count_parameters, known_archs

CIFAR_RESNETS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56"]


def test_known_archs_lists_the_promised_families():
    archs = known_archs()
    assert set(CIFAR_RESNETS + ["tiny_cnn", "tv_resnet18", "tv_mobilenet_v3_small",
                                "tv_efficientnet_b0"]) <= set(archs)
    assert len(archs) == len(set(archs))


@pytest.mark.parametrize("arch", known_archs())
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 7)])
def test_every_arch_maps_images_to_logits(arch, shape, classes):
    torch.manual_seed(0)
    model = build_model(arch, shape[0], classes).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the output depends on the input (relatively: untrained mobile nets give tiny logits)
    assert (out[0] - out[1]).abs().max() > 1e-3 * out.abs().max()


def test_tiny_cnn_and_resnet8_parameter_counts_by_hand():
    # tiny_cnn: convs 1*16*9 + 16*32*9 + 32*32*9, BN 2*(16+32+32), head 32*10+10
    assert count_parameters(build_model("tiny_cnn", 1, 10)) == 144 + 4608 + 9216 + 160 + 330
    # resnet8: stem 144+32; block 16->16: 2*2304+64; block 16->32: 4608+9216+512+192;
    # block 32->64: 18432+36864+2048+384; head 650
    expected = 176 + 4672 + 14528 + 57728 + 650
    assert count_parameters(build_model("resnet8", 1, 10)) == expected


def test_parameter_counts_grow_with_depth_and_width():
    counts = [count_parameters(build_model(a, 3, 10)) for a in CIFAR_RESNETS]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    for arch in ("tiny_cnn", "resnet20", "tv_mobilenet_v3_small", "tv_efficientnet_b0"):
        half, one, two = (count_parameters(build_model(arch, 3, 10, w)) for w in (0.5, 1, 2))
        assert half < one < two, arch
    # conv weights dominate and scale with width squared
    ratio = count_parameters(build_model("resnet20", 3, 10, 2.0)) / counts[2]
    assert 3.5 < ratio < 4.1


def test_tiny_cnn_is_a_small_student():
    assert 3_000 <= count_parameters(build_model("tiny_cnn", 1, 10)) <= 50_000


def test_count_parameters_counts_shared_tensors_once():
    lin = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(lin, lin)) == 20


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(InvalidInput) as err:
        build_model("resnet9000", 1, 10)
    msg = str(err.value)
    assert "'resnet9000'" in msg
    for arch in known_archs():
        assert arch in msg


@pytest.mark.parametrize("kwargs,fragment", [
    ({"width": 0.0}, "width is 0.0"),
    ({"width": float("nan")}, "width is nan"),
    ({"num_classes": 0}, "num_classes (0)"),
])
def test_bad_sizes_are_invalid_input(kwargs, fragment):
    args = {"arch": "tiny_cnn", "in_channels": 1, "num_classes": 10, **kwargs}
    with pytest.raises(InvalidInput, match="cannot build model") as err:
        build_model(**args)
    assert fragment in str(err.value)


def test_tv_resnet_refuses_width_it_cannot_scale():
    with pytest.raises(InvalidInput, match="tv_resnet18 is only built at width 1"):
        build_model("tv_resnet18", 3, 10, width=0.5)


def test_resnets_accept_the_smallest_input_and_non_square_images():
    model = build_model("resnet20", 1, 10).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
        assert model(torch.rand(1, 1, 28, 40)).shape == (1, 10)


def test_tv_stem_keeps_small_images_at_full_resolution():
    small = build_model("tv_resnet18", 1, 10)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert small.conv1.in_channels == 1 and small.fc.out_features == 10
    large = build_model("tv_resnet18", 3, 10, image_size=224)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    mobile = build_model("tv_mobilenet_v3_small", 1, 5)
    assert mobile.features[0][0].in_channels == 1 and mobile.features[0][0].stride == (1, 1)


def test_kaiming_init():
    torch.manual_seed(0)
    model = build_model("resnet56", 3, 10, width=2.0)
    conv = model.blocks[20].conv2[0]  # [128, 128, 3, 3], fan_out = 128 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)
    bn = model.blocks[20].conv2[1]
    assert torch.equal(bn.weight, torch.ones(128)) and torch.equal(bn.bias, torch.zeros(128))
    assert model.fc.weight.std().item() == pytest.approx(1 / math.sqrt(128), rel=0.1)
    assert torch.equal(model.fc.bias, torch.zeros(10))


@pytest.mark.slow  # the default run exports resnet8 and tiny_cnn in test_models_checkpoint
@pytest.mark.parametrize("arch", known_archs())
def test_every_arch_exports_with_dynamic_batch(arch, tmp_path):
    model = build_model(arch, 3, 4).eval()
    example = (torch.rand(2, 3, 32, 32),)
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    program = torch.export.export(model, example, dynamic_shapes=dynamic)
    torch.onnx.export(model, example, str(tmp_path / "m.onnx"), dynamo=True,
                      dynamic_shapes=dynamic, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(program.module()(x), want, atol=1e-5, rtol=1e-4)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-3)
