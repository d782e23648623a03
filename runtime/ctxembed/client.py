"""Python client for a ctxembed server: the same calls and result types as ``WordEmbedder``.

with Client("127.0.0.1:50051") as client:
    [res] = client.embed(["I live near the bank of America"])
    bank = client.embed_word("I sat by the river bank", "bank")

Thin: importing it loads grpc, protobuf and numpy, never onnxruntime or tokenizers (tested).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import grpc
import numpy as np

from ctxembed.runtime.errors import CtxembedError, InvalidInput
from ctxembed.runtime.types import EmbedOptions, InputLike, ModelInfo, TextInput, WordEmbeddings
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc
from ctxembed.v1.wire import (
    field_violations,
    field_violations_of,
    info_from_pb,
    request_from_call,
    results_from_response,
)

DEFAULT_TARGET = "127.0.0.1:50051"
# Spread calls over every address a target resolves to (dns:///host:port with a headless
# Service, or ipv4:a:p1,b:p2) and retry a call that met a dead replica on another one: every
# method is idempotent. gRPC's own machinery (service config), not a hand loop.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": "ctxembed.v1.WordEmbedder"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
]


class WordNotFound(CtxembedError, LookupError):
    """``embed_word`` asked for a word (occurrence) that the text does not contain."""


class ClientConfigError(CtxembedError, ValueError):
    """The client's own settings do not fit together."""


class StreamRequestFailed(CtxembedError):
    """One request of a stream failed (its response carried ``error``); the stream went on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def stream_error(response: pb.EmbedResponse) -> CtxembedError | None:
    """The typed error a stream response carries, or None: ``InvalidInput`` for bad input
    (with its field), ``StreamRequestFailed`` for anything else."""
    if not response.HasField("error"):
        return None
    status = response.error
    bad = field_violations_of(status)
    if bad:
        field, description = bad[0]
        return InvalidInput(field, description)
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    return StreamRequestFailed(code, status.message)


def _raise_typed(error: grpc.RpcError) -> None:
    """Turn INVALID_ARGUMENT back into the engine's InvalidInput; re-raise anything else."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
        violations = field_violations(error)
        if violations:
            field, description = violations[0]
            raise InvalidInput(field, description) from error
    raise error


PathLike = str | Path


