"""Training building blocks: device, schedule, batching, augmentation, teacher cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compression.errors import Cancelled, InvalidInput, StageFailed
from compression.spec import TrainingSpec
from compression.training import (TeacherCache, augment_batch, crop_padding, lr_factor,
                                  resolve_device, steps_per_epoch)
from compression.training.device import amp_dtype
from compression.training.schedule import batch_bounds

CPU = torch.device("cpu")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidInput, match="unknown|not one of"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no CUDA GPU"):
        resolve_device("cuda")


def test_no_autocast_on_cpu() -> None:
    assert [amp_dtype(a, CPU) for a in ("auto", "bf16", "fp16", "off")] == [None] * 4


def test_warmup_then_cosine_by_hand() -> None:
    # 3 epochs x 4 steps, 1 warm-up epoch: 4 linear steps, then cosine over the 8 left.
    factor = lr_factor(TrainingSpec(epochs=3, warmup_epochs=1, schedule="cosine"), 4)
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, 0.9619397663, 0.8535533906, 0.6913417162,
                0.5, 0.3086582838, 0.1464466094, 0.0380602337]
    assert [factor(i) for i in range(12)] == pytest.approx(expected, abs=1e-9)


def test_step_schedule_by_hand() -> None:
    spec = TrainingSpec(epochs=4, schedule="step", step_milestones=(1, 3), step_gamma=0.1)
    factor = lr_factor(spec, 2)
    assert [factor(i) for i in range(8)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01], abs=1e-12)
    warm = lr_factor(TrainingSpec(epochs=3, schedule="step", warmup_epochs=1,
                                  step_milestones=(1,), step_gamma=0.5), 2)
    assert [warm(i) for i in range(6)] == pytest.approx([0.5, 1, 0.5, 0.5, 0.5, 0.5])


def test_constant_schedule_with_warmup() -> None:
    factor = lr_factor(TrainingSpec(epochs=3, schedule="constant", warmup_epochs=2), 2)
    assert [factor(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("n, batch, steps, last", [
    (64, 16, 4, (48, 64)), (66, 16, 5, (64, 66)), (65, 16, 4, (48, 65)), (17, 16, 1, (0, 17)),
    (5, 16, 1, (0, 5)), (1, 16, 1, (0, 1))])
def test_batches_keep_the_last_partial_one(n: int, batch: int, steps: int,
                                           last: tuple[int, int]) -> None:
    # A lone last sample joins the batch before it (65 = 3 x 16 + 17).
    assert steps_per_epoch(n, batch) == steps
    assert batch_bounds(steps - 1, n, batch) == last
    covered = [i for s in range(steps) for i in range(*batch_bounds(s, n, batch))]
    assert covered == list(range(n))


@pytest.mark.parametrize("n, steps, last", [(67, 4, (48, 67)), (68, 5, (64, 68)),
                                            (64, 4, (48, 64))])
def test_under_two_ranks_a_last_batch_under_4_joins_the_one_before(n, steps, last) -> None:
    # each of 2 ranks needs 2 examples of every batch: 67 = 4 x 16 + 3
    assert steps_per_epoch(n, 16, min_last=4) == steps
    assert batch_bounds(steps - 1, n, 16, min_last=4) == last


def test_crop_padding_scales_with_size() -> None:
    assert [crop_padding(s) for s in (8, 24, 28, 32, 64)] == [1, 3, 4, 4, 8]


def _windows(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every H x W crop of img [C, H, W] zero-padded by ``pad``."""
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    return [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)]


def test_crop_is_a_shifted_window_and_deterministic() -> None:
    x = torch.randint(1, 256, (32, 2, 8, 8), dtype=torch.uint8)
    out = augment_batch(x, "crop", torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for img, got in zip(x, out):
        assert any(torch.equal(got, win) for win in _windows(img, 1))
    assert (out == 0).any()  # some crops moved the zero padding in
    assert torch.equal(out, augment_batch(x, "crop", torch.Generator().manual_seed(3)))
    assert not torch.equal(out, augment_batch(x, "crop", torch.Generator().manual_seed(4)))


def test_crop_by_hand() -> None:
    x = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)  # [1, 1, 2, 2], pad 1
    seen = {tuple(augment_batch(x, "crop", torch.Generator().manual_seed(s)).flatten().tolist())
            for s in range(200)}
    assert seen == {(0, 0, 0, 1), (0, 0, 1, 2), (0, 0, 2, 0), (0, 1, 0, 3), (1, 2, 3, 4),
                    (2, 0, 4, 0), (0, 3, 0, 0), (3, 4, 0, 0), (4, 0, 0, 0)}


def test_crop_flip_mirrors_about_half() -> None:
    x = torch.randint(1, 256, (64, 1, 8, 8), dtype=torch.uint8)
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    flipped = 0
    for img, got in zip(x, out):
        plain = any(torch.equal(got, w) for w in _windows(img, 1))
        mirrored = any(torch.equal(got, w.flip(-1)) for w in _windows(img, 1))
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 16 <= flipped <= 48
    assert augment_batch(x, "none", torch.Generator()) is x


@pytest.mark.parametrize("mode", ["crop", "crop_flip"])
def test_a_share_of_the_batch_gets_the_augmentation_of_the_whole(mode) -> None:
    x = torch.randint(0, 255, (7, 2, 10, 10), dtype=torch.uint8)
    whole = augment_batch(x, mode, torch.Generator().manual_seed(5))
    for rank in range(3):
        share = augment_batch(x, mode, torch.Generator().manual_seed(5), slice(rank, None, 3))
        assert torch.equal(share, whole[rank::3])


class CountingTeacher(nn.Module):
    """A linear teacher that counts the samples it has seen."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        self.scale = scale
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += len(x)
        return self.net(x) * self.scale


def test_teacher_cache_holds_the_teachers_logits() -> None:
    torch.manual_seed(0)
    teacher, events = CountingTeacher().eval(), []
    x = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    cache = TeacherCache.build(teacher, x, batch_size=16, device=CPU, on_event=events.append,
                               progress_every=2)
    assert teacher.samples == 50 and len(cache) == 50 and cache.logits.dtype == torch.float16
    with torch.no_grad():
        exact = teacher(x.float() / 255)  # [50, 3] fp32
    idx = torch.tensor([7, 0, 49, 7])
    got = cache[idx]
    assert got.dtype == torch.float32 and got.shape == (4, 3)
    torch.testing.assert_close(got, exact[idx], rtol=1e-3, atol=1e-3)
    assert torch.equal(got, exact[idx].half().float())
    assert [(e.payload["phase"], e.payload["step"], e.payload["steps"], e.payload["samples"])
            for e in events] == [("teacher_cache", 2, 4, 32), ("teacher_cache", 4, 4, 50)]


def test_teacher_cache_keeps_fp32_beyond_fp16_range() -> None:
    torch.manual_seed(0)
    teacher = CountingTeacher(scale=1e6).eval()
    x = torch.randint(1, 256, (8, 1, 8, 8), dtype=torch.uint8)
    cache = TeacherCache.build(teacher, x, batch_size=8, device=CPU)
    assert cache.logits.dtype == torch.float32 and cache.logits.isfinite().all()
    assert cache.logits.abs().max() > 65504


def test_teacher_cache_cancel_and_bad_teacher() -> None:
    x = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(Cancelled):
        TeacherCache.build(CountingTeacher(), x, batch_size=4, device=CPU,
                           should_stop=lambda: True)
    with pytest.raises(StageFailed, match=r"returned \(4,\) for 4 inputs"):
        TeacherCache.build(lambda t: t.sum((1, 2, 3)), x, batch_size=4, device=CPU)

