"""The training loop: one recipe for distillation and plain one-hot training.

``train`` reads top to bottom: set up, resume, attach the teacher (cached or online), run the
epochs, checkpoint after each. Every source of randomness is seeded from ``spec.seed`` (and the
epoch), so on CPU a seed gives bit-identical weights, also across a stop and resume.

Inside a torchrun process group (``compression.distributed``) the model trains under DDP:
``batch_size`` stays the global batch, each rank takes every world-th example of it (its
crops drawn with the whole batch's, so they do not depend on the number of ranks), the losses
average over the global batch, and only rank 0 reads and writes checkpoints. Up to float rounding the
weights are those of one process, BatchNorm aside: its batch statistics are per rank.

A split held in memory moves to the device once and is sliced there. A streamed split
(``compression.data.stream``) is read through a DataLoader whose sampler cuts the very same
global batches from the same seeded order, each rank its share; its workers decode and
augment, so memory holds the batches in flight rather than the split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compression import distributed
from compression.data.dataset import Split
from compression.data.stream import EpochBatches, SampleDataset, is_streamed, make_loader
from compression.errors import Cancelled, InvalidInput, StageFailed
from compression.events import Event, EventSink, StopCheck, emit_nothing, never_stop
from compression.seeds import derived_seed
from compression.spec import TrainingSpec
from compression.training.augment import augment_batch
from compression.training.checkpoint import (CHECKPOINT_NAME, load_checkpoint, restore_rng,
                                             rng_state, run_fingerprint, save_checkpoint)
from compression.training.device import PeakMemory, amp_dtype, autocast, resolve_device, to_inputs
from compression.training.schedule import (batch_bounds, build_optimizer, build_scheduler,
                                           steps_per_epoch)
from compression.training.teacher_cache import (TeacherCall, TeacherCache, prepare_teacher,
                                                teacher_logits)

if TYPE_CHECKING:
    from compression.losses import Loss

__all__ = ["TrainResult", "train", "uses_teacher_cache"]

TeacherFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (idx [B], x [B,C,H,W]) -> [B,K]


@dataclass(frozen=True)
class TrainResult:
    """What a ``train`` call did.

    epochs_run: epochs trained by this call; the model has ``resumed_from_epoch + epochs_run``.
    final_loss: mean training loss of the last completed epoch (from the checkpoint when this
    call had nothing left to train). samples_per_s: over this call's epochs, the teacher cache
    pass excluded. seconds: the whole call. peak_memory_bytes: see ``PeakMemory``.
    """

    epochs_run: int
    resumed_from_epoch: int
    final_loss: float
    samples_per_s: float
    seconds: float
    cache_seconds: float
    peak_memory_bytes: int
    used_teacher_cache: bool


@dataclass
class _Run:
    """Everything an epoch needs, set up once by ``train``. x/y/group: the split on device
    (x None when streamed: ``loader`` reads it)."""

    model: nn.Module
    forward: nn.Module  # ``model``, or its DDP wrapper inside a process group
    spec: TrainingSpec
    loss: "Loss"
    stage: str
    device: torch.device
    x: torch.Tensor | None
    y: torch.Tensor
    group: torch.Tensor
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    channels_last: bool
    steps: int  # optimizer steps per epoch
    on_event: EventSink
    should_stop: StopCheck
    teacher_fn: TeacherFn | None = None
    loader: torch.utils.data.DataLoader | None = None


def train(model: nn.Module, data: Split, spec: TrainingSpec, loss: "Loss", *,
          teacher: TeacherCall | None = None, checkpoint_dir: Path | None = None,
          on_event: EventSink = emit_nothing, should_stop: StopCheck = never_stop,
          stage: str = "distill", run_key: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``loss``; it ends on the device in eval mode.

    teacher: called on float inputs [B, C, H, W] in [0, 1], returns logits [B, K]; needed when
    ``loss.needs_teacher``. checkpoint_dir: ``last.pt`` there is written after every epoch and
    resumed from at start. run_key: settings outside ``spec`` that define the run (e.g. the
    mitigation, the teacher's hash); a checkpoint written under other values is refused.
    Raises ``Cancelled`` when ``should_stop()`` turns True, ``StageFailed`` on a non-finite loss.
    """
    start = time.perf_counter()
    should_stop = distributed.agreed_stop(should_stop)
    device = resolve_device(spec.device)
    _check_inputs(data, spec, loss, teacher, stage)
    memory = PeakMemory(device)
    run = _setup(model, data, spec, loss, device, stage, on_event, should_stop)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    loss_id = {"loss": type(loss).__qualname__, "loss_name": getattr(loss, "name", None)}
    fingerprint = run_fingerprint(spec, stage, data, model, {**loss_id, **(run_key or {})})
    resumed, final_loss = _resume(run, path, fingerprint)
    cache_seconds, used_cache = 0.0, False
    if loss.needs_teacher and resumed < spec.epochs:
        used_cache = uses_teacher_cache(spec)
        cache_seconds = _attach_teacher(
            run, prepare_teacher(teacher, device, run.channels_last), used_cache, data,
            checkpoint_dir)
    samples, seconds = 0, 0.0
    for epoch in range(resumed, spec.epochs):
        final_loss, epoch_seconds = _run_epoch(run, epoch)
        _end_epoch(run)
        samples, seconds = samples + len(data), seconds + epoch_seconds
        if path is not None and distributed.is_primary():
            save_checkpoint(path, _checkpoint(run, epoch + 1, final_loss, fingerprint))
    model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(
        epochs_run=spec.epochs - resumed, resumed_from_epoch=resumed, final_loss=final_loss,
        samples_per_s=samples / seconds if seconds else 0.0,
        seconds=time.perf_counter() - start, cache_seconds=cache_seconds,
        peak_memory_bytes=memory.bytes(),
        used_teacher_cache=used_cache)


