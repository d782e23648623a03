"""Public value types of the engine: what goes in, what comes out, and the options.

Importing this module costs numpy only: the client shares these types without loading the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from ctxembed.runtime.flag import flag

# Each choice is defined once, here; the CLI, the protobuf mapping and validation read it.
Pooling = Literal["mean", "first", "last", "first_last", "max"]
LayerCombine = Literal["mean", "concat"]
DType = Literal["float32", "float16"]
Provider = Literal["auto", "cpu", "cuda"]
POOLINGS: tuple[Pooling, ...] = get_args(Pooling)
LAYER_COMBINES: tuple[LayerCombine, ...] = get_args(LayerCombine)
DTYPES: tuple[DType, ...] = get_args(DType)
PROVIDERS: tuple[Provider, ...] = get_args(Provider)


@dataclass(frozen=True)
class CharSpan:
    """A span of the input in Unicode code points, end exclusive (``text[start:end]``)."""

    start: int
    end: int


@dataclass(frozen=True)
class TextInput:
    """One input: raw ``text`` or pre-split ``words``, optionally narrowed to some words/spans."""

    text: str | None = None
    words: Sequence[str] | None = None
    select_words: Sequence[str] = ()
    select_spans: Sequence[CharSpan] = ()


# What ``WordEmbedder.embed`` accepts per input: a string, a list of words, or a TextInput.
InputLike = str | Sequence[str] | TextInput


@dataclass(frozen=True)
class Token:
    piece: str
    id: int
    start: int
    end: int


@dataclass(frozen=True)
class Word:
    """A word (or selected span) of the input; ``text == input[start:end]``."""

    text: str
    start: int
    end: int
    index: int
    tokens: tuple[Token, ...] = ()


@dataclass(frozen=True)
class WordEmbeddings:
    """The result for one input: one row of ``vectors`` per entry of ``words``."""

    words: tuple[Word, ...]
    vectors: np.ndarray
    num_tokens: int
    num_windows: int


@dataclass(frozen=True)
class EmbedOptions:
    pooling: Pooling = "mean"
    layers: tuple[int, ...] = (-1,)
    layer_combine: LayerCombine = "mean"
    normalize: bool = False
    dtype: DType = "float32"
    include_tokens: bool = False


DEFAULT_OPTIONS = EmbedOptions()  # frozen: one shared instance as a default argument


@dataclass(frozen=True)
class Limits:
    """Per-text limits; the service adds its per-request limit on the number of inputs."""

    max_chars_per_text: int = field(
        default=100_000, metadata=flag("characters per text", name="--max-chars", minimum=1)
    )
    max_words_per_text: int = field(
        default=10_000, metadata=flag("words per pre-split text", name="--max-words", minimum=1)
    )
    max_spans_per_text: int = field(
        default=1_000, metadata=flag("select_spans per text", name="--max-spans", minimum=1)
    )
    max_inputs_per_request: int = field(
        default=256, metadata=flag("inputs per request", name="--max-inputs", minimum=1)
    )
    max_select_words: int = field(default=1_000, metadata=flag("select_words per text", minimum=1))
    # Tokens of all texts of one request, checked by the server (in process a call may be as
    # large as memory allows): bounds what one call costs and what a response weighs.
    max_tokens_per_request: int = field(
        default=32_768,
        metadata=flag(
            "tokens of all the texts of one request (about 2-3 s of int8 MiniLM on 2 cores)",
            minimum=1,
        ),
    )


@dataclass(frozen=True)
class ModelInfo:
    """What an engine serves: the model, how it runs, and its limits (``GetModelInfo``)."""

    name: str  # folder name of the model
    source_model: str  # Hugging Face id or path it was exported from
    architecture: str  # e.g. BertModel
    model_type: str  # the config's model_type, e.g. bert, roberta
    dimension: int  # hidden size (per layer, before FIRST_LAST or LAYER_CONCAT)
    num_layers: int
    layers_available: tuple[int, ...]
    max_tokens_per_window: int
    precision: str  # int8 | fp16 | fp32
    execution_provider: str  # e.g. CPUExecutionProvider
    lowercase: bool
    limits: Limits
    onnxruntime_version: str
    threads: int  # intra-op threads of a lone run
    parallel_runs: int  # single-threaded runs in flight at once
    server_version: str = ""  # set by the server
    word_segmentation: str = "bert"  # how raw text is split into words (segmentation.py)
    fused_kernels: bool = False  # ctxembed's fused CPU kernels registered (ctxembed.kernels)
