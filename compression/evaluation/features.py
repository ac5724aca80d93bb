"""Penultimate features: what a classifier's last linear layer reads, for every example.

Slice discovery clusters examples in a representation the job already has. A classifier's
penultimate layer is the one its head separates classes in, and every model of the zoo
ends in one linear layer. The features are read during the ordinary forward pass:

- an eager ``nn.Module``: a forward hook on its last ``nn.Linear`` (in registration order,
  which is the head for every architecture of the zoo and of torchvision);
- a ``torch.fx.GraphModule`` (a ``.pt2`` program's ``module()``): a copy of the graph with
  a tap on the input of its last ``aten.linear`` (or ``addmm``) call, since the program
  calls the head as an operator, not as a module, and a hook would never fire.

ONNX models, TensorRT engines and TorchScript archives expose no such layer: ``tap`` is
None for them and the caller picks another representation.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from compression.data.dataset import Split
from compression.evaluation.predict import predict_logits

__all__ = ["FeatureTap", "feature_module", "tap", "predict_with_features"]

_HEAD_OPS = {"aten.linear.default": 0, "aten.addmm.default": 1}  # op -> index of its input


class FeatureTap:
    """A model that also records its penultimate features on every call.

    ``tap(x)`` returns the model's logits [b, K]; ``take()`` returns the features [N, D]
    float32 on the CPU of every call since the last ``take``.
    """

    def __init__(self, model: Callable[[Tensor], Tensor]):
        self.model = model
        self._seen: list[Tensor] = []

    def record(self, features: Tensor) -> None:
        self._seen.append(features.detach().flatten(1).float().cpu())

    def take(self) -> Tensor:
        seen, self._seen = self._seen, []
        return torch.cat(seen) if seen else torch.empty(0, 0)

    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x)


def feature_module(model: Any) -> nn.Module | None:
    """The torch module whose penultimate layer can be read, or None.

    Accepts a module, or a loaded teacher (its ``module`` attribute; None for ONNX)."""
    module = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return None
    if isinstance(module, torch.fx.GraphModule):
        return module if _head_node(module.graph) is not None else None
    return module if _last_linear(module) is not None else None


@contextmanager
def tap(model: Any) -> Iterator[FeatureTap | None]:
    """A ``FeatureTap`` over ``model`` for the duration of the block; None when the model
    exposes no penultimate layer (see ``feature_module``)."""
    module = feature_module(model)
    if module is None:
        yield None
        return
    if isinstance(module, torch.fx.GraphModule):
        feature_tap = FeatureTap(module)
        feature_tap.model = _tapped_graph(module, feature_tap.record)
        yield feature_tap
        return
    feature_tap = FeatureTap(module)
    handle = _last_linear(module).register_forward_hook(
        lambda _m, args, _out: feature_tap.record(args[0]))
    try:
        yield feature_tap
    finally:
        handle.remove()


def predict_with_features(model: Any, split: Split, batch_size: int = 512,
                          device: torch.device | str = "cpu") -> tuple[Tensor, Tensor | None]:
    """Logits [N, K] and penultimate features [N, D] (None when unreadable) of ``model``
    on every example of ``split``, in one pass."""
    with tap(model) as feature_tap:
        if feature_tap is None:
            return predict_logits(model, split, batch_size, device), None
        module = feature_module(model)
        # An exported program refuses train()/eval() and runs as it was exported.
        eager = not isinstance(module, torch.fx.GraphModule)
        was_training = module.training
        if eager:
            module.eval()
        try:
            logits = predict_logits(feature_tap, split, batch_size, device)
        finally:
            if eager:
                module.train(was_training)
        features = feature_tap.take()
    if features.shape[0] != logits.shape[0]:
        raise RuntimeError(f"read {features.shape[0]} feature rows for {logits.shape[0]} "
                           "examples: the head ran more than once per batch")
    return logits, features


def _last_linear(module: nn.Module) -> nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _head_node(graph: torch.fx.Graph) -> torch.fx.Node | None:
    heads = [n for n in graph.nodes
             if n.op == "call_function" and str(n.target) in _HEAD_OPS]
    return heads[-1] if heads else None


def _tapped_graph(module: torch.fx.GraphModule,
                  record: Callable[[Tensor], None]) -> torch.fx.GraphModule:
    """A copy of ``module`` that passes the input of its last linear op to ``record``."""
    tapped = copy.deepcopy(module)
    head = _head_node(tapped.graph)
    features = head.args[_HEAD_OPS[str(head.target)]]
    with tapped.graph.inserting_before(head):
        tapped.graph.call_function(record, (features,))
    tapped.recompile()
    return tapped
