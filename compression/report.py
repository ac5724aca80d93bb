"""The job report: one versioned type for report.json, which every view of a job reads.

The pipeline builds a ``JobReport`` and the bundle writes ``to_dict()`` as report.json; the
CLI, the model card, the chart, the service's metrics and the benchmarks read it back with
``from_dict`` / ``load``, which validate every section and raise ``InvalidInput`` naming
each problem. A report written by a newer teachers-pet (``schema_version`` above
``SCHEMA_VERSION``) is refused with that reason rather than half read.

Versions: 1 is the layout written before the field existed (no ``schema_version`` key);
it is read as is. 2 adds ``schema_version``. The number changes when a reader of the
previous version would misread a report (a key renamed, removed or its meaning changed),
not when an optional section is added.

Adding a section is one line in ``JobReport``: a field declared with ``section(codec,
default)``; ``to_dict`` and ``from_dict`` follow the declarations. Top-level keys that no
declaration names are kept in ``extra`` and written back, so nothing a newer writer added
is dropped by a round trip.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from compression.errors import InvalidInput
from compression.evaluation.jsonio import load_json
from compression.evaluation.report import EvalReport
from compression.guardrails import StageVerdict
from compression.models.init_weights import StudentInit
from compression.guardrails.slices import SliceDiscovery
from compression.report_sections import (NOT_JUDGED, DataSummary, ExportRecord, FileRecord,
                                         GuardrailsReport, SplitSummary, TeacherSummary,
                                         TrainingSummary, as_float, as_int, as_str, blocks,
                                         group_label, stage_label)
from compression.spec import JobSpec, parse_spec, spec_to_dict
from compression.report_sections import ArtifactChoice, MixedPrecisionSummary

__all__ = ["JobReport", "SCHEMA_VERSION", "SUCCEEDED", "REJECTED", "NOT_JUDGED", "Codec",
           "section", "stage_label", "group_label", "blocks", "DataSummary", "TrainingSummary",
           "SplitSummary", "TeacherSummary", "ExportRecord", "FileRecord", "GuardrailsReport"]

SCHEMA_VERSION = 2
SUCCEEDED, REJECTED = "SUCCEEDED", "REJECTED"
_LEGACY = 1  # a report without schema_version
_DERIVED = ("schema_version", "status", "deployable")  # written by to_dict, never stored


@dataclass(frozen=True)
class Codec:
    """How one section goes to JSON and back. ``load(value, loaded)`` gets the sections
    declared before it, already loaded (the guardrails need the spec's policy)."""

    load: Callable[[Any, Mapping[str, Any]], Any]
    dump: Callable[[Any], Any]


def typed(cls: Any) -> Codec:
    """A section type with ``to_dict()`` and a ``from_dict(data)`` class method."""
    return Codec(lambda v, _: cls.from_dict(v), lambda x: x.to_dict())


def optional(codec: Codec) -> Codec:
    return Codec(lambda v, ctx: None if v is None else codec.load(v, ctx),
                 lambda x: None if x is None else codec.dump(x))


def mapping(codec: Codec) -> Codec:
    def load(value: Any, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"must be a JSON object, not {type(value).__name__}")
        return {str(k): _at(k, codec.load, v, ctx) for k, v in value.items()}
    return Codec(load, lambda m: {k: codec.dump(v) for k, v in m.items()})


def sequence(codec: Codec) -> Codec:
    def load(value: Any, ctx: Mapping[str, Any]) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, not {type(value).__name__}")
        return tuple(_at(i, codec.load, v, ctx) for i, v in enumerate(value))
    return Codec(load, lambda xs: [codec.dump(x) for x in xs])


def _at(key: Any, load: Callable[[Any, Mapping[str, Any]], Any], value: Any,
        ctx: Mapping[str, Any]) -> Any:
    try:
        return load(value, ctx)
    except (ValueError, TypeError, KeyError, InvalidInput) as exc:
        raise ValueError(f"[{key!r}]: {_why(exc)}") from exc


def _scalar(read: Callable[[Any, str], Any]) -> Codec:
    return Codec(lambda v, _: read(v, "the value"), lambda x: x)


def _json_object(value: Any, ctx: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a JSON object, not {type(value).__name__}")
    return json.loads(json.dumps(value))  # a private copy: the report is immutable


STR, INT, FLOAT = _scalar(as_str), _scalar(as_int), _scalar(as_float)
JSON_OBJECT = Codec(_json_object, lambda x: json.loads(json.dumps(x)))
SPEC = Codec(lambda v, _: parse_spec(v), spec_to_dict)
GUARDRAILS = Codec(lambda v, ctx: GuardrailsReport.from_dict(v, _spec_of(ctx).guardrails),
                   lambda g: g.to_dict())


def _spec_of(ctx: Mapping[str, Any]) -> JobSpec:
    if "spec" not in ctx:
        raise ValueError("cannot be read without a valid spec section")
    return ctx["spec"]


def section(codec: Codec, default: Any = dataclasses.MISSING, *,
            omit_empty: bool = False) -> Any:
    """A report section: its codec, and its default when older reports lack it (none:
    required). ``omit_empty``: left out of the JSON when None or empty."""
    meta = {"codec": codec, "omit_empty": omit_empty}
    if isinstance(default, (dict, tuple)) and default:
        raise ValueError("a section's default must be empty")
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class JobReport:
    """Everything a finished job reports; report.json is ``to_dict()``.

    ``status`` (SUCCEEDED when something ships) and ``deployable`` are derived from
    ``shipped``, which may only name a judged stage that passed its guardrails.
    ``harm_diagnosis`` and ``uploads`` are optional sections, JSON objects until they get
    types of their own; other top-level keys are kept in ``extra``.
    """

    schema_version: ClassVar[int] = SCHEMA_VERSION

    spec: JobSpec = section(SPEC)
    data: DataSummary = section(typed(DataSummary))
    evaluations: dict[str, EvalReport] = section(mapping(typed(EvalReport)))
    guardrails: GuardrailsReport = section(GUARDRAILS)
    shipped: str | None = section(optional(STR), None)
    environment: dict[str, Any] = section(JSON_OBJECT, {})
    student_parameters: int | None = section(optional(INT), None)
    training: TrainingSummary | None = section(optional(typed(TrainingSummary)), None)
    teacher: TeacherSummary | None = section(optional(typed(TeacherSummary)), None)
    student_init: StudentInit | None = section(optional(typed(StudentInit)), None,
                                               omit_empty=True)
    selection: dict[str, Any] | None = section(optional(JSON_OBJECT), None)
    mitigation: dict[str, Any] | None = section(optional(JSON_OBJECT), None)
    # what a client sends the artifacts and the preprocessing they run (data.preprocess)
    input_contract: dict[str, Any] | None = section(optional(JSON_OBJECT), None,
                                                    omit_empty=True)
    guardrail_preflight: tuple[str, ...] = section(sequence(STR), ())
    exports: dict[str, ExportRecord] = section(mapping(typed(ExportRecord)), {})
    stage_seconds: dict[str, float] = section(mapping(FLOAT), {})
    artifact_choice: ArtifactChoice | None = section(optional(typed(ArtifactChoice)), None,
                                                     omit_empty=True)
    mixed_precision: MixedPrecisionSummary | None = section(
        optional(typed(MixedPrecisionSummary)), None, omit_empty=True)
    files: dict[str, FileRecord] = section(mapping(typed(FileRecord)), {})
    presentation_errors: dict[str, str] = section(mapping(STR), {}, omit_empty=True)
    harm_diagnosis: dict[str, Any] | None = section(optional(JSON_OBJECT), None,
                                                    omit_empty=True)
    uploads: dict[str, Any] | None = section(optional(JSON_OBJECT), None, omit_empty=True)
    discovered_slices: SliceDiscovery | None = section(optional(typed(SliceDiscovery)), None,
                                                      omit_empty=True)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [v.stage for v in self.guardrails.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"guardrail stages must be unique, got {names}")
        if self.shipped is not None:
            verdict = self.guardrails.stage(self.shipped)
            if verdict is None or not verdict.passed:
                raise ValueError(f"shipped stage {self.shipped!r} must be a judged stage that "
                                 f"passed its guardrails (stages: {names})")
        clash = set(self.extra) & (set(_DERIVED) | {f.name for f in _sections()})
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} are report sections")

    # -- derived ---------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return SUCCEEDED if self.shipped is not None else REJECTED

    @property
    def deployable(self) -> bool:
        return self.shipped is not None

    @property
    def stages(self) -> tuple[StageVerdict, ...]:
        return self.guardrails.stages

    @property
    def deciding_stage(self) -> StageVerdict | None:
        """The verdict that decided the job: the shipped stage's, else the first that did
        not pass, else the last judged."""
        g = self.guardrails
        return (g.stage(self.shipped) or g.stage(g.first_failing_stage)
                or (g.stages[-1] if g.stages else None))

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "status": self.status}
        for f in _sections():
            value = getattr(self, f.name)
            if f.metadata["omit_empty"] and not value:
                continue
            out[f.name] = f.metadata["codec"].dump(value)
            if f.name == "shipped":
                out["deployable"] = self.deployable
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> JobReport:
        """Validate and read report.json's data; ``InvalidInput`` lists every problem."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a job report is a JSON object, not {type(data).__name__}",
                               "not a valid job report")
        _check_version(data.get("schema_version", _LEGACY))
        problems: list[str] = []
        loaded: dict[str, Any] = {}
        for f in _sections():
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    problems.append(f"{f.name}: missing")
                continue
            try:
                loaded[f.name] = f.metadata["codec"].load(data[f.name], loaded)
            except (ValueError, TypeError, KeyError, InvalidInput) as exc:
                problems.append(f"{f.name}: {_why(exc)}")
        known = set(_DERIVED) | {f.name for f in _sections()}
        extra = {k: v for k, v in data.items() if k not in known}
        report = None
        if not problems:
            try:
                report = cls(**loaded, extra=json.loads(json.dumps(extra)))
            except ValueError as exc:
                problems.append(str(exc))
        if report is not None:
            problems += _derived_problems(data, report)
        if problems:
            raise InvalidInput(problems, "not a valid job report (use a report.json written by "
                                         "teachers-pet)")
        return report

    @classmethod
    def from_json(cls, text: str) -> JobReport:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"the report is not JSON ({exc})", "not a valid job report")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> JobReport:
        """Read report.json at ``path``; a problem names the file."""
        try:
            return cls.from_dict(load_json(path))
        except InvalidInput as exc:
            raise InvalidInput(exc.problems, f"{path}: {exc.context}") from exc

    def with_sections(self, **sections: Any) -> JobReport:
        """A copy with some sections replaced (the bundle adds files this way)."""
        return dataclasses.replace(self, **sections)


def _sections() -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(JobReport) if "codec" in f.metadata)


def _check_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput(f"schema_version is {version!r:.40}; it must be a positive integer",
                           "not a valid job report")
    if version > SCHEMA_VERSION:
        raise InvalidInput(f"schema_version {version} is newer than this teachers-pet reads "
                           f"(up to {SCHEMA_VERSION}); read it with a newer teachers-pet",
                           "cannot read this job report")


def _derived_problems(data: Mapping[str, Any], report: JobReport) -> list[str]:
    """Stored copies of derived fields must agree with the sections they derive from."""
    out = []
    for key, value in (("status", report.status), ("deployable", report.deployable)):
        if key not in data:
            out.append(f"{key}: missing")
        elif data[key] != value:
            out.append(f"{key} is {data[key]!r} but shipped is {report.shipped!r}, which "
                       f"means {key} {value!r}")
    return out


def _why(exc: BaseException) -> str:
    if isinstance(exc, InvalidInput):
        return "; ".join(exc.problems)
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}"
    return str(exc)
