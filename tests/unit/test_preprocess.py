"""data.preprocess: the spec section, the batch and per-sample transforms, and their agreement
with torchvision's transforms on the same pixels."""

from __future__ import annotations

import pickle

import pytest
import torch
from torchvision.transforms import v2

from compression.data.preprocess import (PreprocessSpec, Preprocessed, SamplePreprocess,
                                         output_hw, preprocess_batch)
from compression.errors import InvalidInput
from compression.spec import parse_spec

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _images(b=4, c=3, h=30, w=41, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def test_default_is_uint8_over_255_exactly():
    x = _images()
    spec = PreprocessSpec()
    assert spec.is_identity
    assert torch.equal(preprocess_batch(x, spec), x.float() / 255)


@pytest.mark.parametrize("h,w", [(30, 41), (41, 30), (32, 32)])
def test_matches_torchvision_resize_crop_normalize(h, w):
    spec = PreprocessSpec(resize=24, crop=20, **IMAGENET)
    x = _images(h=h, w=w)
    reference = v2.Compose([
        v2.ToDtype(torch.float32, scale=True), v2.Resize(24, antialias=False),
        v2.CenterCrop(20), v2.Normalize(list(spec.mean), list(spec.std))])(x)
    out = preprocess_batch(x, spec)
    assert out.shape == (4, 3, 20, 20) == reference.shape
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_resize_keeps_aspect_with_torchvision_rounding():
    spec = PreprocessSpec(resize=10)
    assert output_hw(spec, 30, 41) == (10, 13)  # 41 * 10 / 30 = 13.67, truncated
    assert output_hw(spec, 41, 30) == (13, 10)
    assert preprocess_batch(_images(h=30, w=41), spec).shape == (4, 3, 10, 13)


def test_bgr_reverses_colour_and_leaves_gray_alone():
    x = _images()
    bgr = preprocess_batch(x, PreprocessSpec(channel_order="bgr"))
    assert torch.equal(bgr, x.flip(1).float() / 255)
    gray = _images(c=1)
    assert torch.equal(preprocess_batch(gray, PreprocessSpec(channel_order="bgr")),
                       gray.float() / 255)


def test_mean_std_per_channel():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = preprocess_batch(x, PreprocessSpec(mean=(0.5, 0.0, 1.0), std=(0.5, 0.25, 1.0)))
    assert out[0, :, 0, 0].tolist() == [1.0, 4.0, 0.0]


def test_crop_that_does_not_fit_names_both_sizes():
    with pytest.raises(InvalidInput, match=r"crop \(32\) does not fit images of 28x28"):
        preprocess_batch(_images(h=28, w=28), PreprocessSpec(crop=32))
    with pytest.raises(InvalidInput, match="16x21 after the resize"):
        output_hw(PreprocessSpec(resize=16, crop=20), 30, 41)


def test_refuses_float_input_and_channel_mismatch():
    with pytest.raises(InvalidInput, match="uint8 batch"):
        preprocess_batch(torch.zeros(1, 3, 4, 4), PreprocessSpec())
    with pytest.raises(InvalidInput, match="3 values but the images have 1 channel"):
        preprocess_batch(_images(c=1), PreprocessSpec(**IMAGENET))


def test_sample_variant_equals_batch_rows_and_pickles():
    spec = PreprocessSpec(resize=24, crop=20, channel_order="bgr", **IMAGENET)
    x = _images()
    sample = pickle.loads(pickle.dumps(SamplePreprocess(spec)))
    batch = preprocess_batch(x, spec)
    for i in range(len(x)):
        assert torch.equal(sample(x[i]), batch[i])


def test_wrapped_model_sees_the_transform_of_scaled_input():
    spec = PreprocessSpec(resize=24, crop=20, **IMAGENET)
    model = Preprocessed(torch.nn.Flatten(), spec)
    x = _images()
    assert torch.equal(model(x.float() / 255), preprocess_batch(x, spec).flatten(1))


def test_spec_parses_and_lists_every_problem():
    spec = parse_spec({"data": {"channels": 3, "preprocess": {"resize": 256, "crop": 224,
                                               "channelOrder": "bgr", **IMAGENET}}})
    assert spec.data.preprocess == PreprocessSpec(256, 224, "bgr", IMAGENET["mean"],
                                                  IMAGENET["std"])
    assert parse_spec({}).data.preprocess.is_identity
    with pytest.raises(InvalidInput) as err:
        parse_spec({"data": {"preprocess": {"resize": -1, "crop": 9000, "channel_order": "hsv",
                                            "mean": [123.7, 0.5, 0.5], "std": [0.0, 1.0]}}})
    text = "\n".join(err.value.problems)
    for needle in ("data.preprocess.resize is -1", "data.preprocess.crop is 9000",
                   "'hsv' is not one of rgb, bgr", "mean[0] is 123.7", "std[0] is 0.0",
                   "mean has 3 values and std 2"):
        assert needle in text


def test_mean_length_must_match_declared_channels_at_parse():
    with pytest.raises(InvalidInput, match="3 values but the images have 1 channel"):
        parse_spec({"data": {"preprocess": IMAGENET}})  # fashion-mnist is grayscale
    parse_spec({"data": {"channels": 3, "preprocess": IMAGENET}})
    with pytest.raises(InvalidInput, match="1 values but the images have 3 channels"):
        parse_spec({"data": {"channels": 3, "preprocess": {"mean": [0.5], "std": [0.5]}}})


def test_a_crop_larger_than_declared_images_is_refused_at_parse():
    data = {"source": "imagefolder", "path": "train", "test_path": "test", "image_size": 40,
            "preprocess": {"resize": 36, "crop": 38}}
    with pytest.raises(InvalidInput, match=r"crop \(38\) does not fit images of 40x40 \(HxW\) "
                                           r"\(36x36 after the resize\)"):
        parse_spec({"data": data})
    parse_spec({"data": {**data, "preprocess": {"resize": 36, "crop": 32}}})
    with pytest.raises(InvalidInput, match=r"crop \(32\) does not fit images of 28x28"):
        parse_spec({"data": {"preprocess": {"crop": 32}}})  # Fashion-MNIST: 28x28


def test_section_survives_the_proto_round_trip():
    from service.convert import dict_to_proto, proto_to_spec
    data = {"data": {"channels": 3, "preprocess": {"resize": 36, "crop": 32,
                                                    "channel_order": "bgr", **IMAGENET}}}
    assert proto_to_spec(dict_to_proto(data)) == parse_spec(data)
