"""Checks on what callers send, before any work: every failure names its field and limit."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.types import (
    DTYPES,
    LAYER_COMBINES,
    POOLINGS,
    CharSpan,
    EmbedOptions,
    InputLike,
    Limits,
    TextInput,
)


def check_request_size(count: int, limits: Limits) -> None:
    """A request's number of inputs, checked before anything is decoded further."""
    if count > limits.max_inputs_per_request:
        limit = limits.max_inputs_per_request
        raise InvalidInput("inputs", f"has {count} inputs; the limit is {limit}", limit)
    if not count:
        raise InvalidInput("inputs", "must not be empty")


def coerce_input(value: InputLike, field: str) -> TextInput:
    if isinstance(value, TextInput):
        return value
    if isinstance(value, str):
        return TextInput(text=value)
    if isinstance(value, Sequence) and all(isinstance(w, str) for w in value):
        return TextInput(words=list(value))
    raise InvalidInput(field, "expected a string, a list of words or a TextInput")


def check_input(inp: TextInput, field: str, limits: Limits) -> str:
    """Validate one input; return the text offsets refer to (pre-split words joined by spaces)."""
    if (inp.text is None) == (inp.words is None):
        raise InvalidInput(field, "set exactly one of text and words")
    if inp.text is not None:
        text = inp.text
        if not text:
            raise InvalidInput(f"{field}.text", "must not be empty")
        if len(text) > limits.max_chars_per_text:
            raise InvalidInput(
                f"{field}.text",
                f"has {len(text)} characters; the limit is {limits.max_chars_per_text}",
                limits.max_chars_per_text,
            )
    else:
        words = list(inp.words or ())
        if not words:
            raise InvalidInput(f"{field}.words", "must not be empty")
        if len(words) > limits.max_words_per_text:
            raise InvalidInput(
                f"{field}.words",
                f"has {len(words)} words; the limit is {limits.max_words_per_text}",
                limits.max_words_per_text,
            )
        for j, word in enumerate(words):
            if not word.strip():
                raise InvalidInput(f"{field}.words[{j}]", "must not be empty or only whitespace")
        text = " ".join(words)
        if len(text) > limits.max_chars_per_text:
            raise InvalidInput(
                f"{field}.words",
                f"joined by spaces has {len(text)} characters; the limit is"
                f" {limits.max_chars_per_text}",
                limits.max_chars_per_text,
            )
    _check_selection(inp, field, len(text), limits)
    return text


def _check_selection(inp: TextInput, field: str, length: int, limits: Limits) -> None:
    if inp.select_words and inp.select_spans:
        raise InvalidInput(f"{field}.select_spans", "cannot be combined with select_words")
    if len(inp.select_words) > limits.max_select_words:
        raise InvalidInput(
            f"{field}.select_words",
            f"has {len(inp.select_words)} entries; the limit is {limits.max_select_words}",
            limits.max_select_words,
        )
    for k, word in enumerate(inp.select_words):
        if not word.strip():
            raise InvalidInput(f"{field}.select_words[{k}]", "must not be empty")
    if len(inp.select_spans) > limits.max_spans_per_text:
        raise InvalidInput(
            f"{field}.select_spans",
            f"has {len(inp.select_spans)} spans; the limit is {limits.max_spans_per_text}",
            limits.max_spans_per_text,
        )
    for k, span in enumerate(inp.select_spans):
        if not isinstance(span, CharSpan):
            raise InvalidInput(f"{field}.select_spans[{k}]", "expected a CharSpan")
        if not 0 <= span.start < span.end:
            raise InvalidInput(
                f"{field}.select_spans[{k}]",
                f"needs 0 <= start < end, got [{span.start}, {span.end})",
            )
        if span.end > length:
            raise InvalidInput(
                f"{field}.select_spans[{k}]",
                f"[{span.start}, {span.end}) ends past the text, which has {length} code points",
                length,
            )


def check_options(
    options: EmbedOptions, num_layers: int, available: tuple[int, ...]
) -> tuple[EmbedOptions, tuple[int, ...]]:
    """Validated options and the absolute layer indices (0 = embeddings, num_layers = last).

    Types are checked on every call, before the cache: ``(-1.0,) == (-1,)`` and ``(True,) ==
    (1,)``, so a cache keyed on values alone would accept a float layer once an int one had
    been seen.
    """
    for name in ("pooling", "layer_combine", "dtype"):
        value = getattr(options, name)
        if not isinstance(value, str):
            raise InvalidInput(name, f"expected a string, got {value!r}")
    if isinstance(options.layers, (str, bytes)):
        raise InvalidInput("layers", "expected a list of integers")
    try:
        layers = tuple(options.layers) or (-1,)
    except TypeError:
        raise InvalidInput("layers", "expected a list of integers") from None
    for i, layer in enumerate(layers):
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise InvalidInput(f"layers[{i}]", f"expected an integer, got {layer!r}")
    for name in ("normalize", "include_tokens"):
        value = getattr(options, name)
        if not isinstance(value, bool):
            raise InvalidInput(name, f"expected true or false, got {value!r}")
    return _check_values(
        options.pooling,
        tuple(int(layer) for layer in layers),
        options.layer_combine,
        options.dtype,
        options.normalize,
        options.include_tokens,
        num_layers,
        available,
    )


@functools.lru_cache(maxsize=256)
def _check_values(
    pooling: str,
    layers: tuple[int, ...],
    layer_combine: str,
    dtype: str,
    normalize: bool,
    include_tokens: bool,
    num_layers: int,
    available: tuple[int, ...],
) -> tuple[EmbedOptions, tuple[int, ...]]:
    """The value checks of ``check_options``, cached: callers repeat the same few option sets.
    Every argument's type was checked, so equal keys mean equal options."""
    if pooling not in POOLINGS:
        raise InvalidInput(
            "pooling", f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}"
        )
    if layer_combine not in LAYER_COMBINES:
        raise InvalidInput(
            "layer_combine", f"unknown {layer_combine!r}; use one of {', '.join(LAYER_COMBINES)}"
        )
    if dtype not in DTYPES:
        raise InvalidInput("dtype", f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    absolute = []
    for i, layer in enumerate(layers):
        idx = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= idx <= num_layers:
            raise InvalidInput(
                f"layers[{i}]",
                f"layer {layer} does not exist: the model has layers 0..{num_layers}"
                f" (or -{num_layers + 1}..-1)",
                num_layers,
            )
        if idx not in available:
            raise InvalidInput(
                f"layers[{i}]",
                f"layer {layer} is not in this model folder, which outputs layers"
                f" {list(available)}; re-export it with `ctxembed export --layers all`",
            )
        absolute.append(idx)
    options = EmbedOptions(
        pooling,  # type: ignore[arg-type]  # checked above
        layers,
        layer_combine,  # type: ignore[arg-type]
        normalize,
        dtype,  # type: ignore[arg-type]
        include_tokens,
    )
    return options, tuple(absolute)
