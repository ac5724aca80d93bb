"""The job spec: frozen dataclasses, parsed from a YAML/JSON mapping and validated at once.

Keys follow the proto JSON mapping: ``snake_case`` or ``lowerCamelCase`` are both accepted.
Every problem in a spec is collected and raised together in one ``InvalidInput``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compression.errors import InvalidInput
from compression.safe_yaml import load_yaml_file
from compression.typed import choice as _choice
from compression.typed import choices as _choices
from compression.typed import parse_into
from compression.typed import ranged as _num

__all__ = [
    "LongTailSpec", "SUBGROUP_KEYS", "SubgroupSpec", "PreprocessSpec", "DataSpec", "TeacherSpec",
    "StudentSpec", "TrainingSpec", "MitigationSpec", "GuardrailSpec", "ExportSpec", "JobSpec",
    "parse_spec", "read_job_file", "load_job", "spec_to_dict",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


_SEED = dict(lo=0, hi=2**32 - 1)  # numpy's legacy seeding takes 32 bits
_COUNT = dict(lo=0, hi=2**31 - 1)
_BATCH = dict(lo=1, hi=2**20)


@dataclass(frozen=True)
class LongTailSpec:
    """Class-imbalanced subsampling of the training set (CIFAR-LT style)."""

    profile: str = _choice("none", "exp", "step", default="none")
    imbalance: float = _num(1.0, 1.0, 1e6)  # n_max / n_min

    def problems(self) -> list[str]:
        return []


SUBGROUP_KEYS = ("class", "frequency", "attribute", "map")
SHARES_TOLERANCE = 1e-3  # how far from 1 hand-typed shares may sum (0.333 three times)


def _share_problems(shares: dict[str, float]) -> list[str]:
    """What is wrong with ``subgroups.shares`` as numbers (its names are checked against the
    data when it is read)."""
    bad = {k: v for k, v in shares.items() if not 0 <= v <= 1}  # NaN fails too
    if bad:
        return [f"subgroups.shares {bad!r:.200}: every share must be in [0, 1]"]
    total = sum(shares.values())
    if shares and abs(total - 1) > SHARES_TOLERANCE:
        return [f"subgroups.shares sum to {total:.4g}; they must sum to 1 (each subgroup's "
                "share of the population the model serves)"]
    return []


@dataclass(frozen=True)
class SubgroupSpec:
    """How samples map to the subgroups that evaluation and guardrails report on.

    One key (``by``) names each group by its value ("Shirt", "tail"). With ``also_by`` the
    keys are crossed: every key's groups are reported as ``key=value`` and every non-empty
    intersection as ``class=Shirt & attribute=night``; training sees the intersections.
    """

    by: str = _choice(*SUBGROUP_KEYS, default="class")
    also_by: tuple[str, ...] = _choices(*SUBGROUP_KEYS)  # more keys crossed with by: [attribute]
    # frequency: classes ranked by training count and split into head/medium/tail thirds,
    # unless both thresholds are set (head: count >= head_min_count, tail: count <= tail_max_count).
    head_min_count: int = _num(0, **_COUNT)
    tail_max_count: int = _num(0, **_COUNT)
    # map: class name (or class index as a string) -> group name; every class must be mapped.
    mapping: dict[str, str] = field(default_factory=dict)
    # Each subgroup's share of the population the model will serve (with also_by: each
    # intersection's), when the holdout's mix differs from it, e.g. a holdout that
    # oversamples a minority to measure it: auto ranks its candidates by holdout accuracy
    # weighted to these shares. Empty: the holdout's own mix.
    shares: dict[str, float] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key, ``by`` first, in the order intersection names list them."""
        return (self.by, *self.also_by)

    def problems(self) -> list[str]:
        out = []
        repeated = sorted(k for k, n in Counter(self.keys).items() if n > 1)
        if repeated:
            out.append(f"{', '.join(repeated)} given more than once in by and also_by; "
                       "name each key once")
        uses = f"by is {self.by!r}" if not self.also_by else f"keys are {list(self.keys)}"
        if "map" in self.keys and not self.mapping:
            where = "by is 'map'" if self.by == "map" else "also_by has 'map'"
            out.append(f"{where} but mapping is empty; give {{class_name: group_name, ...}}")
        if "map" not in self.keys and self.mapping:
            out.append(f"mapping is only used with by: map ({uses})")
        out += _share_problems(self.shares)
        if (self.head_min_count > 0) != (self.tail_max_count > 0):
            out.append("set both head_min_count and tail_max_count, or neither")
        elif self.head_min_count and self.tail_max_count >= self.head_min_count:
            out.append(f"tail_max_count ({self.tail_max_count}) must be below "
                       f"head_min_count ({self.head_min_count})")
        return out


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how it is split into train / holdout / test."""

    source: str = _choice("fashion-mnist", "npz", "imagefolder", "manifest", "webdataset",
                          default="fashion-mnist")
    path: str = ""  # train data; for fashion-mnist the idx directory (Debian's by default)
    test_path: str = ""
    holdout_path: str = ""  # when empty, holdout is carved from train (stratified, seeded)
    holdout_fraction: float = _num(0.1, 0.0, 1.0, hi_open=True)
    long_tail: LongTailSpec = field(default_factory=LongTailSpec)
    subgroups: SubgroupSpec = field(default_factory=SubgroupSpec)
    max_train: int = _num(0, **_COUNT)  # 0: all; otherwise a stratified, seeded subsample
    max_test: int = _num(0, **_COUNT)
    image_size: int = _num(0, 0, 8192)  # imagefolder/manifest: resize to this square size; 0 keeps
    channels: int = _num(0, 0, 3)  # 0 keeps the stored channels; 1 or 3 converts
    seed: int = _num(0, **_SEED)
    # uint8 pixels -> model input (resize, crop, channel order, mean/std); see data/preprocess.py
    preprocess: PreprocessSpec = field(default_factory=lambda: PreprocessSpec())
    # imagefolder / manifest / webdataset: hold the decoded splits in memory, or stream them
    # from disk through DataLoader workers; auto streams when they would pass the budget.
    in_memory: str = _choice("auto", "always", "never", default="auto")
    memory_budget_mib: int = _num(2048, 0, 2**20)  # decoded bytes auto keeps in memory
    workers: int = _num(2, 0, 64)  # DataLoader worker processes of the streaming path

    def problems(self) -> list[str]:
        out = []
        if self.in_memory == "never" and self.source in ("fashion-mnist", "npz"):
            out.append(f"in_memory 'never' streams image files and shards; source "
                       f"{self.source!r} is one array file and is always held in memory: "
                       "use auto or always")
        if self.source != "fashion-mnist" and not self.path:
            out.append(f"path is required for source {self.source!r}")
        if self.source != "fashion-mnist" and not self.test_path:
            out.append(f"test_path is required for source {self.source!r}")
        if not 0 < self.holdout_fraction < 1 and not self.holdout_path:
            out.append(f"holdout_fraction is {self.holdout_fraction}; it must be in (0, 1)")
        if self.channels not in (0, 1, 3):
            out.append(f"channels is {self.channels}; use 0 (as stored), 1 or 3")
        known = self.channels or (1 if self.source == "fashion-mnist" else 0)
        if known:  # otherwise checked against the images when they are read
            out += [f"preprocess: {p}" for p in self.preprocess.channel_problems(known)]
        side = 28 if self.source == "fashion-mnist" else self.image_size  # known sizes
        if side and self.source in ("fashion-mnist", "imagefolder", "manifest", "webdataset"):
            out += self.preprocess.size_problems(side, side)
        return out

    @property
    def resolved_path(self) -> str:
        return self.path or (FASHION_MNIST_DIR if self.source == "fashion-mnist" else "")


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher checkpoint. Formats: .pt2 (torch.export), TorchScript, ONNX, or weights+arch."""

    path: str = ""
    format: str = _choice("auto", "export", "torchscript", "onnx", "weights", default="auto")
    arch: str = ""  # required for format 'weights' (safetensors or a weights-only state dict)
    width: float = _num(1.0, 0.0, 16.0, lo_open=True)

    def problems(self) -> list[str]:
        out = []
        if not self.path:
            out.append("path is required: the teacher checkpoint to distill from")
        is_weights = self.format == "weights" or (
            self.format == "auto" and Path(self.path).suffix in (".safetensors", ".pth"))
        if is_weights and not self.arch:
            out.append("arch is required for a weights checkpoint (e.g. arch: resnet20)")
        return out


