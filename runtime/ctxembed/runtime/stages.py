"""The engine as the service sees it: three stages and a description, nothing else.

The micro-batcher drives ``prepare`` → ``forward`` → ``finish`` separately so that one schedule
of ONNX runs serves many requests; the servicer reads ``info()``. ``WordEmbedder`` implements this
protocol, and so does the tests' fake model, which lets transport tests run without an export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ctxembed.runtime.types import (
    DType,
    InputLike,
    LayerCombine,
    Limits,
    ModelInfo,
    Pooling,
    WordEmbeddings,
)


class PreparedCall(Protocol):
    """What ``prepare`` returns: validated, tokenized texts and the layers they need."""

    @property
    def texts(self) -> Sequence[Any]: ...

    @property
    def layer_ids(self) -> tuple[int, ...]: ...


class WordEmbeddingModel(Protocol):
    @property
    def limits(self) -> Limits: ...

    @property
    def parallel_runs(self) -> int:
        """Runs the engine computes at once: the batcher keeps that many batches in flight."""
        ...

    def info(self) -> ModelInfo: ...

    def prepare(
        self,
        inputs: Sequence[InputLike],
        *,
        pooling: Pooling = ...,
        layers: Sequence[int] = ...,
        layer_combine: LayerCombine = ...,
        normalize: bool = ...,
        dtype: DType = ...,
        include_tokens: bool = ...,
    ) -> PreparedCall:
        """Validate and tokenize; raises ``InvalidInput`` naming the field."""
        ...

    def forward(self, texts: Sequence[Any], layer_ids: Sequence[int]) -> list[np.ndarray]:
        """Token states of the prepared texts (of any number of calls), for these layers."""
        ...

    def finish(
        self, prepared: Any, states: Sequence[np.ndarray], state_layers: Sequence[int]
    ) -> list[WordEmbeddings]:
        """Pool one call's states into its results."""
        ...

    def close(self) -> None: ...
