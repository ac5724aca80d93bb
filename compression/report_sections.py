"""The typed sections of the job report (``compression.report.JobReport``).

Each section reads its JSON strictly: a missing or misspelt key, or a value of the wrong
type, raises ``ValueError`` naming the key, so a renamed field fails loudly at the reader
instead of silently turning a view of the report off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from compression.guardrails import (Check, GroupResult, StageVerdict, first_failing_stage,
                                    summarize)
from compression.spec import GuardrailSpec, spec_to_dict

__all__ = ["DataSummary", "SplitSummary", "TrainingSummary", "TeacherSummary", "ExportRecord",
           "FileRecord", "GuardrailsReport", "NOT_JUDGED", "stage_label", "group_label",
           "blocks", "fields_of", "as_int", "as_float", "as_str", "opt", "ArtifactTiming",
           "ArtifactChoice", "MixedPrecisionSummary"]

NOT_JUDGED = "NOT JUDGED"  # shown where no rule judges a stage or subgroup: never a PASS


def stage_label(verdict: StageVerdict) -> str:
    """The stage's verdict as every view shows it: NOT JUDGED when no rule checked it."""
    return verdict.verdict if verdict.checks else NOT_JUDGED


def group_label(group: GroupResult) -> str:
    return group.verdict or NOT_JUDGED


def blocks(stage: StageVerdict, check: Check) -> bool:
    """Whether ``check`` keeps its stage from shipping (a FAIL, or an INSUFFICIENT_EVIDENCE
    the policy blocks on): the stage's own rule, so every view agrees with ``passed``."""
    return check in stage.failing_checks


# -- strict readers ------------------------------------------------------------------------

def fields_of(data: Any, what: str, required: Iterable[str],
              optional: Iterable[str] = ()) -> Mapping[str, Any]:
    """``data`` as a mapping with every ``required`` key and no key outside both lists."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, not {type(data).__name__}")
    required = list(required)
    missing = [k for k in required if k not in data]
    unknown = [k for k in data if k not in required and k not in set(optional)]
    if missing or unknown:
        raise ValueError(f"{what}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unknown field(s) {', '.join(map(str, unknown))}"] if unknown else [])))
    return data


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {value!r:.40}")
    return value


def as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, not {value!r:.40}")
    return float(value)


def as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r:.40}")
    return value


def opt(read: Any, value: Any, what: str) -> Any:
    return None if value is None else read(value, what)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object, not {type(value).__name__}")
    return dict(value)


def _counts(value: Any, what: str) -> dict[str, int]:
    return {str(k): as_int(v, f"{what}.{k}") for k, v in _object(value, what).items()}


# -- sections ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitSummary:
    size: int
    class_counts: dict[str, int]
    group_counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "class_counts": dict(self.class_counts),
                "group_counts": dict(self.group_counts)}

    @classmethod
    def from_dict(cls, data: Any, what: str = "split") -> SplitSummary:
        d = fields_of(data, what, ("size", "class_counts", "group_counts"))
        return cls(as_int(d["size"], f"{what}.size"),
                   _counts(d["class_counts"], f"{what}.class_counts"),
                   _counts(d["group_counts"], f"{what}.group_counts"))


@dataclass(frozen=True)
class DataSummary:
    """What the job's data held: names, the input shape [C, H, W] and each split's counts;
    loading: how it was read, ``in_memory`` or ``streaming`` (None in older reports)."""

    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    splits: dict[str, SplitSummary]
    loading: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"class_names": list(self.class_names), "group_names": list(self.group_names),
               "input_shape": list(self.input_shape),
               "splits": {k: s.to_dict() for k, s in self.splits.items()}}
        return out if self.loading is None else {**out, "loading": self.loading}

    @classmethod
    def from_dict(cls, data: Any) -> DataSummary:
        d = fields_of(data, "data", ("class_names", "group_names", "input_shape", "splits"),
                      ("loading",))
        loading = d.get("loading")
        if loading not in (None, "in_memory", "streaming"):
            raise ValueError(f"data.loading is {loading!r}; expected in_memory or streaming")
        names = {k: tuple(as_str(v, f"data.{k}[]") for v in _list(d[k], f"data.{k}"))
                 for k in ("class_names", "group_names")}
        return cls(names["class_names"], names["group_names"],
                   tuple(as_int(v, "data.input_shape[]")
                         for v in _list(d["input_shape"], "data.input_shape")),
                   {str(k): SplitSummary.from_dict(v, f"data.splits.{k}")
                    for k, v in _object(d["splits"], "data.splits").items()}, loading)


@dataclass(frozen=True)
class TrainingSummary:
    epochs_run: int
    resumed_from_epoch: int
    final_loss: float | None
    samples_per_s: float | None
    seconds: float
    teacher_cache: bool
    loss_state: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"epochs_run": self.epochs_run, "resumed_from_epoch": self.resumed_from_epoch,
                "final_loss": self.final_loss, "samples_per_s": self.samples_per_s,
                "seconds": self.seconds, "teacher_cache": self.teacher_cache,
                "loss_state": dict(self.loss_state)}

    @classmethod
    def from_dict(cls, data: Any) -> TrainingSummary:
        keys = ("epochs_run", "resumed_from_epoch", "final_loss", "samples_per_s", "seconds",
                "teacher_cache", "loss_state")
        d = fields_of(data, "training", keys)
        if not isinstance(d["teacher_cache"], bool):
            raise ValueError("training.teacher_cache must be true or false")
        return cls(as_int(d["epochs_run"], "training.epochs_run"),
                   as_int(d["resumed_from_epoch"], "training.resumed_from_epoch"),
                   opt(as_float, d["final_loss"], "training.final_loss"),
                   opt(as_float, d["samples_per_s"], "training.samples_per_s"),
                   as_float(d["seconds"], "training.seconds"), d["teacher_cache"],
                   _object(d["loss_state"], "training.loss_state"))


@dataclass(frozen=True)
class TeacherSummary:
    sha256: str
    reliability: dict[str, Any]
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "reliability": self.reliability,
                "calibration": self.calibration}

    @classmethod
    def from_dict(cls, data: Any) -> TeacherSummary:
        d = fields_of(data, "teacher", ("sha256", "reliability", "calibration"))
        return cls(as_str(d["sha256"], "teacher.sha256"),
                   _object(d["reliability"], "teacher.reliability"),
                   opt(_object, d["calibration"], "teacher.calibration"))


@dataclass(frozen=True)
class ExportRecord:
    """One exported artifact: status BUILT, SKIPPED or FAILED, its file name, whether it
    passed its guardrails (None when it was not judged), why it did not ship, and the
    exporter's own figures (parity, calibration, engine) in ``details``."""

    status: str
    path: str | None = None
    passed: bool | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("status", "path", "passed", "reason")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "path": self.path, "passed": self.passed,
                "reason": self.reason, **self.details}

    @classmethod
    def from_dict(cls, data: Any) -> ExportRecord:
        d = _object(data, "export")
        fields_of({k: d[k] for k in cls._KEYS if k in d}, "export", cls._KEYS)
        if d["passed"] is not None and not isinstance(d["passed"], bool):
            raise ValueError("export.passed must be true, false or null")
        return cls(as_str(d["status"], "export.status"), opt(as_str, d["path"], "export.path"),
                   d["passed"], as_str(d["reason"], "export.reason"),
                   {k: v for k, v in d.items() if k not in cls._KEYS})


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Any) -> FileRecord:
        d = fields_of(data, "file", ("sha256", "bytes"))
        return cls(as_str(d["sha256"], "file.sha256"), as_int(d["bytes"], "file.bytes"))