@dataclass(frozen=True)
class StudentSpec:
    """The student: a zoo arch or timm/<name>; ``init``: weights to start from (safetensors
    or a weights-only state dict, local path or URI), the head replaced when the class count
    differs."""

    arch: str = "tiny_cnn"
    width: float = _num(1.0, 0.0, 16.0, lo_open=True)
    init: str = ""

    def problems(self) -> list[str]:
        return [] if self.arch.strip() else ["arch is empty; name a student architecture"]


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int = _num(5, 1, 100_000)
    batch_size: int = _num(128, **_BATCH)
    optimizer: str = _choice("sgd", "adamw", default="sgd")
    lr: float = _num(0.05, 0.0, 1e6, lo_open=True)  # a diverging lr is reported by training
    momentum: float = _num(0.9, 0.0, 1.0, hi_open=True)
    weight_decay: float = _num(5e-4, 0.0, 1.0)
    schedule: str = _choice("cosine", "step", "constant", default="cosine")
    warmup_epochs: int = _num(0, 0, 100_000)
    step_milestones: tuple[int, ...] = ()  # epochs at which a step schedule multiplies by gamma
    step_gamma: float = _num(0.1, 0.0, 1.0, lo_open=True)
    augment: str = _choice("none", "crop", "crop_flip", default="none")
    amp: str = _choice("auto", "off", "bf16", "fp16", default="auto")  # auto: bf16 on CUDA
    channels_last: bool = True  # student and module teachers, CPU and CUDA
    device: str = _choice("auto", "cpu", "cuda", default="auto")
    teacher_cache: str = _choice("auto", "on", "off", default="auto")  # auto: on without augment
    seed: int = _num(0, **_SEED)
    eval_batch_size: int = _num(512, **_BATCH)
    progress_every_steps: int = _num(20, 1, 2**31 - 1)
    # RAM the cached teacher logits may take; a larger cache spills to a file in the job's dir
    teacher_cache_ram_mib: int = _num(1024, 0, 2**20)

    def problems(self) -> list[str]:
        out = []
        if not self.warmup_epochs < self.epochs:
            out.append(f"warmup_epochs is {self.warmup_epochs}; it must be in [0, epochs)")
        if self.schedule == "step" and not self.step_milestones:
            out.append("schedule 'step' needs step_milestones, e.g. [30, 60]")
        out += [f"step_milestones[{i}] is {m}; it must be an epoch in [1, epochs]"
                for i, m in enumerate(self.step_milestones) if not 1 <= m <= self.epochs]
        if self.teacher_cache == "on" and self.augment != "none":
            out.append("teacher_cache 'on' needs augment 'none': cached logits are for fixed inputs")
        return out


