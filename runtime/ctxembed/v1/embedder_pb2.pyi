from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    MEAN: _ClassVar[Pooling]
    FIRST: _ClassVar[Pooling]
    LAST: _ClassVar[Pooling]
    FIRST_LAST: _ClassVar[Pooling]
    MAX: _ClassVar[Pooling]

class LayerCombine(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYER_COMBINE_UNSPECIFIED: _ClassVar[LayerCombine]
    LAYER_MEAN: _ClassVar[LayerCombine]
    LAYER_CONCAT: _ClassVar[LayerCombine]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
POOLING_UNSPECIFIED: Pooling
MEAN: Pooling
FIRST: Pooling
LAST: Pooling
FIRST_LAST: Pooling
MAX: Pooling
LAYER_COMBINE_UNSPECIFIED: LayerCombine
LAYER_MEAN: LayerCombine
LAYER_CONCAT: LayerCombine
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "pooling", "layers", "layer_combine", "dtype", "normalize", "include_tokens", "model")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_COMBINE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TextInput]
    pooling: Pooling
    layers: _containers.RepeatedScalarFieldContainer[int]
    layer_combine: LayerCombine
    dtype: DType
    normalize: bool
    include_tokens: bool
    model: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[TextInput, _Mapping]]] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., layers: _Optional[_Iterable[int]] = ..., layer_combine: _Optional[_Union[LayerCombine, str]] = ..., dtype: _Optional[_Union[DType, str]] = ..., normalize: _Optional[bool] = ..., include_tokens: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text", "words", "select_words", "select_spans")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    SELECT_WORDS_FIELD_NUMBER: _ClassVar[int]
    SELECT_SPANS_FIELD_NUMBER: _ClassVar[int]
    text: str
    words: WordList
    select_words: _containers.RepeatedScalarFieldContainer[str]
    select_spans: _containers.RepeatedCompositeFieldContainer[CharSpan]
    def __init__(self, text: _Optional[str] = ..., words: _Optional[_Union[WordList, _Mapping]] = ..., select_words: _Optional[_Iterable[str]] = ..., select_spans: _Optional[_Iterable[_Union[CharSpan, _Mapping]]] = ...) -> None: ...

class WordList(_message.Message):
    __slots__ = ("words",)
    WORDS_FIELD_NUMBER: _ClassVar[int]
    words: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, words: _Optional[_Iterable[str]] = ...) -> None: ...

class CharSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("results", "error")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextEmbeddings]
    error: _status_pb2.Status
    def __init__(self, results: _Optional[_Iterable[_Union[TextEmbeddings, _Mapping]]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class TextEmbeddings(_message.Message):
    __slots__ = ("words", "vectors", "num_tokens", "num_windows")
    WORDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    words: _containers.RepeatedCompositeFieldContainer[Word]
    vectors: Tensor
    num_tokens: int
    num_windows: int
    def __init__(self, words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ..., vectors: _Optional[_Union[Tensor, _Mapping]] = ..., num_tokens: _Optional[int] = ..., num_windows: _Optional[int] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("text", "start", "end", "index", "tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    start: int
    end: int
    index: int
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., index: _Optional[int] = ..., tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("piece", "id", "start", "end")
    PIECE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    piece: str
    id: int
    start: int
    end: int
    def __init__(self, piece: _Optional[str] = ..., id: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "source_model", "architecture", "dimension", "num_layers", "layers_available", "max_tokens_per_window", "precision", "execution_provider", "server_version", "onnxruntime_version", "lowercase", "limits", "model_type", "threads", "parallel_runs", "word_segmentation", "fused_kernels")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_WINDOW_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOWERCASE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_RUNS_FIELD_NUMBER: _ClassVar[int]
    WORD_SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    FUSED_KERNELS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    source_model: str
    architecture: str
    dimension: int
    num_layers: int
    layers_available: _containers.RepeatedScalarFieldContainer[int]
    max_tokens_per_window: int
    precision: str
    execution_provider: str
    server_version: str
    onnxruntime_version: str
    lowercase: bool
    limits: Limits
    model_type: str
    threads: int
    parallel_runs: int
    word_segmentation: str
    fused_kernels: bool
    def __init__(self, model_name: _Optional[str] = ..., source_model: _Optional[str] = ..., architecture: _Optional[str] = ..., dimension: _Optional[int] = ..., num_layers: _Optional[int] = ..., layers_available: _Optional[_Iterable[int]] = ..., max_tokens_per_window: _Optional[int] = ..., precision: _Optional[str] = ..., execution_provider: _Optional[str] = ..., server_version: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., lowercase: _Optional[bool] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., model_type: _Optional[str] = ..., threads: _Optional[int] = ..., parallel_runs: _Optional[int] = ..., word_segmentation: _Optional[str] = ..., fused_kernels: _Optional[bool] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_inputs_per_request", "max_chars_per_text", "max_words_per_text", "max_spans_per_text", "max_select_words", "max_tokens_per_request")
    MAX_INPUTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_PER_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_WORDS_PER_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_SPANS_PER_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_SELECT_WORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    max_inputs_per_request: int
    max_chars_per_text: int
    max_words_per_text: int
    max_spans_per_text: int
    max_select_words: int
    max_tokens_per_request: int
    def __init__(self, max_inputs_per_request: _Optional[int] = ..., max_chars_per_text: _Optional[int] = ..., max_words_per_text: _Optional[int] = ..., max_spans_per_text: _Optional[int] = ..., max_select_words: _Optional[int] = ..., max_tokens_per_request: _Optional[int] = ...) -> None: ...
