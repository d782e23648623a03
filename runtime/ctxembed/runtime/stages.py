"""The engine as the service sees it: three stages and a description, nothing else.

The micro-batcher drives ``prepare`` → ``forward`` → ``finish`` separately so that one schedule
of ONNX runs serves many requests; the servicer reads ``info()``. ``WordEmbedder`` implements this
protocol, and so does the tests' fake model, which lets transport tests run without an export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ctxembed.runtime.types import EmbedOptions, InputLike, Limits, ModelInfo, WordEmbeddings


class PreparedInputs(Protocol):
    """What ``prepare`` returns: validated, tokenized texts and the layers they need."""

    @property
    def texts(self) -> Sequence[Any]: ...

    @property
    def layer_ids(self) -> tuple[int, ...]: ...

    @property
    def num_tokens(self) -> int:
        """Tokens of all the call's texts (the server's per-request limit counts them)."""
        ...

    def response_bytes(self, dimension: int) -> int:
        """About how many bytes the results take once serialized."""
        ...


class WordEmbeddingModel(Protocol):
    @property
    def limits(self) -> Limits: ...

    @property
    def parallel_runs(self) -> int:
        """Runs the engine computes at once: the batcher keeps that many batches in flight."""
        ...

    def info(self) -> ModelInfo: ...

    def prepare(self, inputs: Sequence[InputLike], options: EmbedOptions = ...) -> PreparedInputs:
        """Validate and tokenize; raises ``InvalidInput`` naming the field."""
        ...

    def forward(
        self,
        texts: Sequence[Any],
        layer_ids: Sequence[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        """Token states of the prepared texts (of any number of calls), for these layers;
        raises ``Abandoned`` between runs once ``should_stop()`` is true."""
        ...

    def finish(
        self, prepared: Any, states: Sequence[np.ndarray], state_layers: Sequence[int]
    ) -> list[WordEmbeddings]:
        """Pool one call's states into its results."""
        ...

    def close(self) -> None: ...


def response_bytes(
    options: EmbedOptions, dimension: int, texts: Sequence[tuple[int, int, int]]
) -> int:
    """Serialized size estimate of results with (words, tokens, characters) per text: each
    vector, ~16 bytes a word, the words' text, and ~24 bytes a token with include_tokens."""
    width = dimension * (2 if options.pooling == "first_last" else 1)
    if options.layer_combine == "concat":
        width *= max(1, len(options.layers))
    item = 2 if options.dtype == "float16" else 4
    total = 0
    for words, tokens, chars in texts:
        total += words * (width * item + 16) + 4 * chars
        if options.include_tokens:
            total += tokens * 24
    return total