@dataclass(frozen=True)
class MitigationSpec:
    """The distillation objective. ``one_hot`` ignores the teacher; ``kd`` is standard KD."""

    name: str = "kd"  # or "auto": train `candidates` (none: the recommended set), keep one
    alpha: float = _num(0.5, 0.0, 1.0)  # weight of the distillation term
    temperature: float = _num(4.0, 0.0, 100.0, lo_open=True)
    params: dict[str, Any] = field(default_factory=dict)  # mitigation-specific parameters
    calibrate_teacher: bool = False  # per-class post-hoc calibration on holdout first
    candidates: tuple[MitigationSpec, ...] = ()  # for name "auto"
    selection_epochs: int = _num(0, 0, 100_000)  # epochs per candidate for "auto"; 0: as long as the student

    def problems(self) -> list[str]:
        out = []
        if self.name != "auto" and self.candidates:
            out.append(f"candidates are only used with name 'auto' (name is {self.name!r})")
        if any(c.name == "auto" for c in self.candidates):
            out.append("a candidate cannot itself be 'auto'")
        return out


@dataclass(frozen=True)
class SliceRuleSpec:
    """Harm shown on a discovered slice (a FAIL) blocks shipping, as on a named subgroup.

    max_drop: the largest drop (reference accuracy minus candidate accuracy) allowed on a
    slice. min_size: slices with fewer test examples are not judged."""

    max_drop: float = _num(0.05, 0.0, 1.0)
    min_size: int = _num(30, 1, 2**31 - 1)

    def problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class SliceDiscoverySpec:
    """Search for harmed slices nobody named (docs/guardrails.md, "Discovered slices").

    Runs whenever the job has a reference to compare with; ``enabled: false`` turns it off.
    """

    enabled: bool = True
    clusters: int = _num(16, 2, 1000)  # k-means clusters fitted on the holdout split
    max_slices: int = _num(5, 1, 100)  # clusters brought to the test split and judged
    components: int = _num(16, 1, 1024)  # principal axes of the features kept
    representation: str = _choice("auto", "teacher", "student", default="auto")

    def problems(self) -> list[str]:
        if self.max_slices > self.clusters:
            return [f"max_slices ({self.max_slices}) must not exceed clusters "
                    f"({self.clusters})"]
        return []


