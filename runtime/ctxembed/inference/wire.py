"""The open inference protocol (KServe v2, Triton's superset) ↔ engine types.

A model's v2 face: input ``TEXT`` (BYTES ``[n]``), or ``WORDS`` (BYTES ``[m]``) with
``WORDS_TEXT_INDEX`` (INT32 ``[m]``) for pre-split texts; request parameters carry the options
(``pooling``, ``layers``, ``layer_combine``, ``select_words``, ``normalize``, ``dtype``,
``tokens``); a ragged result travels as flat tensors over the whole batch, the way Triton models
return ragged outputs: ``VECTORS`` ``[n_words, dim]``, ``OFFSETS`` (code points) ``[n_words, 2]``,
``WORDS`` ``[n_words]`` and ``TEXT_INDEX`` ``[n_words]`` (which input each word belongs to).
Outputs always travel in ``raw_output_contents``; BYTES elements there and in
``raw_input_contents`` are a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from ctxembed.inference import grpc_service_pb2 as pb
from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.types import (
    DEFAULT_OPTIONS,
    DType,
    EmbedOptions,
    LayerCombine,
    Pooling,
    TextInput,
    WordEmbeddings,
)
from ctxembed.v1.wire import DecodedRequest

TEXT, WORDS, WORDS_TEXT_INDEX = "TEXT", "WORDS", "WORDS_TEXT_INDEX"
VECTORS, OFFSETS, TEXT_INDEX = "VECTORS", "OFFSETS", "TEXT_INDEX"
# With the ``tokens`` parameter: every word's sub-word tokens, flat, and the word each belongs to.
TOKEN_OUTPUTS = ("TOKENS", "TOKEN_IDS", "TOKEN_OFFSETS", "TOKEN_WORD_INDEX")
OUTPUTS = (VECTORS, OFFSETS, WORDS, TEXT_INDEX)
VERSION = "1"  # a model folder is one version; "" in a request means this one
# Parameters Triton's clients set for its own scheduling, and the "triton_" names it reserves
# (perf_analyzer sends triton_enable_empty_final_response): accepted and ignored.
IGNORED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output"}
)
RESERVED_PREFIX = "triton_"
OPTION_PARAMETERS = (
    "pooling",
    "layers",
    "layer_combine",
    "select_words",
    "normalize",
    "dtype",
    "tokens",
)
INPUT_TYPES = {TEXT: "BYTES", WORDS: "BYTES", WORDS_TEXT_INDEX: "INT32"}


def encode_bytes(items: Iterable[bytes]) -> bytes:
    """BYTES elements as the protocol's raw form: each a uint32 LE length, then the bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode_bytes(raw: bytes, field: str) -> list[bytes]:
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInput(field, f"ends inside an element's 4-byte length at byte {at}")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidInput(field, f"an element of {size} bytes runs past the end at byte {at}")
        items.append(raw[at : at + size])
        at += size
    return items


def _elements(shape: Sequence[int], field: str) -> int:
    if len(shape) != 1 or shape[0] < 0:
        raise InvalidInput(f"{field}.shape", f"must be one dimension [n], got {list(shape)}")
    return int(shape[0])


def _tensor_values(
    request: pb.ModelInferRequest, index: int, tensor: Any
) -> list[bytes] | np.ndarray:
    name = tensor.name
    field = f"inputs[{name}]"
    wanted = INPUT_TYPES.get(name)
    if wanted is None:
        known = ", ".join(INPUT_TYPES)
        raise InvalidInput(field, f"is not an input of this model; the inputs are {known}")
    if tensor.datatype != wanted:
        raise InvalidInput(f"{field}.datatype", f"must be {wanted}, got {tensor.datatype!r}")
    count = _elements(tensor.shape, field)
    values: list[bytes] | np.ndarray
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise InvalidInput(
                "raw_input_contents",
                f"has {len(request.raw_input_contents)} entries for {len(request.inputs)} inputs",
            )
        raw = request.raw_input_contents[index]
        if wanted == "BYTES":
            values = decode_bytes(raw, f"raw_input_contents[{index}]")
        elif len(raw) % 4:
            raise InvalidInput(f"raw_input_contents[{index}]", "is not a whole number of INT32")
        else:
            values = np.frombuffer(raw, dtype="<i4")
    elif wanted == "BYTES":
        values = list(tensor.contents.bytes_contents)
    else:
        values = np.asarray(tensor.contents.int_contents, dtype=np.int32)
    if len(values) != count:
        raise InvalidInput(field, f"has {len(values)} elements for shape [{count}]")
    return values


