"""Python client for a ctxembed server: the same calls and result types as ``WordEmbedder``.

with Client("127.0.0.1:50051") as client:
    [res] = client.embed(["I live near the bank of America"])
    bank = client.embed_word("I sat by the river bank", "bank")

Thin: importing it loads grpc, protobuf and numpy, never onnxruntime or tokenizers (tested).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from ctxembed.runtime.errors import CtxembedError, InvalidInput
from ctxembed.runtime.types import InputLike, ModelInfo, TextInput, WordEmbeddings
from ctxembed.service.convert import info_from_pb, request_from_call, results_from_response
from ctxembed.service.status import field_violations
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


class WordNotFound(CtxembedError, LookupError):
    """``embed_word`` asked for a word (occurrence) that the text does not contain."""


def _raise_typed(error: grpc.RpcError) -> None:
    """Turn INVALID_ARGUMENT back into the engine's InvalidInput; re-raise anything else."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
        violations = field_violations(error)
        if violations:
            field, description = violations[0]
            raise InvalidInput(field, description) from error
    raise error


def make_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


class Client:
    """Blocking client. ``credentials`` (e.g. ``grpc.ssl_channel_credentials()``) enables TLS."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        self._channel = make_channel(target, credentials)
        self._stub = pb_grpc.WordEmbedderStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def embed(
        self, inputs: Sequence[InputLike], *, timeout: float | None = None, **options: Any
    ) -> list[WordEmbeddings]:
        """Like ``WordEmbedder.embed``: pooling, layers, layer_combine, normalize, dtype..."""
        request = request_from_call(inputs, **options)
        try:
            response = self._stub.Embed(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            _raise_typed(error)
            raise
        return results_from_response(response)

    def embed_word(self, text: str, word: str, occurrence: int = 0, **options: Any) -> np.ndarray:
        """The vector of one occurrence (0-based) of ``word`` in ``text``."""
        [res] = self.embed([TextInput(text=text, select_words=[word])], **options)
        if occurrence >= len(res.words):
            found = len(res.words)
            raise WordNotFound(
                f"{word!r} occurs {found} time(s) in the text; occurrence {occurrence} is absent"
            )
        return res.vectors[occurrence]

    def embed_stream(
        self, batches: Iterable[Sequence[InputLike]], **options: Any
    ) -> Iterator[list[WordEmbeddings]]:
        """Bulk work over one stream: one result list per batch, in order."""
        requests = (request_from_call(batch, **options) for batch in batches)
        try:
            for response in self._stub.EmbedStream(requests, timeout=self.timeout):
                yield results_from_response(response)
        except grpc.RpcError as error:
            _raise_typed(error)
            raise

    def info(self) -> ModelInfo:
        """What the server serves: model, dimension, layers, limits, versions."""
        return info_from_pb(self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout))


class AsyncClient:
    """asyncio client (grpc.aio) for concurrent callers."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.WordEmbedderStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def embed(
        self, inputs: Sequence[InputLike], *, timeout: float | None = None, **options: Any
    ) -> list[WordEmbeddings]:
        request = request_from_call(inputs, **options)
        try:
            response = await self._stub.Embed(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            _raise_typed(error)
            raise
        return results_from_response(response)

    async def embed_stream(
        self, batches: Iterable[Sequence[InputLike]], **options: Any
    ) -> AsyncIterator[list[WordEmbeddings]]:
        requests = [request_from_call(batch, **options) for batch in batches]
        call = self._stub.EmbedStream(iter(requests), timeout=self.timeout)
        try:
            async for response in call:
                yield results_from_response(response)
        except grpc.RpcError as error:
            _raise_typed(error)
            raise

    async def info(self) -> ModelInfo:
        message = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout)
        return info_from_pb(message)
