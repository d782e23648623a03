"""The ``ctxembed.v1.WordEmbedder`` servicer: protobuf in, batcher, protobuf out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import grpc
import onnxruntime as ort

from ctxembed.runtime import InvalidInput, Limits, WordEmbedder
from ctxembed.service.batcher import MicroBatcher
from ctxembed.service.convert import call_from_request, response_from_results
from ctxembed.service.status import plain, status_for
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc

log = logging.getLogger("ctxembed.service")
Context = grpc.aio.ServicerContext[Any, Any]
STREAM_WINDOW = 16  # stream requests in flight at once (responses still go out in order)


@functools.cache
def server_version() -> str:
    try:
        return metadata.version("ctxembed")
    except metadata.PackageNotFoundError:
        return "unknown"


class WordEmbedderServicer(pb_grpc.WordEmbedderServicer):
    def __init__(self, embedder: WordEmbedder, batcher: MicroBatcher, limits: Limits) -> None:
        self.embedder = embedder
        self.batcher = batcher
        self.limits = limits

    async def _embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        if len(request.inputs) > self.limits.max_inputs_per_request:
            limit = self.limits.max_inputs_per_request
            raise InvalidInput(
                "inputs", f"has {len(request.inputs)} inputs; the limit is {limit}", limit
            )
        if not request.inputs:
            raise InvalidInput("inputs", "must not be empty")
        call = call_from_request(request)
        results = await self.batcher.submit(call, context.time_remaining())
        start = time.perf_counter()
        response = response_from_results(results)
        self.batcher.stats.serialize_s += time.perf_counter() - start
        return response

    async def _abort(self, context: Context, exc: Exception, prefix: str = "") -> None:
        status = status_for(exc, self.batcher.max_queue, prefix)
        if status is None:
            log.error("internal error", exc_info=exc)
            status = plain(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        await context.abort_with_status(status)  # type: ignore[attr-defined]

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        try:
            return await self._embed(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._abort(context, exc)
            raise AssertionError("unreachable: abort raises") from exc

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: Context
    ) -> AsyncIterator[pb.EmbedResponse]:
        pending: asyncio.Queue[asyncio.Task[pb.EmbedResponse] | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            async for request in request_iterator:
                await pending.put(asyncio.ensure_future(self._embed(request, context)))
            await pending.put(None)

        reader = asyncio.ensure_future(read())
        index = 0
        try:
            while (task := await pending.get()) is not None:
                try:
                    yield await task
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await self._abort(context, exc, f"stream request {index}: ")
                index += 1
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        m = self.embedder.manifest
        limits = self.limits
        return pb.ModelInfo(
            model_name=m.name,
            source_model=str(m.source.get("model", "")),
            architecture=m.architecture,
            dimension=m.hidden_size,
            num_layers=m.num_layers,
            layers_available=m.layers_available,
            max_tokens_per_window=m.max_tokens,
            precision=self.embedder.session.variant.precision,
            execution_provider=self.embedder.session.provider,
            server_version=server_version(),
            onnxruntime_version=ort.__version__,
            lowercase=m.tokenizer.lowercase,
            limits=pb.Limits(
                max_inputs_per_request=limits.max_inputs_per_request,
                max_chars_per_text=limits.max_chars_per_text,
                max_words_per_text=limits.max_words_per_text,
                max_spans_per_text=limits.max_spans_per_text,
            ),
        )
