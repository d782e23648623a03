"""Protobuf ↔ engine types, both directions: the one module the server and the client share.

It imports protobuf, numpy and the engine's value types only (never the service), so the client
stays a client. Vectors travel as raw little-endian bytes: building ``repeated float`` in
Python costs far more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.types import (
    DEFAULT_OPTIONS,
    CharSpan,
    DType,
    EmbedOptions,
    InputLike,
    LayerCombine,
    Limits,
    ModelInfo,
    Pooling,
    TextInput,
    Token,
    Word,
    WordEmbeddings,
)
from ctxembed.v1 import embedder_pb2 as pb

POOLING_TO_PB: dict[Pooling, pb.Pooling] = {
    "mean": pb.MEAN,
    "first": pb.FIRST,
    "last": pb.LAST,
    "first_last": pb.FIRST_LAST,
    "max": pb.MAX,
}
POOLING_FROM_PB = {v: k for k, v in POOLING_TO_PB.items()} | {pb.POOLING_UNSPECIFIED: "mean"}
COMBINE_TO_PB: dict[LayerCombine, pb.LayerCombine] = {
    "mean": pb.LAYER_MEAN,
    "concat": pb.LAYER_CONCAT,
}
COMBINE_FROM_PB = {v: k for k, v in COMBINE_TO_PB.items()} | {pb.LAYER_COMBINE_UNSPECIFIED: "mean"}
DTYPE_TO_PB: dict[DType, pb.DType] = {"float32": pb.FLOAT32, "float16": pb.FLOAT16}
DTYPE_FROM_PB = {v: k for k, v in DTYPE_TO_PB.items()} | {pb.DTYPE_UNSPECIFIED: "float32"}
NUMPY_DTYPE: dict[int, np.dtype[Any]] = {pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2")}


@dataclass(frozen=True)
class DecodedRequest:
    """A request in engine terms: what ``WordEmbeddingModel.prepare`` takes."""

    inputs: list[TextInput]
    options: EmbedOptions = DEFAULT_OPTIONS

    @property
    def num_chars(self) -> int:
        return sum(
            len(i.text) if i.text is not None else sum(map(len, i.words or ())) for i in self.inputs
        )


def _enum(table: Mapping[Any, str], value: int, field: str) -> str:
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(field, f"unknown value {value}") from None


def call_from_request(request: pb.EmbedRequest) -> DecodedRequest:
    inputs = []
    for i, item in enumerate(request.inputs):
        kind = item.WhichOneof("content")
        if kind is None:
            raise InvalidInput(f"inputs[{i}]", "set text or words")
        spans = [CharSpan(s.start, s.end) for s in item.select_spans]
        if kind == "text":
            inputs.append(
                TextInput(text=item.text, select_words=list(item.select_words), select_spans=spans)
            )
        else:
            inputs.append(
                TextInput(
                    words=list(item.words.words),
                    select_words=list(item.select_words),
                    select_spans=spans,
                )
            )
    options = EmbedOptions(
        pooling=_enum(POOLING_FROM_PB, request.pooling, "pooling"),  # type: ignore[arg-type]
        layers=tuple(request.layers) or (-1,),
        layer_combine=_enum(COMBINE_FROM_PB, request.layer_combine, "layer_combine"),  # type: ignore[arg-type]
        dtype=_enum(DTYPE_FROM_PB, request.dtype, "dtype"),  # type: ignore[arg-type]
        normalize=request.normalize,
        include_tokens=request.include_tokens,
    )
    return DecodedRequest(inputs, options)


def response_from_results(results: Sequence[WordEmbeddings]) -> pb.EmbedResponse:
    response = pb.EmbedResponse()
    for res in results:
        out = response.results.add(num_tokens=res.num_tokens, num_windows=res.num_windows)
        for w in res.words:
            word = out.words.add(text=w.text, start=w.start, end=w.end, index=w.index)
            for t in w.tokens:
                word.tokens.add(piece=t.piece, id=t.id, start=t.start, end=t.end)
        vectors = res.vectors
        dtype = pb.FLOAT16 if vectors.dtype == np.float16 else pb.FLOAT32
        out.vectors.dtype = dtype
        out.vectors.shape.extend(vectors.shape)
        out.vectors.data = np.ascontiguousarray(vectors, dtype=NUMPY_DTYPE[dtype]).tobytes()
    return response


# -- client side ------------------------------------------------------------------------------
def request_from_call(
    inputs: Sequence[InputLike], options: EmbedOptions = DEFAULT_OPTIONS
) -> pb.EmbedRequest:
    """The request for these inputs and options; the server checks them as the engine does,
    so only what protobuf cannot carry is refused here."""
    for name, table in (
        ("pooling", POOLING_TO_PB),
        ("layer_combine", COMBINE_TO_PB),
        ("dtype", DTYPE_TO_PB),
    ):
        value = getattr(options, name)
        if value not in table:
            raise InvalidInput(name, f"unknown value {value!r}; use one of {', '.join(table)}")
    request = pb.EmbedRequest(
        pooling=POOLING_TO_PB[options.pooling],
        layers=list(options.layers),
        layer_combine=COMBINE_TO_PB[options.layer_combine],
        dtype=DTYPE_TO_PB[options.dtype],
        normalize=options.normalize,
        include_tokens=options.include_tokens,
    )
    for i, inp in enumerate(inputs):
        item = request.inputs.add()
        if isinstance(inp, str):
            item.text = inp
            continue
        if not isinstance(inp, TextInput):
            item.words.words.extend(inp)
            continue
        if inp.text is not None:
            item.text = inp.text
        elif inp.words is not None:
            item.words.words.extend(inp.words)
        else:
            raise InvalidInput(f"inputs[{i}]", "set exactly one of text and words")
        item.select_words.extend(inp.select_words)
        for span in inp.select_spans:
            item.select_spans.add(start=span.start, end=span.end)
    return request


def tensor_to_numpy(tensor: pb.Tensor) -> np.ndarray:
    dtype = NUMPY_DTYPE.get(tensor.dtype or pb.FLOAT32)
    if dtype is None:
        raise ValueError(f"unknown tensor dtype {tensor.dtype}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def results_from_response(response: pb.EmbedResponse) -> list[WordEmbeddings]:
    results = []
    for res in response.results:
        words = tuple(
            Word(
                w.text,
                w.start,
                w.end,
                w.index,
                tuple(Token(t.piece, t.id, t.start, t.end) for t in w.tokens),
            )
            for w in res.words
        )
        results.append(
            WordEmbeddings(words, tensor_to_numpy(res.vectors), res.num_tokens, res.num_windows)
        )
    return results


_LIMIT_FIELDS = (
    "max_inputs_per_request",
    "max_chars_per_text",
    "max_words_per_text",
    "max_spans_per_text",
    "max_select_words",
    "max_tokens_per_request",
)
_INFO_FIELDS = (
    "source_model",
    "architecture",
    "model_type",
    "dimension",
    "num_layers",
    "max_tokens_per_window",
    "precision",
    "execution_provider",
    "lowercase",
    "onnxruntime_version",
    "threads",
    "parallel_runs",
    "server_version",
    "word_segmentation",
    "fused_kernels",
)


def info_to_pb(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        model_name=info.name,
        layers_available=info.layers_available,
        limits=pb.Limits(**{f: getattr(info.limits, f) for f in _LIMIT_FIELDS}),
        **{f: getattr(info, f) for f in _INFO_FIELDS},
    )


def info_from_pb(message: pb.ModelInfo) -> ModelInfo:
    limits = {f: getattr(message.limits, f) for f in _LIMIT_FIELDS}
    return ModelInfo(
        name=message.model_name,
        layers_available=tuple(message.layers_available),
        limits=Limits(**{f: v for f, v in limits.items() if v}),  # 0: an older server's unset
        **{f: getattr(message, f) for f in _INFO_FIELDS},
    )


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs of an INVALID_ARGUMENT error's BadRequest details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return field_violations_of(status) if status is not None else []


def field_violations_of(status: status_pb2.Status) -> list[tuple[str, str]]:
    """(field, description) pairs of a google.rpc.Status's BadRequest details."""
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found