@dataclass(frozen=True)
class GuardrailSpec:
    """Per-subgroup accuracy floors checked on the student and on every exported artifact.

    Accuracies and drops are fractions (0.05 = 5 points). A drop is reference accuracy minus
    candidate accuracy for the same subgroup; ``None`` turns a rule off.
    """

    min_accuracy: float = _num(0.0, 0.0, 1.0)  # absolute floor for every subgroup
    min_accuracy_by_group: dict[str, float] = field(default_factory=dict)  # overrides
    max_drop_vs_teacher: float | None = _num(None, 0.0, 1.0)
    max_drop_vs_one_hot: float | None = _num(None, 0.0, 1.0)  # trains a one-hot baseline
    min_worst_group_accuracy: float | None = _num(None, 0.0, 1.0)
    max_group_gap: float | None = _num(None, 0.0, 1.0)  # best minus worst subgroup accuracy
    min_samples: int = _num(30, 1, 2**31 - 1)  # fewer test samples: INSUFFICIENT_EVIDENCE
    block_on_insufficient_evidence: bool = True
    # Every exported artifact against the student it came from, paired on the test examples.
    max_drop_vs_student: float | None = _num(0.01, 0.0, 1.0)
    # one-sided level of every PASS, and 1 - the family-wise rate of false FAILs
    confidence: float = _num(0.95, 0.5, 1.0, lo_open=True, hi_open=True)
    multiplicity: str = _choice("holm", "bonferroni", "none", default="holm")
    # A FAIL on a slice found by discovery blocks shipping; None: slices are only reported.
    discovered_slices: SliceRuleSpec | None = None
    slice_discovery: SliceDiscoverySpec = field(default_factory=SliceDiscoverySpec)

    def problems(self) -> list[str]:
        return [f"min_accuracy_by_group.{g} is {v}; it must be in [0, 1]"
                for g, v in self.min_accuracy_by_group.items() if v is not None and not 0 <= v <= 1]