def _end_epoch(run: _Run) -> None:
    """Let a stateful objective update itself from the model once per epoch (group-DRO
    weights from the holdout error); before the checkpoint, so a resume holds the update."""
    hook = getattr(run.loss, "on_epoch_end", None)
    if hook is not None:
        hook(run.model)
    if hook is not None and distributed.is_distributed():
        # rank 0's update holds everywhere, whatever float noise the ranks' evaluations had
        state = _to_device(run.loss.state_dict(), torch.device("cpu"))
        run.loss.load_state_dict(_to_device(distributed.from_primary(state), run.device))


def uses_teacher_cache(spec: TrainingSpec) -> bool:
    """``teacher_cache`` policy: ``auto`` caches exactly when inputs do not change (no augment)."""
    return spec.teacher_cache == "on" or (spec.teacher_cache == "auto" and spec.augment == "none")


def _min_batch() -> int:
    """The smallest batch every rank gets 2 examples of (BatchNorm needs 2)."""
    return 2 * distributed.world_size()


def _check_inputs(data: Split, spec: TrainingSpec, loss: "Loss", teacher: TeacherCall | None,
                  stage: str) -> None:
    problems = []
    if len(data) == 0:
        problems.append("the training split is empty; check the data source and max_train")
    if data.x.dtype != torch.uint8 or data.x.ndim != 4:
        problems.append(f"training images are {data.x.dtype} {tuple(data.x.shape)}; "
                        "expected uint8 [N, C, H, W]")
    if not len(data.x) == len(data.y) == len(data.group):
        problems.append(f"x, y and group hold {len(data.x)}, {len(data.y)} and "
                        f"{len(data.group)} samples; they must agree")
    if data.x.shape[0] and spec.batch_size < _min_batch():
        problems.append(f"training.batch_size {spec.batch_size} leaves some of the "
                        f"{distributed.world_size()} ranks fewer than 2 examples a step; use "
                        f"batch_size >= {_min_batch()} (it is the global batch)")
    if loss.needs_teacher and teacher is None:
        problems.append(f"the {type(loss).__name__} loss needs a teacher and none was given; "
                        "give a teacher or use a loss without one (one_hot)")
    if problems:
        raise InvalidInput(problems, f"cannot start {stage}")