@dataclass(frozen=True)
class ArtifactTiming:
    """One artifact's file size and latency (None when it was not timed) and whether it
    passed its guardrails."""

    bytes: int
    median_ms: float | None
    max_ms: float | None
    passed: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "median_ms": self.median_ms, "max_ms": self.max_ms,
                "passed": self.passed}

    @classmethod
    def from_dict(cls, data: Any, what: str = "artifact") -> ArtifactTiming:
        d = fields_of(data, what, ("bytes", "median_ms", "max_ms", "passed"))
        if d["passed"] is not None and not isinstance(d["passed"], bool):
            raise ValueError(f"{what}.passed must be true, false or null")
        return cls(as_int(d["bytes"], f"{what}.bytes"),
                   opt(as_float, d["median_ms"], f"{what}.median_ms"),
                   opt(as_float, d["max_ms"], f"{what}.max_ms"), d["passed"])


@dataclass(frozen=True)
class ArtifactChoice:
    """How the shipped artifact was chosen: the fastest that passed, every artifact timed
    on ``device`` at ``batch`` images per call (``warmup`` untimed calls, then the median
    of ``repeats``)."""

    batch: int
    warmup: int
    repeats: int
    device: str
    artifacts: dict[str, ArtifactTiming]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "warmup": self.warmup, "repeats": self.repeats,
                "device": self.device,
                "artifacts": {k: v.to_dict() for k, v in self.artifacts.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> ArtifactChoice:
        d = fields_of(data, "artifact_choice", ("batch", "warmup", "repeats", "device",
                                                "artifacts"))
        return cls(*(as_int(d[k], f"artifact_choice.{k}") for k in ("batch", "warmup",
                                                                      "repeats")),
                   as_str(d["device"], "artifact_choice.device"),
                   {str(k): ArtifactTiming.from_dict(v, f"artifact_choice.artifacts.{k}")
                    for k, v in _object(d["artifacts"], "artifact_choice.artifacts").items()})


_SENSITIVITY = ("node", "op_type", "flip_rate", "logit_error")
_CANDIDATE = ("float_nodes", "passed", "verdicts", "failing_subgroups", "latency_ms")


@dataclass(frozen=True)
class MixedPrecisionSummary:
    """The search for the fewest nodes to keep in float when INT8 broke a floor
    (``compression.export.mixed_precision``): status found, stopped or gave_up, why, the
    per-node sensitivity, every candidate judged (float nodes, latency, verdict per
    subgroup) and the nodes of the chosen one."""

    status: str
    reason: str
    failing_subgroups: tuple[str, ...]
    probe_images: int
    float_nodes: tuple[str, ...]
    sensitivity: tuple[dict[str, Any], ...]
    candidates: tuple[dict[str, Any], ...]
    seconds: float
    max_candidates: int
    max_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "failing_subgroups": list(self.failing_subgroups),
                "probe_images": self.probe_images, "float_nodes": list(self.float_nodes),
                "sensitivity": [dict(s) for s in self.sensitivity],
                "candidates": [dict(c) for c in self.candidates], "seconds": self.seconds,
                "max_candidates": self.max_candidates, "max_seconds": self.max_seconds}

    @classmethod
    def from_dict(cls, data: Any) -> MixedPrecisionSummary:
        w = "mixed_precision"
        d = fields_of(data, w, ("status", "reason", "failing_subgroups", "probe_images",
                                "float_nodes", "sensitivity", "candidates", "seconds",
                                "max_candidates", "max_seconds"))
        rows = {k: tuple(dict(fields_of(r, f"{w}.{k}[]", keys)) for r in _list(d[k], f"{w}.{k}"))
                for k, keys in (("sensitivity", _SENSITIVITY), ("candidates", _CANDIDATE))}
        names = {k: tuple(as_str(v, f"{w}.{k}[]") for v in _list(d[k], f"{w}.{k}"))
                 for k in ("failing_subgroups", "float_nodes")}
        return cls(as_str(d["status"], f"{w}.status"), as_str(d["reason"], f"{w}.reason"),
                   names["failing_subgroups"], as_int(d["probe_images"], f"{w}.probe_images"),
                   names["float_nodes"], rows["sensitivity"], rows["candidates"],
                   as_float(d["seconds"], f"{w}.seconds"),
                   as_int(d["max_candidates"], f"{w}.max_candidates"),
                   as_float(d["max_seconds"], f"{w}.max_seconds"))


