"""Server interceptors: the shutdown drain, and the refusal handler the interceptors share.

On SIGTERM, grpc's ``server.stop()`` kills the calls still waiting in its queue, unmatched to a
handler, and their clients see ``CANCELLED``, which retry policies do not retry. So the server
first *drains*: every new call is answered ``UNAVAILABLE`` at once (retryable on another
replica) while the calls in progress finish, and only then stops.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # grpc-stubs makes it generic; grpcio's class is not subscriptable
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# The open inference protocol's probes: answered while draining (ready: false), like health.
INFERENCE_PROBES = tuple(
    f"/inference.GRPCInferenceService/{m}" for m in ("ServerLive", "ServerReady", "ModelReady")
)
# ... and what is open without a token: the probes and the metadata, as Triton and KServe do.
INFERENCE_OPEN = (
    *INFERENCE_PROBES,
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
)


def refusal(handler: Handler | None, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same streaming kind as ``handler`` that answers ``code``."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(streaming)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(unary)
    return grpc.unary_unary_rpc_method_handler(unary)


class Drain(Interceptor):
    """Counts the calls in progress; once closed, answers new ones UNAVAILABLE (health stays)."""

    def __init__(self) -> None:
        self.closed = False
        self.active = 0
        self.refused = 0

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or details.method.startswith((HEALTH_PREFIX, *INFERENCE_PROBES)):
            return handler
        if self.closed:
            self.refused += 1
            message = "server is shutting down; retry on another replica"
            return refusal(handler, grpc.StatusCode.UNAVAILABLE, message)
        return self._counted(handler)

    def _counted(self, handler: Handler) -> Handler:
        kinds = {
            (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
            (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
            (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
            (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
        }
        attribute, make = kinds[(handler.request_streaming, handler.response_streaming)]
        inner = getattr(handler, attribute)
        # A streaming response comes from an async generator, or from a coroutine that writes
        # through the context (the refusal above): wrap each as what it is.
        if inspect.isasyncgenfunction(inner):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                self.active += 1
                try:
                    async for response in inner(request, context):
                        yield response
                finally:
                    self.active -= 1

            behavior: Any = stream
        else:

            async def single(request: Any, context: Any) -> Any:
                self.active += 1
                try:
                    return await inner(request, context)
                finally:
                    self.active -= 1

            behavior = single
        return make(  # type: ignore[no-any-return]
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
