"""Public value types of the engine: what goes in, what comes out, and the options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Pooling = Literal["mean", "first", "last", "first_last", "max"]
LayerCombine = Literal["mean", "concat"]
DType = Literal["float32", "float16"]
POOLINGS: tuple[str, ...] = ("mean", "first", "last", "first_last", "max")
LAYER_COMBINES: tuple[str, ...] = ("mean", "concat")
DTYPES: tuple[str, ...] = ("float32", "float16")
# How long ONNX Runtime's idle threads spin after a run (see session.SessionConfig).
DEFAULT_SPIN_AFTER_RUN_US = 3000
# Padding allowed in one ONNX run, as a fraction of its real tokens (see WordEmbedder._buckets).
DEFAULT_MAX_PADDING = 0.1


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
    pooling: str = "mean"
    layers: tuple[int, ...] = (-1,)
    layer_combine: str = "mean"
    normalize: bool = False
    dtype: str = "float32"
    include_tokens: bool = False


@dataclass(frozen=True)
class Limits:
    """Per-text limits; the service adds its per-request limit on the number of inputs."""

    max_chars_per_text: int = 100_000
    max_words_per_text: int = 10_000
    max_spans_per_text: int = 1_000
    max_inputs_per_request: int = 256
    max_select_words: int = 1_000
