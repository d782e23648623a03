"""The ``ctxembed.v1.WordEmbedder`` servicer: protobuf in, batcher, protobuf out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from importlib import metadata
from typing import Any

import grpc

from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.stages import WordEmbeddingModel
from ctxembed.service.batcher import MicroBatcher
from ctxembed.service.convert import call_from_request, info_to_pb, response_from_results
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
    def __init__(self, model: WordEmbeddingModel, batcher: MicroBatcher) -> None:
        self.model = model
        self.batcher = batcher
        self.limits = model.limits
        self._info = info_to_pb(replace(model.info(), server_version=server_version()))

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
        return self._info
