"""The ``ctxembed.v1.WordEmbedder`` servicer: protobuf in, batcher, protobuf out."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, TypeVar

import grpc
from google.rpc import status_pb2

from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.types import WordEmbeddings
from ctxembed.runtime.validation import check_request_size
from ctxembed.service.metrics import ModelMetrics
from ctxembed.service.registry import ModelRegistry, ServedModel
from ctxembed.service.status import plain, status_for
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc
from ctxembed.v1.wire import DecodedRequest, call_from_request, info_to_pb, response_from_results

log = logging.getLogger("ctxembed.service")
access = logging.getLogger("ctxembed.access")
Context = grpc.aio.ServicerContext[Any, Any]


def _rpc_status(status: grpc.Status) -> status_pb2.Status:
    """The google.rpc.Status behind a grpc.Status (code, message and details)."""
    for key, value in status.trailing_metadata or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=status.code.value[0], message=status.details or "")


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


STREAM_WINDOW = 16  # stream requests in flight at once (responses still go out in order)


@functools.cache
def server_version() -> str:
    try:
        return metadata.version("ctxembed")
    except metadata.PackageNotFoundError:
        return "unknown"


class Malformed:
    """What the deserializer returns for bytes that are not a valid message: the handler answers
    INVALID_ARGUMENT instead of grpcio logging a traceback and answering UNKNOWN."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def safe_parse(message: type[Any]) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception as exc:  # protobuf's DecodeError, or bytes that are not UTF-8 text
            _warn_malformed(exc)
            return Malformed(exc)

    return parse


_last_malformed_warning = 0.0


def _warn_malformed(exc: Exception) -> None:
    """At most one warning a minute: a client sending garbage must not flood the log."""
    global _last_malformed_warning
    now = time.monotonic()
    if now - _last_malformed_warning >= 60.0:
        _last_malformed_warning = now
        log.warning("a request could not be decoded (%s); answered INVALID_ARGUMENT", exc)


def _checked(request: Any) -> pb.EmbedRequest:
    if isinstance(request, Malformed):
        raise InvalidInput("request", f"is not a valid ctxembed.v1 message: {request.error}")
    return request  # type: ignore[no-any-return]


@dataclass
class CallRecord:
    """What a call's observation needs to know once the request is read: its model's metrics
    (the default model's until then, e.g. for a request that names an unknown model)."""

    metrics: ModelMetrics | None


class CallObserver:
    """Metrics and the access log line of each call (or stream message), for every face."""

    def __init__(self, registry: ModelRegistry, access_log: bool) -> None:
        self.registry = registry
        self.access_log = access_log

    def record(self) -> CallRecord:
        return CallRecord(self.registry.default.metrics)

    def observe(
        self,
        method: str,
        code: grpc.StatusCode,
        started: float,
        results: list[WordEmbeddings],
        context: Context,
        record: CallRecord,
    ) -> None:
        seconds = time.perf_counter() - started
        if record.metrics is not None:
            record.metrics.record_request(method, code.name, seconds)
            if results:
                record.metrics.record_results(results)
        if self.access_log:
            access.info(
                "%s peer=%s code=%s ms=%.2f texts=%d tokens=%d",
                method,
                context.peer(),
                code.name,
                seconds * 1000,
                len(results),
                sum(r.num_tokens for r in results),
                extra={"method": method, "peer": context.peer(), "code": code.name,
                       "ms": round(seconds * 1000, 3), "texts": len(results),
                       "tokens": sum(r.num_tokens for r in results)},
            )  # fmt: skip