def _setup(model: nn.Module, data: Split, spec: TrainingSpec, loss: "Loss",
           device: torch.device, stage: str, on_event: EventSink,
           should_stop: StopCheck) -> _Run:
    torch.manual_seed(spec.seed)  # model-side randomness (dropout); resume restores its state
    channels_last = spec.channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = amp_dtype(spec.amp, device)
    optimizer = build_optimizer(model, spec)
    steps = steps_per_epoch(len(data), spec.batch_size, _min_batch())
    streamed = is_streamed(data.x)
    # In memory, the whole split moves to the device once: no per-step host-to-device copies.
    return _Run(
        model=model, forward=_data_parallel(model, device), spec=spec, loss=loss, stage=stage,
        device=device, x=None if streamed else data.x.to(device), y=data.y.to(device),
        group=data.group.to(device), loader=_loader(data, spec, device) if streamed else None,
        optimizer=optimizer, scheduler=build_scheduler(optimizer, spec, steps),
        scaler=torch.amp.GradScaler(device.type, enabled=amp is torch.float16),
        amp=amp, channels_last=channels_last, steps=steps, on_event=on_event,
        should_stop=should_stop)


def _loader(data: Split, spec: TrainingSpec, device: torch.device,
            ) -> torch.utils.data.DataLoader:
    """The streamed split's training batches: this rank's share of each global batch."""
    n = len(data)
    sampler = EpochBatches(n, spec.batch_size, _min_batch(),
                           lambda epoch: _order(spec.seed, epoch, n),
                           distributed.rank(), distributed.world_size())
    return make_loader(SampleDataset(data.x.index, spec.augment, spec.seed), sampler,
                       data.x.workers, pin_memory=device.type == "cuda")


