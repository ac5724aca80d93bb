"""The benchmark's outlier channel leaves the FP32 model's answers as they were."""

import importlib.util
from pathlib import Path

import torch

from compression.models import build_model

_PATH = Path(__file__).resolve().parents[2] / "bench" / "mixed_precision.py"
_spec = importlib.util.spec_from_file_location("bench_mixed_precision", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_amplifying_a_channel_keeps_the_fp32_logits_and_stretches_that_activation():
    torch.manual_seed(0)
    model = build_model("resnet8", 1, 10).eval()
    x = torch.rand(16, 1, 28, 28)
    seen = []
    hook = model.blocks[-1].conv1.register_forward_hook(lambda m, i, o: seen.append(o.amax()))
    with torch.no_grad():
        before = model(x)
        channel = bench.amplify_channel(model, -1, 256.0, x)
        after = model(x)
    hook.remove()
    assert 0 <= channel < 64
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4)
    assert seen[-1] > 50 * seen[0]  # the range INT8 must cover grew with the channel
