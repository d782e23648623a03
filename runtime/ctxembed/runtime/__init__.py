"""ctxembed's engine: contextual word vectors from an exported model, without PyTorch.

Importing this package never imports torch, transformers or optimum. The value and error types
load at once (numpy only); ``WordEmbedder`` loads onnxruntime and tokenizers on first use, so a
gRPC client that shares the types never loads the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ctxembed.runtime.errors import CtxembedError, InvalidInput, ModelLoadError, ProviderUnavailable
from ctxembed.runtime.types import (
    CharSpan,
    EmbedOptions,
    Limits,
    ModelInfo,
    TextInput,
    Token,
    Word,
    WordEmbeddings,
)

if TYPE_CHECKING:
    from ctxembed.runtime.embedder import TextPlan, TokenizedInputs, WordEmbedder
    from ctxembed.runtime.settings import EngineSettings

_LAZY = {
    "TokenizedInputs": "ctxembed.runtime.embedder",
    "TextPlan": "ctxembed.runtime.embedder",
    "WordEmbedder": "ctxembed.runtime.embedder",
    "EngineSettings": "ctxembed.runtime.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CharSpan",
    "CtxembedError",
    "EmbedOptions",
    "EngineSettings",
    "InvalidInput",
    "Limits",
    "ModelInfo",
    "ModelLoadError",
    "ProviderUnavailable",
    "TextInput",
    "TextPlan",
    "Token",
    "TokenizedInputs",
    "Word",
    "WordEmbedder",
    "WordEmbeddings",
]
