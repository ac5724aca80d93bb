from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LongTailSpec(_message.Message):
    __slots__ = ("profile", "imbalance")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    IMBALANCE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    imbalance: float
    def __init__(self, profile: _Optional[str] = ..., imbalance: _Optional[float] = ...) -> None: ...

class SubgroupSpec(_message.Message):
    __slots__ = ("by", "head_min_count", "tail_max_count", "mapping", "also_by", "shares")
    class MappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BY_FIELD_NUMBER: _ClassVar[int]
    HEAD_MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TAIL_MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    ALSO_BY_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    by: str
    head_min_count: int
    tail_max_count: int
    mapping: _containers.ScalarMap[str, str]
    also_by: _containers.RepeatedScalarFieldContainer[str]
    shares: _containers.ScalarMap[str, float]
    def __init__(self, by: _Optional[str] = ..., head_min_count: _Optional[int] = ..., tail_max_count: _Optional[int] = ..., mapping: _Optional[_Mapping[str, str]] = ..., also_by: _Optional[_Iterable[str]] = ..., shares: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PreprocessSpec(_message.Message):
    __slots__ = ("resize", "crop", "channel_order", "mean", "std")
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    resize: int
    crop: int
    channel_order: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, resize: _Optional[int] = ..., crop: _Optional[int] = ..., channel_order: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class DataSpec(_message.Message):
    __slots__ = ("source", "path", "test_path", "holdout_path", "holdout_fraction", "long_tail", "subgroups", "max_train", "max_test", "image_size", "channels", "seed", "in_memory", "memory_budget_mib", "workers", "preprocess")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TEST_PATH_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_PATH_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    LONG_TAIL_FIELD_NUMBER: _ClassVar[int]
    SUBGROUPS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAIN_FIELD_NUMBER: _ClassVar[int]
    MAX_TEST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_MIB_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    source: str
    path: str
    test_path: str
    holdout_path: str
    holdout_fraction: float
    long_tail: LongTailSpec
    subgroups: SubgroupSpec
    max_train: int
    max_test: int
    image_size: int
    channels: int
    seed: int
    in_memory: str
    memory_budget_mib: int
    workers: int
    preprocess: PreprocessSpec
    def __init__(self, source: _Optional[str] = ..., path: _Optional[str] = ..., test_path: _Optional[str] = ..., holdout_path: _Optional[str] = ..., holdout_fraction: _Optional[float] = ..., long_tail: _Optional[_Union[LongTailSpec, _Mapping]] = ..., subgroups: _Optional[_Union[SubgroupSpec, _Mapping]] = ..., max_train: _Optional[int] = ..., max_test: _Optional[int] = ..., image_size: _Optional[int] = ..., channels: _Optional[int] = ..., seed: _Optional[int] = ..., in_memory: _Optional[str] = ..., memory_budget_mib: _Optional[int] = ..., workers: _Optional[int] = ..., preprocess: _Optional[_Union[PreprocessSpec, _Mapping]] = ...) -> None: ...

class TeacherSpec(_message.Message):
    __slots__ = ("path", "format", "arch", "width")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    path: str
    format: str
    arch: str
    width: float
    def __init__(self, path: _Optional[str] = ..., format: _Optional[str] = ..., arch: _Optional[str] = ..., width: _Optional[float] = ...) -> None: ...

class StudentSpec(_message.Message):
    __slots__ = ("arch", "width", "init")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    arch: str
    width: float
    init: str
    def __init__(self, arch: _Optional[str] = ..., width: _Optional[float] = ..., init: _Optional[str] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "step_milestones", "step_gamma", "augment", "amp", "channels_last", "device", "teacher_cache", "seed", "eval_batch_size", "progress_every_steps", "teacher_cache_ram_mib")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEP_MILESTONES_FIELD_NUMBER: _ClassVar[int]
    STEP_GAMMA_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_LAST_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TEACHER_CACHE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_CACHE_RAM_MIB_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup_epochs: int
    step_milestones: _containers.RepeatedScalarFieldContainer[int]
    step_gamma: float
    augment: str
    amp: str
    channels_last: bool
    device: str
    teacher_cache: str
    seed: int
    eval_batch_size: int
    progress_every_steps: int
    teacher_cache_ram_mib: int
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[str] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., schedule: _Optional[str] = ..., warmup_epochs: _Optional[int] = ..., step_milestones: _Optional[_Iterable[int]] = ..., step_gamma: _Optional[float] = ..., augment: _Optional[str] = ..., amp: _Optional[str] = ..., channels_last: _Optional[bool] = ..., device: _Optional[str] = ..., teacher_cache: _Optional[str] = ..., seed: _Optional[int] = ..., eval_batch_size: _Optional[int] = ..., progress_every_steps: _Optional[int] = ..., teacher_cache_ram_mib: _Optional[int] = ...) -> None: ...

