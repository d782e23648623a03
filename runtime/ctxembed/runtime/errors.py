"""Typed errors of the engine. The service maps them to gRPC status codes in one place."""

from __future__ import annotations


class CtxembedError(Exception):
    """Base class of every error ctxembed raises on purpose."""


class InvalidInput(CtxembedError, ValueError):
    """Something the caller sent is not acceptable.

    ``field`` is a path into the request (``inputs[3].select_spans[0]``) so that a client can
    point at the culprit; ``limit`` is the limit that was exceeded, when there is one.
    """

    def __init__(self, field: str, message: str, limit: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message
        self.limit = limit


class ModelLoadError(CtxembedError):
    """A model folder is missing, corrupt, or of an unsupported format version."""


class ProviderUnavailable(CtxembedError):
    """The requested execution provider (e.g. CUDA) is not available in this install."""


class Abandoned(CtxembedError):
    """Work stopped between ONNX runs because nobody waits for its result any more."""
