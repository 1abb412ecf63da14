from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_NONE: _ClassVar[Aggregation]
    AGGREGATION_MEAN: _ClassVar[Aggregation]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_UNAVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_SERVING: _ClassVar[ModelState]
AGGREGATION_NONE: Aggregation
AGGREGATION_MEAN: Aggregation
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_UNAVAILABLE: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_SERVING: ModelState

class Image(_message.Message):
    __slots__ = ("data", "path")
    DATA_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    path: str
    def __init__(self, data: _Optional[bytes] = ..., path: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "images", "normalize", "aggregate", "normalize_aggregate", "aggregate_only")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    normalize: bool
    aggregate: Aggregation
    normalize_aggregate: bool
    aggregate_only: bool
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., normalize: _Optional[bool] = ..., aggregate: _Optional[_Union[Aggregation, str]] = ..., normalize_aggregate: _Optional[bool] = ..., aggregate_only: _Optional[bool] = ...) -> None: ...

class EmbedTextRequest(_message.Message):
    __slots__ = ("model", "texts", "normalize")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "aliases", "family", "pooling", "dim", "onnx_sha256", "preprocessing_sha256", "weights", "parity_verified", "source", "quantization", "modalities", "text_onnx_sha256", "tokenizer_sha256", "text_parity_verified", "batch_invariant")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ONNX_SHA256_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PARITY_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    TEXT_ONNX_SHA256_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    TEXT_PARITY_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    BATCH_INVARIANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    family: str
    pooling: str
    dim: int
    onnx_sha256: str
    preprocessing_sha256: str
    weights: str
    parity_verified: bool
    source: str
    quantization: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    text_onnx_sha256: str
    tokenizer_sha256: str
    text_parity_verified: bool
    batch_invariant: bool
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., family: _Optional[str] = ..., pooling: _Optional[str] = ..., dim: _Optional[int] = ..., onnx_sha256: _Optional[str] = ..., preprocessing_sha256: _Optional[str] = ..., weights: _Optional[str] = ..., parity_verified: _Optional[bool] = ..., source: _Optional[str] = ..., quantization: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., text_onnx_sha256: _Optional[str] = ..., tokenizer_sha256: _Optional[str] = ..., text_parity_verified: _Optional[bool] = ..., batch_invariant: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "aggregate", "model")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    aggregate: Embedding
    model: ModelInfo
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., aggregate: _Optional[_Union[Embedding, _Mapping]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("info", "state", "loaded", "error", "load_seconds", "onnx_bytes", "text", "self_check")
    INFO_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ONNX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SELF_CHECK_FIELD_NUMBER: _ClassVar[int]
    info: ModelInfo
    state: ModelState
    loaded: bool
    error: str
    load_seconds: float
    onnx_bytes: int
    text: GraphStatus
    self_check: SelfCheck
    def __init__(self, info: _Optional[_Union[ModelInfo, _Mapping]] = ..., state: _Optional[_Union[ModelState, str]] = ..., loaded: _Optional[bool] = ..., error: _Optional[str] = ..., load_seconds: _Optional[float] = ..., onnx_bytes: _Optional[int] = ..., text: _Optional[_Union[GraphStatus, _Mapping]] = ..., self_check: _Optional[_Union[SelfCheck, _Mapping]] = ...) -> None: ...

class GraphStatus(_message.Message):
    __slots__ = ("state", "loaded", "error", "load_seconds", "onnx_bytes", "self_check")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ONNX_BYTES_FIELD_NUMBER: _ClassVar[int]
    SELF_CHECK_FIELD_NUMBER: _ClassVar[int]
    state: ModelState
    loaded: bool
    error: str
    load_seconds: float
    onnx_bytes: int
    self_check: SelfCheck
    def __init__(self, state: _Optional[_Union[ModelState, str]] = ..., loaded: _Optional[bool] = ..., error: _Optional[str] = ..., load_seconds: _Optional[float] = ..., onnx_bytes: _Optional[int] = ..., self_check: _Optional[_Union[SelfCheck, _Mapping]] = ...) -> None: ...

class SelfCheck(_message.Message):
    __slots__ = ("state", "max_abs", "worst", "inputs", "seconds", "cpu_flags", "min_cosine", "required_cosine")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_FIELD_NUMBER: _ClassVar[int]
    WORST_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CPU_FLAGS_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_COSINE_FIELD_NUMBER: _ClassVar[int]
    state: str
    max_abs: float
    worst: str
    inputs: int
    seconds: float
    cpu_flags: str
    min_cosine: float
    required_cosine: float
    def __init__(self, state: _Optional[str] = ..., max_abs: _Optional[float] = ..., worst: _Optional[str] = ..., inputs: _Optional[int] = ..., seconds: _Optional[float] = ..., cpu_flags: _Optional[str] = ..., min_cosine: _Optional[float] = ..., required_cosine: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...