@dataclass(frozen=True)
class GuardrailsReport:
    """The policy and every judged stage, in the order judged (student, then artifacts).

    ``first_failing_stage`` and ``summary`` are derived, so they can never disagree with the
    stages; the policy is the job spec's own (``JobReport`` checks that they are equal).
    """

    policy: GuardrailSpec
    stages: tuple[StageVerdict, ...]

    @property
    def first_failing_stage(self) -> str | None:
        return first_failing_stage(self.stages)

    @property
    def summary(self) -> str:
        return summarize(self.stages)

    def stage(self, name: str | None) -> StageVerdict | None:
        return next((v for v in self.stages if v.stage == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": spec_to_dict(self.policy),
                "first_failing_stage": self.first_failing_stage, "summary": self.summary,
                "stages": [v.to_dict() for v in self.stages]}

    @classmethod
    def from_dict(cls, data: Any, policy: GuardrailSpec) -> GuardrailsReport:
        d = fields_of(data, "guardrails", ("policy", "first_failing_stage", "summary", "stages"))
        if not _same_policy(d["policy"], spec_to_dict(policy)):
            raise ValueError("guardrails.policy differs from spec.guardrails; the report was "
                             "edited or is corrupt")
        stages = tuple(StageVerdict.from_dict(v) for v in _list(d["stages"], "guardrails.stages"))
        out = cls(policy, stages)
        if d["first_failing_stage"] != out.first_failing_stage:
            raise ValueError(f"guardrails.first_failing_stage is {d['first_failing_stage']!r} "
                             f"but the stages say {out.first_failing_stage!r}")
        return out  # the summary's words may differ between versions: it is recomputed


# Policy fields added after reports were first written: an older report's policy lacks
# them, and its spec, read back with their defaults, holds the same values.
_LATER_POLICY_FIELDS = ("discovered_slices", "slice_discovery")


def _same_policy(stored: Any, current: dict[str, Any]) -> bool:
    if not isinstance(stored, Mapping):
        return False
    absent = {k: current[k] for k in _LATER_POLICY_FIELDS if k not in stored and k in current}
    return {**absent, **stored} == current


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list, not {type(value).__name__}")
    return value