@dataclass(frozen=True)
class ExportSpec:
    """Which artifacts to build; each is validated against the guardrails."""

    onnx: bool = True
    int8: bool = True  # static QDQ quantization with onnxruntime (needs onnx)
    tensorrt: str = _choice("auto", "off", "required", default="auto")  # auto: when installed
    tensorrt_precision: str = _choice("fp16", "int8", "fp32", default="fp16")
    opset: int = _num(17, 13, 21)
    calibration_per_group: int = _num(32, 1, 100_000)  # INT8 calibration images per subgroup
    parity_max_abs_diff: float = _num(1e-3, 0.0, 1e3, lo_open=True)  # ONNX FP32 vs PyTorch
    parity_min_top1_agreement: float = _num(0.99, 0.0, 1.0)
    min_batch: int = _num(1, **_BATCH)
    opt_batch: int = _num(32, **_BATCH)
    max_batch: int = _num(256, **_BATCH)
    # INT8 that breaks a floor the FP32 model holds: search for the fewest nodes to keep in
    # float (docs/guardrails.md, "Mixed precision"), bounded in models judged and in time
    mixed_precision: bool = True
    mixed_max_candidates: int = _num(24, 1, 10_000)
    mixed_max_seconds: float = _num(600.0, 0.0, 86_400.0, lo_open=True)
    # the fastest artifact that passed ships, timed at opt_batch on the worker: untimed
    # warm-up calls, then the median of the timed ones
    latency_warmup: int = _num(5, 0, 10_000)
    latency_repeats: int = _num(20, 1, 100_000)

    def problems(self) -> list[str]:
        out = []
        if (self.int8 or self.tensorrt != "off") and not self.onnx:
            out.append("int8 and tensorrt are built from the ONNX model: set onnx: true")
        if self.tensorrt_precision == "int8" and self.tensorrt != "off" and not self.int8:
            out.append("tensorrt_precision int8 builds from the INT8 QDQ model: set int8: true")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            out.append(f"batch profile must satisfy 1 <= min_batch <= opt_batch <= max_batch "
                       f"(got {self.min_batch}, {self.opt_batch}, {self.max_batch})")
        return out


@dataclass(frozen=True)
class JobSpec:
    name: str = "job"
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    data: DataSpec = field(default_factory=DataSpec)
    student: StudentSpec = field(default_factory=StudentSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    mitigation: MitigationSpec = field(default_factory=MitigationSpec)
    guardrails: GuardrailSpec = field(default_factory=GuardrailSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    output_dir: str = ""  # default: runs/<name>
    output_uri: str = ""  # s3://, gs:// or file://: the bundle is uploaded there, report.json last

    def problems(self) -> list[str]:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            return [f"name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'"]
        return []

    @property
    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def parse_spec(data: Any) -> JobSpec:
    """Build and validate a ``JobSpec``; raise ``InvalidInput`` listing every problem."""
    problems: list[str] = []
    spec = parse_into(JobSpec, data, "", problems)
    if spec is not None:
        # names from the library's tables; imported here because those modules import this one
        from compression.jobcheck import job_problems
        problems += job_problems(spec)
    if problems:
        raise InvalidInput(problems, "invalid job spec")
    return spec


def read_job_file(path: str | Path) -> Any:
    """The plain data of a job YAML (or JSON) file, unvalidated but a mapping.

    The file is read with bounded size, nesting and alias expansion (``load_yaml_file``); an
    empty file is refused here, since every field has a default and an empty job would run
    the whole default data set before failing on what it lacks."""
    data = load_yaml_file(path, "job file")
    if data is None or data == {}:
        raise InvalidInput(f"the job file {path} is empty; start from one in examples/")
    if not isinstance(data, dict):
        raise InvalidInput(f"the job file {path} must be a mapping of settings (name:, "
                           f"teacher:, data: ...), not a {type(data).__name__}")
    return data


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job YAML (or JSON) file."""
    return parse_spec(read_job_file(path))


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """The spec as plain data (for reports), tuples as lists."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


# Last: compression.data's package imports this module (DataSpec), so the section it defines
# can only be imported once everything above exists.
from compression.data.preprocess import PreprocessSpec  # noqa: E402