def _texts(values: Sequence[bytes], field: str) -> list[str]:
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError as exc:
        raise InvalidInput(field, f"is not UTF-8 text: {exc}") from None


def _parameter(request: pb.ModelInferRequest, name: str) -> Any:
    param = request.parameters[name]
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def _string_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInput(f"parameters.{name}", f"must be one of {', '.join(choices)}")
    return value


def _json_list(value: Any, name: str, kind: type) -> list[Any]:
    """A list parameter: JSON in a string parameter, or one value (an int64 layer, a word)."""

    def of_kind(item: Any) -> bool:
        return isinstance(item, kind) and not isinstance(item, bool)

    try:
        items = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        items = None
    if isinstance(items, list) and all(of_kind(i) for i in items):
        return items
    if of_kind(value):
        return [value]
    raise InvalidInput(
        f"parameters.{name}", f"must be a JSON list of {kind.__name__} in a string parameter"
    )


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"parameters.{name}", "must be a bool parameter")
    return value


def options_from_parameters(request: pb.ModelInferRequest) -> tuple[EmbedOptions, list[str]]:
    """The request's options and its ``select_words`` (applied to every input)."""
    given_names = {n for n in request.parameters if not n.startswith(RESERVED_PREFIX)}
    unknown = sorted(given_names - IGNORED_PARAMETERS - set(OPTION_PARAMETERS))
    if unknown:
        known = ", ".join(OPTION_PARAMETERS)
        raise InvalidInput(f"parameters.{unknown[0]}", f"is not known; the parameters are {known}")
    given = {name: _parameter(request, name) for name in OPTION_PARAMETERS}
    d = DEFAULT_OPTIONS
    options = EmbedOptions(
        pooling=(
            _string_choice(given["pooling"], "pooling", get_args(Pooling))  # type: ignore[arg-type]
            if given["pooling"] is not None
            else d.pooling
        ),
        layers=tuple(_json_list(given["layers"], "layers", int))
        if given["layers"] is not None
        else d.layers,
        layer_combine=(
            _string_choice(given["layer_combine"], "layer_combine", get_args(LayerCombine))  # type: ignore[arg-type]
            if given["layer_combine"] is not None
            else d.layer_combine
        ),
        dtype=(
            _string_choice(given["dtype"], "dtype", get_args(DType))  # type: ignore[arg-type]
            if given["dtype"] is not None
            else d.dtype
        ),
        normalize=_flag(given["normalize"], "normalize")
        if given["normalize"] is not None
        else d.normalize,
        include_tokens=_flag(given["tokens"], "tokens")
        if given["tokens"] is not None
        else d.include_tokens,
    )
    select = given["select_words"]
    return options, [] if select is None else _json_list(select, "select_words", str)