class MitigationSpec(_message.Message):
    __slots__ = ("name", "alpha", "temperature", "params", "calibrate_teacher", "candidates", "selection_epochs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_TEACHER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SELECTION_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alpha: float
    temperature: float
    params: _struct_pb2.Struct
    calibrate_teacher: bool
    candidates: _containers.RepeatedCompositeFieldContainer[MitigationSpec]
    selection_epochs: int
    def __init__(self, name: _Optional[str] = ..., alpha: _Optional[float] = ..., temperature: _Optional[float] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., calibrate_teacher: _Optional[bool] = ..., candidates: _Optional[_Iterable[_Union[MitigationSpec, _Mapping]]] = ..., selection_epochs: _Optional[int] = ...) -> None: ...

class GuardrailSpec(_message.Message):
    __slots__ = ("min_accuracy", "min_accuracy_by_group", "max_drop_vs_teacher", "max_drop_vs_one_hot", "min_worst_group_accuracy", "max_group_gap", "min_samples", "block_on_insufficient_evidence", "max_drop_vs_student", "confidence", "multiplicity", "discovered_slices", "slice_discovery")
    class MinAccuracyByGroupEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MIN_ACCURACY_BY_GROUP_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_VS_TEACHER_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_VS_ONE_HOT_FIELD_NUMBER: _ClassVar[int]
    MIN_WORST_GROUP_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUP_GAP_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ON_INSUFFICIENT_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_VS_STUDENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MULTIPLICITY_FIELD_NUMBER: _ClassVar[int]
    DISCOVERED_SLICES_FIELD_NUMBER: _ClassVar[int]
    SLICE_DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    min_accuracy: float
    min_accuracy_by_group: _containers.ScalarMap[str, float]
    max_drop_vs_teacher: float
    max_drop_vs_one_hot: float
    min_worst_group_accuracy: float
    max_group_gap: float
    min_samples: int
    block_on_insufficient_evidence: bool
    max_drop_vs_student: float
    confidence: float
    multiplicity: str
    discovered_slices: SliceRuleSpec
    slice_discovery: SliceDiscoverySpec
    def __init__(self, min_accuracy: _Optional[float] = ..., min_accuracy_by_group: _Optional[_Mapping[str, float]] = ..., max_drop_vs_teacher: _Optional[float] = ..., max_drop_vs_one_hot: _Optional[float] = ..., min_worst_group_accuracy: _Optional[float] = ..., max_group_gap: _Optional[float] = ..., min_samples: _Optional[int] = ..., block_on_insufficient_evidence: _Optional[bool] = ..., max_drop_vs_student: _Optional[float] = ..., confidence: _Optional[float] = ..., multiplicity: _Optional[str] = ..., discovered_slices: _Optional[_Union[SliceRuleSpec, _Mapping]] = ..., slice_discovery: _Optional[_Union[SliceDiscoverySpec, _Mapping]] = ...) -> None: ...

class SliceRuleSpec(_message.Message):
    __slots__ = ("max_drop", "min_size")
    MAX_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    max_drop: float
    min_size: int
    def __init__(self, max_drop: _Optional[float] = ..., min_size: _Optional[int] = ...) -> None: ...

class SliceDiscoverySpec(_message.Message):
    __slots__ = ("enabled", "clusters", "max_slices", "components", "representation")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    MAX_SLICES_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    clusters: int
    max_slices: int
    components: int
    representation: str
    def __init__(self, enabled: _Optional[bool] = ..., clusters: _Optional[int] = ..., max_slices: _Optional[int] = ..., components: _Optional[int] = ..., representation: _Optional[str] = ...) -> None: ...

class ExportSpec(_message.Message):
    __slots__ = ("onnx", "int8", "tensorrt", "tensorrt_precision", "opset", "calibration_per_group", "parity_max_abs_diff", "parity_min_top1_agreement", "min_batch", "opt_batch", "max_batch", "mixed_precision", "mixed_max_candidates", "mixed_max_seconds", "latency_warmup", "latency_repeats")
    ONNX_FIELD_NUMBER: _ClassVar[int]
    INT8_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_PRECISION_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_PER_GROUP_FIELD_NUMBER: _ClassVar[int]
    PARITY_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    PARITY_MIN_TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_BATCH_FIELD_NUMBER: _ClassVar[int]
    OPT_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MIXED_PRECISION_FIELD_NUMBER: _ClassVar[int]
    MIXED_MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MIXED_MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_WARMUP_FIELD_NUMBER: _ClassVar[int]
    LATENCY_REPEATS_FIELD_NUMBER: _ClassVar[int]
    onnx: bool
    int8: bool
    tensorrt: str
    tensorrt_precision: str
    opset: int
    calibration_per_group: int
    parity_max_abs_diff: float
    parity_min_top1_agreement: float
    min_batch: int
    opt_batch: int
    max_batch: int
    mixed_precision: bool
    mixed_max_candidates: int
    mixed_max_seconds: float
    latency_warmup: int
    latency_repeats: int
    def __init__(self, onnx: _Optional[bool] = ..., int8: _Optional[bool] = ..., tensorrt: _Optional[str] = ..., tensorrt_precision: _Optional[str] = ..., opset: _Optional[int] = ..., calibration_per_group: _Optional[int] = ..., parity_max_abs_diff: _Optional[float] = ..., parity_min_top1_agreement: _Optional[float] = ..., min_batch: _Optional[int] = ..., opt_batch: _Optional[int] = ..., max_batch: _Optional[int] = ..., mixed_precision: _Optional[bool] = ..., mixed_max_candidates: _Optional[int] = ..., mixed_max_seconds: _Optional[float] = ..., latency_warmup: _Optional[int] = ..., latency_repeats: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "teacher", "data", "student", "training", "mitigation", "guardrails", "export", "output_dir", "output_uri")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    MITIGATION_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    name: str
    teacher: TeacherSpec
    data: DataSpec
    student: StudentSpec
    training: TrainingSpec
    mitigation: MitigationSpec
    guardrails: GuardrailSpec
    export: ExportSpec
    output_dir: str
    output_uri: str
    def __init__(self, name: _Optional[str] = ..., teacher: _Optional[_Union[TeacherSpec, _Mapping]] = ..., data: _Optional[_Union[DataSpec, _Mapping]] = ..., student: _Optional[_Union[StudentSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., mitigation: _Optional[_Union[MitigationSpec, _Mapping]] = ..., guardrails: _Optional[_Union[GuardrailSpec, _Mapping]] = ..., export: _Optional[_Union[ExportSpec, _Mapping]] = ..., output_dir: _Optional[str] = ..., output_uri: _Optional[str] = ...) -> None: ...
