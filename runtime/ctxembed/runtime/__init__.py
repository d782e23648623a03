"""ctxembed's engine: contextual word vectors from an exported model, without PyTorch.

Importing this package never imports torch, transformers or optimum.
"""

from ctxembed.runtime.embedder import Prepared, PreparedText, WordEmbedder
from ctxembed.runtime.errors import CtxembedError, InvalidInput, ModelLoadError, ProviderUnavailable
from ctxembed.runtime.types import (
    CharSpan,
    EmbedOptions,
    Limits,
    TextInput,
    Token,
    Word,
    WordEmbeddings,
)

__all__ = [
    "CharSpan",
    "CtxembedError",
    "EmbedOptions",
    "InvalidInput",
    "Limits",
    "ModelLoadError",
    "Prepared",
    "PreparedText",
    "ProviderUnavailable",
    "TextInput",
    "Token",
    "Word",
    "WordEmbedder",
    "WordEmbeddings",
]