def decode_infer_request(request: pb.ModelInferRequest) -> DecodedRequest:
    """Inputs and options of a ModelInfer request in engine terms."""
    options, select = options_from_parameters(request)
    tensors: dict[str, Any] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise InvalidInput(f"inputs[{tensor.name}]", "is given twice")
        tensors[tensor.name] = _tensor_values(request, index, tensor)
    if TEXT in tensors:
        if WORDS in tensors or WORDS_TEXT_INDEX in tensors:
            raise InvalidInput(
                "inputs", f"set {TEXT}, or {WORDS} with {WORDS_TEXT_INDEX}: not both"
            )
        texts = _texts(tensors[TEXT], f"inputs[{TEXT}]")
        return DecodedRequest([TextInput(text=t, select_words=select) for t in texts], options)
    if WORDS not in tensors or WORDS_TEXT_INDEX not in tensors:
        raise InvalidInput("inputs", f"set {TEXT}, or {WORDS} with {WORDS_TEXT_INDEX}")
    words = _texts(tensors[WORDS], f"inputs[{WORDS}]")
    owner: np.ndarray = np.asarray(tensors[WORDS_TEXT_INDEX], dtype=np.int64)
    if len(owner) != len(words):
        raise InvalidInput(
            f"inputs[{WORDS_TEXT_INDEX}]", f"has {len(owner)} elements for {len(words)} words"
        )
    if len(owner) and (owner.min() < 0 or np.any(np.diff(owner) < 0)):
        raise InvalidInput(f"inputs[{WORDS_TEXT_INDEX}]", "must be non-negative and non-decreasing")
    count = int(owner.max()) + 1 if len(owner) else 0
    grouped: list[list[str]] = [[] for _ in range(count)]
    for word, i in zip(words, owner.tolist(), strict=True):
        grouped[i].append(word)
    return DecodedRequest([TextInput(words=g, select_words=select) for g in grouped], options)


@dataclass(frozen=True)
class _Output:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


def _flat_outputs(results: Sequence[WordEmbeddings], options: EmbedOptions) -> list[_Output]:
    words = [w for r in results for w in r.words]
    dim = results[0].vectors.shape[1] if results else 0
    dtype = np.dtype("<f2") if options.dtype == "float16" else np.dtype("<f4")
    vectors = np.concatenate([r.vectors for r in results]) if results else np.zeros((0, dim), dtype)
    text_index = np.repeat(np.arange(len(results), dtype="<i4"), [len(r.words) for r in results])
    outputs = [
        _Output(
            VECTORS,
            "FP16" if dtype.itemsize == 2 else "FP32",
            (len(words), dim),
            np.ascontiguousarray(vectors, dtype=dtype).tobytes(),
        ),
        _Output(
            OFFSETS,
            "INT32",
            (len(words), 2),
            np.asarray([(w.start, w.end) for w in words], dtype="<i4").reshape(-1, 2).tobytes(),
        ),
        _Output(WORDS, "BYTES", (len(words),), encode_bytes(w.text.encode() for w in words)),
        _Output(TEXT_INDEX, "INT32", (len(words),), text_index.tobytes()),
    ]
    if options.include_tokens:
        tokens = [(t, i) for i, w in enumerate(words) for t in w.tokens]
        n = len(tokens)

        def int32(values: list[Any]) -> bytes:
            return np.asarray(values, dtype="<i4").tobytes()

        outputs += [
            _Output("TOKENS", "BYTES", (n,), encode_bytes(t.piece.encode() for t, _ in tokens)),
            _Output("TOKEN_IDS", "INT32", (n,), int32([t.id for t, _ in tokens])),
            _Output("TOKEN_OFFSETS", "INT32", (n, 2), int32([(t.start, t.end) for t, _ in tokens])),
            _Output("TOKEN_WORD_INDEX", "INT32", (n,), int32([i for _, i in tokens])),
        ]
    return outputs


def requested_outputs(request: pb.ModelInferRequest, options: EmbedOptions) -> set[str] | None:
    """The output names the request asks for (None: all), checked before any work."""
    if not request.outputs:
        return None
    available = OUTPUTS + (TOKEN_OUTPUTS if options.include_tokens else ())
    names = set()
    for out in request.outputs:
        if out.name not in available:
            raise InvalidInput(
                f"outputs[{out.name}]",
                f"is not an output here; the outputs are {', '.join(available)}",
            )
        names.add(out.name)
    return names


def infer_response(
    request: pb.ModelInferRequest,
    model_name: str,
    results: Sequence[WordEmbeddings],
    options: EmbedOptions,
    wanted: set[str] | None,
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model_name, model_version=VERSION, id=request.id)
    for out in _flat_outputs(results, options):
        if wanted is None or out.name in wanted:
            response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            response.raw_output_contents.append(out.data)
    return response
