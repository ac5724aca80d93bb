"""Batched inference over a split, for any model or model-like callable."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from compression.data.dataset import Split
from compression.errors import InvalidInput

__all__ = ["predict_logits"]


def predict_logits(model: Callable[[Tensor], Tensor], split: Split, batch_size: int = 512,
                   device: torch.device | str = "cpu") -> Tensor:
    """Logits of ``model`` on every example of ``split``, in order.

    model: maps images [b, C, H, W] float in [0, 1] on ``device`` to logits [b, K]. An
        ``nn.Module`` is put in eval mode and given back in the mode it had; any other
        callable (an onnxruntime InferenceSession wrapper, say) is called as is and may return a
        tensor or a numpy array.
    Returns logits [N, K] float32 on the CPU; [0, 0] for an empty split.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size is {batch_size}; it must be >= 1")
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    try:
        with torch.inference_mode():
            chunks = [_batch_logits(model, split.x[i:i + batch_size], device)
                      for i in range(0, len(split), batch_size)]
    finally:
        if was_training is not None:
            model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def _batch_logits(model: Callable[[Tensor], Tensor], x: Tensor, device: torch.device | str,
                  ) -> Tensor:
    """x: [b, C, H, W] uint8 -> logits [b, K] float32 on the CPU."""
    out = model(x.to(device).float() / 255)
    out = torch.as_tensor(out)
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise InvalidInput(f"the model returned shape {tuple(out.shape)} for a batch of "
                           f"{x.shape[0]} images; it must return logits [batch, classes]")
    return out.float().cpu()