def _order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The epoch's order of the n samples: [N], on the CPU (both paths draw it here)."""
    return torch.randperm(n, generator=_generator(seed, epoch, "shuffle"))


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` inside a process group (it starts from rank 0's weights)."""
    if not distributed.is_distributed():
        return model
    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _resume(run: _Run, path: Path | None, fingerprint: str) -> tuple[int, float]:
    """Load ``path`` into the run if it exists; return (epochs done, their last mean loss)."""
    # Rank 0 reads and shares it: every rank must resume from the same epoch, even where a
    # shared volume shows a fresh file late.
    state = distributed.from_primary(
        load_checkpoint(path, fingerprint) if path is not None and distributed.is_primary()
        else None)
    if state is None:
        return 0, float("nan")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] and run.scaler.is_enabled():  # empty when saved without fp16
        run.scaler.load_state_dict(state["scaler"])
    run.loss.load_state_dict(_to_device(state["loss"], run.device))
    restore_rng(state["rng"])
    run.on_event(Event("log", run.stage, {
        "level": "info", "message": f"resuming from checkpoint {path} after epoch "
                                    f"{state['epoch']} of {run.spec.epochs}"}))
    return int(state["epoch"]), float(state["final_loss"])


def _checkpoint(run: _Run, epoch: int, final_loss: float, fingerprint: str) -> dict[str, Any]:
    return {"fingerprint": fingerprint, "epoch": epoch, "final_loss": final_loss,
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "loss": run.loss.state_dict(), "rng": rng_state()}


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _attach_teacher(run: _Run, teacher: TeacherCall, cached: bool, data: Split,
                    work_dir: Path | None) -> float:
    """Give the run its teacher logits source; return the seconds spent caching (0 online).
    A cache over the RAM budget spills to a file in ``work_dir``."""
    spec = run.spec
    if not cached:
        run.teacher_fn = lambda idx, x: teacher_logits(teacher, x, run.stage, run.amp)
        return 0.0
    # The one caching pass runs in fp32 (no autocast): bf16 logits would lose the precision
    # the fp16 cache keeps, and a single forward pass is cheap next to training.
    # On CPU a batch of 512 costs 10-20% more per image than a training batch of 128
    # (measured: docs/benchmarks.md).
    batch = spec.eval_batch_size if run.device.type == "cuda" else spec.batch_size
    cache = TeacherCache.build(
        teacher, run.x if run.x is not None else data.x, batch_size=batch, device=run.device,
        stage=run.stage, on_event=run.on_event, should_stop=run.should_stop,
        progress_every=spec.progress_every_steps, channels_last=run.channels_last,
        ram_bytes=spec.teacher_cache_ram_mib * 2**20, spill_dir=work_dir)
    run.teacher_fn = lambda idx, x: cache[idx]
    return cache.seconds


def _generator(seed: int, epoch: int, purpose: str,
               device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one (seed, epoch, purpose): any epoch replays exactly on resume."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, f"{epoch}/{purpose}"))


def _run_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """Train epoch ``epoch`` (0-based); return (sample-weighted mean loss, seconds)."""
    spec, n = run.spec, len(run.y)
    run.model.train()
    start, window, loss_sum = time.perf_counter(), _Window(0), 0.0
    batches = _batches(run, epoch)
    for step in range(run.steps):
        if run.should_stop():
            raise Cancelled(f"{run.stage} cancelled at epoch {epoch + 1} step {step + 1}")
        lo, hi = batch_bounds(step, n, spec.batch_size, _min_batch())
        lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses
        window.add(_train_step(run, *next(batches)), hi - lo)
        last = step + 1 == run.steps
        if last or (step + 1) % spec.progress_every_steps == 0:
            payload = window.close(run.stage, epoch)
            loss_sum += payload.pop("loss_sum")
            if last:
                payload.update(epoch_loss=loss_sum / n, epoch_seconds=time.perf_counter() - start)
            run.on_event(Event("progress", run.stage, {
                "phase": "train", "epoch": epoch + 1, "epochs": spec.epochs, "step": step + 1,
                "steps": run.steps, "global_step": epoch * run.steps + step + 1, "lr": lr,
                **payload}))
            window = _Window(step + 1)
    return loss_sum / n, time.perf_counter() - start


def _batches(run: _Run, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of each step's global batch: (idx [b], float inputs [b, C, H, W])
    on the device, from the split in memory or from the streaming loader."""
    if run.loader is not None:
        run.loader.batch_sampler.set_epoch(epoch)
        for x, idx in run.loader:
            yield idx.to(run.device), to_inputs(x.to(run.device, non_blocking=True))
        return
    spec, n = run.spec, len(run.y)
    order = _order(spec.seed, epoch, n).to(run.device)
    augment_rng = _generator(spec.seed, epoch, "augment", run.device)
    for step in range(run.steps):
        lo, hi = batch_bounds(step, n, spec.batch_size, _min_batch())
        yield _local_batch(run, order[lo:hi], augment_rng)


def _train_step(run: _Run, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """idx: [b] sample indices, x: [b, C, H, W] inputs of this rank's share of the global
    batch -> this rank's loss (detached scalar), after one optimizer step."""
    if run.channels_last:  # before the teacher: a module teacher is channels_last too
        x = x.contiguous(memory_format=torch.channels_last)
    teacher = run.teacher_fn(idx, x) if run.teacher_fn is not None else None  # [b, K]
    with autocast(run.device, run.amp):
        logits = run.forward(x)  # [b, K]
    value = run.loss(logits.float(), run.y[idx], teacher, run.group[idx])
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(value).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return value.detach()


def _local_batch(run: _Run, idx: torch.Tensor,
                 augment_rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch idx: [B] -> (idx [b], float inputs [b, C, H, W])."""
    mine = slice(distributed.rank(), None, distributed.world_size())
    if run.spec.augment == "none":
        return idx[mine], to_inputs(run.x[idx[mine]])
    # Draws for the whole batch: the same crops whatever the number of ranks.
    return idx[mine], to_inputs(augment_batch(run.x[idx], run.spec.augment, augment_rng, mine))


@dataclass
class _Window:
    """Step losses since the last progress report, kept on the device: one sync per report."""

    first_step: int  # 0-based step within the epoch of losses[0]
    losses: list[torch.Tensor] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, size: int) -> None:
        self.losses.append(loss)
        self.sizes.append(size)

    def close(self, stage: str, epoch: int) -> dict[str, float]:
        """loss (sample-weighted mean), loss_sum, samples_per_s; StageFailed on NaN or inf."""
        # [S] global-batch losses: each rank's value is its share in the distributed convention
        losses = distributed.mean_over_ranks(torch.stack(self.losses)).double().cpu()
        bad = (~losses.isfinite()).nonzero()
        if len(bad):
            i = int(bad[0])
            kind = "NaN" if losses[i].isnan() else "infinite"
            raise StageFailed(stage, f"loss became {kind} at epoch {epoch + 1} step "
                                     f"{self.first_step + i + 1}; lower lr, add warmup_epochs "
                                     "or use amp: off, and check the data and teacher logits")
        samples = sum(self.sizes)
        loss_sum = float((losses * torch.tensor(self.sizes, dtype=torch.float64)).sum())
        seconds = max(time.perf_counter() - self.start, 1e-9)
        return {"loss": loss_sum / samples, "loss_sum": loss_sum,
                "samples_per_s": samples / seconds}
