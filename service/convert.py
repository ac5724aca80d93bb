"""Every conversion between the wire (protobuf) and the library or the store, in one place.

A job file is the ``JobSpec`` message's JSON mapping. Proto -> library goes
``MessageToDict(preserving_proto_field_name=True) -> compression.spec.parse_spec``, so every
validation message is the library's and lists every problem at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from compression.errors import InvalidInput
from compression.spec import JobSpec, parse_spec, read_job_file, spec_to_dict
from service._proto import compress_pb2, spec_pb2
from service.convert_result import result_of
from service.states import JobState
from service.store import EventRecord, JobRecord

__all__ = [
    "dict_to_proto", "load_job_proto", "proto_to_dict", "proto_to_spec", "spec_to_proto",
    "struct_to_dict", "dict_to_struct", "job_to_proto", "event_to_proto", "timestamp",
    "state_to_proto", "state_from_proto",
]


def dict_to_proto(data: Any, source: str = "job spec") -> spec_pb2.JobSpec:
    """A job mapping (YAML/JSON, snake_case or lowerCamelCase keys) as a ``JobSpec`` message.

    What the message cannot hold (unknown fields, wrong types) is reported by the library's own
    validation, which lists every problem; semantic checks are left to the server.
    """
    message = spec_pb2.JobSpec()
    try:
        json_format.ParseDict(_json_ready(data if data is not None else {}), message)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        try:
            parse_spec(data)
        except InvalidInput as full:  # the library sees every problem, protobuf the first
            raise InvalidInput(full.problems, f"invalid {source}") from exc
        raise InvalidInput(str(exc).splitlines()[0], f"invalid {source}") from exc
    return message


def load_job_proto(path: str | Path) -> spec_pb2.JobSpec:
    """Read a job file (YAML or JSON) into a ``JobSpec`` message."""
    return dict_to_proto(read_job_file(path), f"job file {path}")


def proto_to_dict(message: spec_pb2.JobSpec) -> dict[str, Any]:
    """The message as the mapping a job file holds (only the fields that are set)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _fix_params(data.get("mitigation"))
    return data


def proto_to_spec(message: spec_pb2.JobSpec) -> JobSpec:
    """Validate and build the library's ``JobSpec``; ``InvalidInput`` lists every problem."""
    return parse_spec(proto_to_dict(message))


def spec_to_proto(spec: JobSpec) -> spec_pb2.JobSpec:
    return dict_to_proto(spec_to_dict(spec))


def _fix_params(mitigation: dict[str, Any] | None) -> None:
    # Struct stores every number as a double; give back ints where the value is integral so
    # a parameter like `warmup: 2` arrives as the int the user wrote.
    if not mitigation:
        return
    if "params" in mitigation:
        mitigation["params"] = _integral(mitigation["params"])
    for candidate in mitigation.get("candidates", ()):
        _fix_params(candidate)


def _integral(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _json_ready(value: Any) -> Any:
    # YAML allows non-string keys (`mapping: {0: tail}`) and the library reads tuples.
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def dict_to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(_json_ready(data))
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Plain Python data; integral numbers come back as ints (Struct keeps only doubles)."""
    return {key: _plain(value) for key, value in struct.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, struct_pb2.Struct):
        return struct_to_dict(value)
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(v) for v in value]
    return _integral(value)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def state_to_proto(state: JobState | str) -> int:
    return compress_pb2.JobState.Value(JobState(state).value)


def state_from_proto(value: int) -> JobState:
    name = compress_pb2.JobState.Name(value)
    try:
        return JobState(name)
    except ValueError:
        raise InvalidInput(f"job state {name} is not a state; use one of "
                           f"{', '.join(s.value for s in JobState)}") from None


def job_to_proto(job: JobRecord, full: bool = True) -> compress_pb2.Job:
    """``full``: include the spec, the report and the typed result read from it (GetJob);
    ListJobs leaves them out."""
    message = compress_pb2.Job(
        id=job.id, request_id=job.request_id or "", state=state_to_proto(job.state),
        stage=job.stage, create_time=timestamp(job.created), update_time=timestamp(job.updated),
        error=job.error, error_kind=job.error_kind, attempts=job.attempts,
        cancel_requested=job.cancel_requested, worker=job.worker, output_dir=job.output_dir,
        name=job.name)
    if full:
        message.report_json = job.report_json
        message.spec.CopyFrom(dict_to_proto(job.spec))
        result = result_of(job.id, job.report_json, job.output_dir)
        if result is not None:
            message.result.CopyFrom(result)
    return message


def event_to_proto(event: EventRecord) -> compress_pb2.JobEvent:
    return compress_pb2.JobEvent(
        sequence=event.sequence, job_id=event.job_id, kind=event.kind, stage=event.stage,
        payload=dict_to_struct(event.payload), time=timestamp(event.time))
