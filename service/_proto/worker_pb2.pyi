from google.protobuf import struct_pb2 as _struct_pb2
from . import spec_pb2 as _spec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_REJECTED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_REJECTED: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_CANCELLED: Outcome

class StartJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StartJobResponse(_message.Message):
    __slots__ = ("spec", "attempt", "access")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.JobSpec
    attempt: int
    access: InputAccess
    def __init__(self, spec: _Optional[_Union[_spec_pb2.JobSpec, _Mapping]] = ..., attempt: _Optional[int] = ..., access: _Optional[_Union[InputAccess, _Mapping]] = ...) -> None: ...

class InputAccess(_message.Message):
    __slots__ = ("data_roots", "max_data_bytes", "allow_torchscript_teachers")
    DATA_ROOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_TORCHSCRIPT_TEACHERS_FIELD_NUMBER: _ClassVar[int]
    data_roots: _containers.RepeatedScalarFieldContainer[str]
    max_data_bytes: int
    allow_torchscript_teachers: bool
    def __init__(self, data_roots: _Optional[_Iterable[str]] = ..., max_data_bytes: _Optional[int] = ..., allow_torchscript_teachers: _Optional[bool] = ...) -> None: ...

class WorkerEvent(_message.Message):
    __slots__ = ("kind", "stage", "payload")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    kind: str
    stage: str
    payload: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., stage: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ReportEventsRequest(_message.Message):
    __slots__ = ("job_id", "events")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    events: _containers.RepeatedCompositeFieldContainer[WorkerEvent]
    def __init__(self, job_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[WorkerEvent, _Mapping]]] = ...) -> None: ...

class ReportEventsResponse(_message.Message):
    __slots__ = ("stop",)
    STOP_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    def __init__(self, stop: _Optional[bool] = ...) -> None: ...

class FinishJobRequest(_message.Message):
    __slots__ = ("job_id", "outcome", "error", "error_kind", "report_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    outcome: Outcome
    error: str
    error_kind: str
    report_json: str
    def __init__(self, job_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., error: _Optional[str] = ..., error_kind: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class FinishJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