def channel_credentials(
    credentials: grpc.ChannelCredentials | None = None,
    tls_ca: PathLike | None = None,
    tls_cert: PathLike | None = None,
    tls_key: PathLike | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files: ``tls_ca`` verifies the server (default: the system's
    roots), ``tls_cert`` and ``tls_key`` are the client's certificate for mutual TLS."""
    files = (tls_ca, tls_cert, tls_key)
    if credentials is not None:
        if any(files):
            raise ClientConfigError("pass credentials= or the tls_* files, not both")
        return credentials
    if (tls_cert is None) != (tls_key is None):
        raise ClientConfigError(
            "--tls-cert and --tls-key go together (the client's certificate and key)"
        )
    if not any(files):
        return None
    ca, cert, key = (Path(f).read_bytes() if f is not None else None for f in files)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _stream_item(
    response: pb.EmbedResponse, errors: Literal["raise", "return"]
) -> list[WordEmbeddings] | CtxembedError:
    """A stream response's results, or its typed error: raised, or returned in their place."""
    failure = stream_error(response)
    if failure is None:
        return results_from_response(response)
    if errors == "return":
        return failure
    raise failure


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Call metadata carrying ``token`` (``--auth-token-file`` on the server)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def make_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def _options(options: dict[str, Any]) -> EmbedOptions:
    """The typed options of ``embed(..., pooling=..., layers=...)``; a misspelt one is named."""
    try:
        return EmbedOptions(**options)
    except TypeError:
        known = [f.name for f in fields(EmbedOptions)]
        unknown = sorted(set(options) - set(known))
        raise InvalidInput(unknown[0], f"unknown option; use {', '.join(known)}") from None


def _occurrence(res: WordEmbeddings, word: str, occurrence: int) -> np.ndarray:
    if occurrence >= len(res.words):
        found = len(res.words)
        raise WordNotFound(
            f"{word!r} occurs {found} time(s) in the text; occurrence {occurrence} is absent"
        )
    return res.vectors[occurrence]


class _Connection:
    """What both clients share: the per-call timeout, the token's metadata, the credentials,
    and the channel and stub (the subclass says how to open the channel)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        token: str | None = None,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        model: str = "",
    ) -> None:
        self.timeout = timeout
        self.model = model  # which of the server's models (ListModels); "": its default
        self._metadata = bearer(token)
        self._credentials = channel_credentials(credentials, tls_ca, tls_cert, tls_key)
        self._channel = self._open(target)
        self._stub = pb_grpc.WordEmbedderStub(self._channel)

    def _open(self, target: str) -> Any:
        raise NotImplementedError

    def _per_call(self, timeout: float | None) -> float | None:
        return timeout or self.timeout

    def _request(self, inputs: Sequence[InputLike], options: EmbedOptions) -> pb.EmbedRequest:
        request = request_from_call(inputs, options)
        request.model = self.model
        return request


class Client(_Connection):
    """Blocking client. TLS: ``tls_ca`` (the server's CA), and ``tls_cert``/``tls_key`` for
    mutual TLS, or ``credentials`` built by hand; ``token`` is sent as a bearer token.

    Result vectors are read-only views of the received bytes (no copy): ``.copy()`` one to
    write to it. The engine's own results (``WordEmbedder.embed``) are writable."""

    _channel: grpc.Channel

    def _open(self, target: str) -> grpc.Channel:
        return make_channel(target, self._credentials)

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
        request = self._request(inputs, _options(options))
        try:
            response = self._stub.Embed(
                request, timeout=self._per_call(timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            _raise_typed(error)
            raise
        return results_from_response(response)

    def embed_word(self, text: str, word: str, occurrence: int = 0, **options: Any) -> np.ndarray:
        """The vector of one occurrence (0-based) of ``word`` in ``text``."""
        [res] = self.embed([TextInput(text=text, select_words=[word])], **options)
        return _occurrence(res, word, occurrence)

    def embed_stream(
        self,
        batches: Iterable[Sequence[InputLike]],
        *,
        errors: Literal["raise", "return"] = "raise",
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[list[WordEmbeddings] | CtxembedError]:
        """Bulk work over one stream: one result list per batch, in order. A batch that fails
        raises its typed error (``errors="raise"``), or is yielded as that error in place of
        its results while the stream goes on (``errors="return"``). Requests are sent as the
        batches are read. A stream has no overall deadline (the client's ``timeout`` is per
        call) unless ``timeout`` sets one."""
        typed = _options(options)
        requests = (self._request(batch, typed) for batch in batches)
        try:
            stream = self._stub.EmbedStream(requests, timeout=timeout, metadata=self._metadata)
            for response in stream:
                yield _stream_item(response, errors)
        except grpc.RpcError as error:
            _raise_typed(error)
            raise

    def info(self) -> ModelInfo:
        """What the server serves: model, dimension, layers, limits, versions."""
        request = pb.GetModelInfoRequest(model=self.model)
        return info_from_pb(
            self._stub.GetModelInfo(request, timeout=self.timeout, metadata=self._metadata)
        )

    def list_models(self) -> list[ModelInfo]:
        """Every model the server serves; the first is its default."""
        response = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return [info_from_pb(m) for m in response.models]

    def health(self, service: str = "") -> str:
        """The health service's status for ``service`` ("" = the server): SERVING, ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        response = stub.Check(request, timeout=self.timeout, metadata=self._metadata)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class AsyncClient(_Connection):
    """asyncio client (grpc.aio) for concurrent callers: ``Client``'s calls, awaited."""

    _channel: grpc.aio.Channel

    def _open(self, target: str) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(target, self._credentials, options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def embed(
        self, inputs: Sequence[InputLike], *, timeout: float | None = None, **options: Any
    ) -> list[WordEmbeddings]:
        request = self._request(inputs, _options(options))
        try:
            response = await self._stub.Embed(
                request, timeout=self._per_call(timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            _raise_typed(error)
            raise
        return results_from_response(response)

    async def embed_word(
        self, text: str, word: str, occurrence: int = 0, **options: Any
    ) -> np.ndarray:
        [res] = await self.embed([TextInput(text=text, select_words=[word])], **options)
        return _occurrence(res, word, occurrence)

    async def embed_stream(
        self,
        batches: Iterable[Sequence[InputLike]] | AsyncIterable[Sequence[InputLike]],
        *,
        errors: Literal["raise", "return"] = "raise",
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[list[WordEmbeddings] | CtxembedError]:
        """As ``Client.embed_stream``; ``batches`` may also be an async iterable."""
        typed = _options(options)

        async def requests() -> AsyncIterator[pb.EmbedRequest]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield self._request(batch, typed)
            else:
                for batch in batches:
                    yield self._request(batch, typed)

        call = self._stub.EmbedStream(requests(), timeout=timeout, metadata=self._metadata)
        try:
            async for response in call:
                yield _stream_item(response, errors)
        except grpc.RpcError as error:
            _raise_typed(error)
            raise

    async def info(self) -> ModelInfo:
        message = await self._stub.GetModelInfo(
            pb.GetModelInfoRequest(model=self.model), timeout=self.timeout, metadata=self._metadata
        )
        return info_from_pb(message)

    async def list_models(self) -> list[ModelInfo]:
        """Every model the server serves; the first is its default."""
        response = await self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return [info_from_pb(m) for m in response.models]