def call_status(exc: Exception, prefix: str = "") -> grpc.Status:
    """The status a failed call answers; anything unexpected is logged and INTERNAL."""
    status = status_for(exc, prefix)
    if status is None:
        log.error("internal error", exc_info=exc)
        status = plain(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    return status


Response = TypeVar("Response")


async def run_batched(
    served: ServedModel,
    call: DecodedRequest,
    context: Context,
    build: Callable[[list[WordEmbeddings]], Response],
) -> tuple[Response, list[WordEmbeddings]]:
    """Queue a decoded request on its model's batcher, wait for its results and build the
    response (timed as the serialize stage): what every face of the service does."""
    batcher, metrics = served.batcher, served.metrics
    if metrics is None:
        results = await batcher.submit(call, context.time_remaining())
    else:
        with metrics.in_progress.track_inprogress():
            results = await batcher.submit(call, context.time_remaining())
    start = time.perf_counter()
    response = build(results)
    serialize_s = time.perf_counter() - start
    batcher.stats.serialize_s += serialize_s
    if metrics is not None:
        metrics.record_stage("serialize", serialize_s)
    return response, results


Work = Callable[[CallRecord], Awaitable[tuple[Response, list[WordEmbeddings]]]]


async def answer(
    calls: CallObserver, method: str, context: Context, work: Work[Response]
) -> Response:
    """Run one unary call: its status from what ``work`` raises, observed either way (under
    the model ``work`` puts in the record)."""
    started = time.perf_counter()
    record = calls.record()
    try:
        response, results = await work(record)
    except asyncio.CancelledError:
        calls.observe(method, grpc.StatusCode.CANCELLED, started, [], context, record)
        raise
    except Exception as exc:
        status = call_status(exc)
        calls.observe(method, status.code, started, [], context, record)
        await context.abort_with_status(status)  # type: ignore[attr-defined]
        raise AssertionError("unreachable: abort raises") from exc
    calls.observe(method, grpc.StatusCode.OK, started, results, context, record)
    return response


class WordEmbedderServicer(pb_grpc.WordEmbedderServicer):
    def __init__(self, registry: ModelRegistry, access_log: bool = False) -> None:
        self.registry = registry
        self.calls = CallObserver(registry, access_log)
        # model_name is the name a model is served under (its folder's unless --model NAME=DIR)
        self._info = {
            served.name: info_to_pb(
                replace(served.model.info(), name=served.name, server_version=server_version())
            )
            for served in registry
        }

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the methods with decoders that never raise (see ``Malformed``)."""
        handlers = {
            "Embed": grpc.unary_unary_rpc_method_handler(
                self.Embed,
                request_deserializer=safe_parse(pb.EmbedRequest),
                response_serializer=pb.EmbedResponse.SerializeToString,
            ),
            "EmbedStream": grpc.stream_stream_rpc_method_handler(
                self.EmbedStream,
                request_deserializer=safe_parse(pb.EmbedRequest),
                response_serializer=pb.EmbedResponse.SerializeToString,
            ),
            "GetModelInfo": grpc.unary_unary_rpc_method_handler(
                self.GetModelInfo,
                request_deserializer=safe_parse(pb.GetModelInfoRequest),
                response_serializer=pb.ModelInfo.SerializeToString,
            ),
            "ListModels": grpc.unary_unary_rpc_method_handler(
                self.ListModels,
                request_deserializer=safe_parse(pb.ListModelsRequest),
                response_serializer=pb.ListModelsResponse.SerializeToString,
            ),
        }
        name = pb.DESCRIPTOR.services_by_name["WordEmbedder"].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))

    async def _embed(
        self, request: pb.EmbedRequest, context: Context, record: CallRecord
    ) -> tuple[pb.EmbedResponse, list[WordEmbeddings]]:
        request = _checked(request)
        served = self.registry.get(request.model)
        record.metrics = served.metrics
        check_request_size(len(request.inputs), served.model.limits)
        call = call_from_request(request)
        return await run_batched(served, call, context, response_from_results)

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        return await answer(
            self.calls, "Embed", context, lambda record: self._embed(request, context, record)
        )

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: Context
    ) -> AsyncIterator[pb.EmbedResponse]:
        """One response per request, in order. A request that fails gets a response carrying
        its status in ``error``, and the stream goes on (bulk work survives one bad item)."""
        Item = tuple[float, CallRecord, asyncio.Task[tuple[pb.EmbedResponse, list[WordEmbeddings]]]]
        # Unbounded so that the end marker always fits; the window bounds what is in flight.
        pending: asyncio.Queue[Item | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    record = self.calls.record()
                    task = asyncio.ensure_future(self._embed(request, context, record))
                    # A client that goes away leaves tasks nobody awaits: their outcome is
                    # retrieved here, so none is logged as "never retrieved".
                    task.add_done_callback(_consume)
                    pending.put_nowait((time.perf_counter(), record, task))
            finally:
                pending.put_nowait(None)  # also when the reader fails: the stream must end

        reader = asyncio.ensure_future(read())
        reader.add_done_callback(_consume)
        index = 0
        try:
            while (item := await pending.get()) is not None:
                started, record, task = item
                try:
                    response, results = await task
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    status = call_status(exc, f"stream request {index}: ")
                    self.calls.observe("EmbedStream", status.code, started, [], context, record)
                    yield pb.EmbedResponse(error=_rpc_status(status))
                else:
                    code = grpc.StatusCode.OK
                    self.calls.observe("EmbedStream", code, started, results, context, record)
                    yield response
                finally:
                    window.release()
                index += 1
            try:
                await reader  # re-raises what ended the reading early, if anything did
            except Exception as exc:
                await context.abort_with_status(call_status(exc))  # type: ignore[attr-defined]
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover[2].cancel()

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        async def work(record: CallRecord) -> tuple[pb.ModelInfo, list[WordEmbeddings]]:
            if isinstance(request, Malformed):
                raise InvalidInput("request", f"cannot be decoded: {request.error}")
            served = self.registry.get(request.model)
            record.metrics = served.metrics
            return self._info[served.name], []

        return await answer(self.calls, "GetModelInfo", context, work)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        async def work(record: CallRecord) -> tuple[pb.ListModelsResponse, list[WordEmbeddings]]:
            if isinstance(request, Malformed):
                raise InvalidInput("request", f"cannot be decoded: {request.error}")
            models = [self._info[served.name] for served in self.registry]
            return pb.ListModelsResponse(
                models=models, default_model=self.registry.default.name
            ), []

        return await answer(self.calls, "ListModels", context, work)
