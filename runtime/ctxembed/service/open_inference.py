"""``inference.GRPCInferenceService``, the open inference protocol (KServe v2, which Triton
implements and extends), beside ``ctxembed.v1`` on the same port: the same models, batchers,
limits, auth, metrics and drain, so ``tritonclient``, ``perf_analyzer`` and KServe's v2 clients
work unchanged. Conversions live in ``ctxembed/inference/wire.py``; this module only routes.

Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer,
and Triton's ModelConfig and ModelStatistics; every other method answers UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ctxembed.inference import grpc_service_pb2 as pb
from ctxembed.inference import model_config_pb2 as mc
from ctxembed.inference.wire import (
    OFFSETS,
    TEXT,
    TEXT_INDEX,
    VECTORS,
    VERSION,
    WORDS,
    WORDS_TEXT_INDEX,
    decode_infer_request,
    infer_response,
    requested_outputs,
)
from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.validation import check_request_size
from ctxembed.service.interceptors import Drain
from ctxembed.service.registry import ModelRegistry, ServedModel
from ctxembed.service.servicer import (
    CallObserver,
    CallRecord,
    Context,
    Malformed,
    answer,
    run_batched,
    safe_parse,
    server_version,
)
from ctxembed.service.status import UnknownModel

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Triton's names for the extensions implemented here (ServerMetadata lists them).
EXTENSIONS = ("model_configuration", "statistics")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class InferenceServicer:
    def __init__(
        self, registry: ModelRegistry, calls: CallObserver, drain: Drain | None = None
    ) -> None:
        self.registry = registry
        self.calls = calls
        self.drain = drain

    def add_to_server(self, server: grpc.aio.Server) -> None:
        methods: dict[str, tuple[Callable[..., Any], type[Any], type[Any]]] = {
            "ServerLive": (self.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                self.ServerMetadata,
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
            ),
            "ModelMetadata": (
                self.ModelMetadata,
                pb.ModelMetadataRequest,
                pb.ModelMetadataResponse,
            ),
            "ModelInfer": (self.ModelInfer, pb.ModelInferRequest, pb.ModelInferResponse),
            "ModelConfig": (self.ModelConfig, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": (
                self.ModelStatistics,
                pb.ModelStatisticsRequest,
                pb.ModelStatisticsResponse,
            ),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=safe_parse(request),
                response_serializer=response.SerializeToString,
            )
            for name, (method, request, response) in methods.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    # -- lookups ------------------------------------------------------------------------------
    def _served(
        self, name: str, version: str, record: CallRecord | None = None, field: str = "name"
    ) -> ServedModel:
        """The model a request names (v2 names it always; there is no default here)."""
        if not name:
            raise InvalidInput(field, "must name a model")
        served = self.registry.get(name)
        if version not in ("", VERSION):
            raise UnknownModel(f"model {name!r} has only version {VERSION}, not {version!r}")
        if record is not None:
            record.metrics = served.metrics
        return served

    @property
    def _ready(self) -> bool:
        return self.drain is None or not self.drain.closed

    async def _simple(
        self, method: str, context: Context, build: Callable[[CallRecord], Any]
    ) -> Any:
        async def work(record: CallRecord) -> tuple[Any, list[Any]]:
            return build(record), []

        return await answer(self.calls, method, context, work)

    # -- health and metadata (open without a token, like grpc.health) ---------------------------
    async def ServerLive(self, request: Any, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready)

    async def ModelReady(self, request: Any, context: Context) -> pb.ModelReadyResponse:
        """Ready when served and not draining; an unknown model is not ready (as Triton)."""
        if isinstance(request, Malformed):
            return pb.ModelReadyResponse(ready=False)
        known = request.name in self.registry and request.version in ("", VERSION)
        return pb.ModelReadyResponse(ready=known and self._ready)

    async def ServerMetadata(self, request: Any, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="ctxembed", version=server_version(), extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request: Any, context: Context) -> pb.ModelMetadataResponse:
        def build(record: CallRecord) -> pb.ModelMetadataResponse:
            served = self._served(_checked(request).name, request.version, record)
            dim = served.model.info().dimension
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=served.name,
                versions=[VERSION],
                platform="ctxembed",
                inputs=[
                    tensor(name=TEXT, datatype="BYTES", shape=[-1]),
                    tensor(name=WORDS, datatype="BYTES", shape=[-1]),
                    tensor(name=WORDS_TEXT_INDEX, datatype="INT32", shape=[-1]),
                ],
                outputs=[
                    tensor(name=VECTORS, datatype="FP32", shape=[-1, dim]),
                    tensor(name=OFFSETS, datatype="INT32", shape=[-1, 2]),
                    tensor(name=WORDS, datatype="BYTES", shape=[-1]),
                    tensor(name=TEXT_INDEX, datatype="INT32", shape=[-1]),
                ],
            )

        return await self._simple("ModelMetadata", context, build)

    async def ModelConfig(self, request: Any, context: Context) -> pb.ModelConfigResponse:
        """Triton's model configuration: no batch dimension (``max_batch_size: 0``); the
        pre-split inputs are optional."""

        def build(record: CallRecord) -> pb.ModelConfigResponse:
            served = self._served(_checked(request).name, request.version, record)
            dim = served.model.info().dimension
            return pb.ModelConfigResponse(
                config=mc.ModelConfig(
                    name=served.name,
                    platform="ctxembed",
                    backend="ctxembed",
                    max_batch_size=0,
                    input=[
                        mc.ModelInput(name=TEXT, data_type=mc.TYPE_STRING, dims=[-1]),
                        mc.ModelInput(
                            name=WORDS, data_type=mc.TYPE_STRING, dims=[-1], optional=True
                        ),
                        mc.ModelInput(
                            name=WORDS_TEXT_INDEX, data_type=mc.TYPE_INT32, dims=[-1], optional=True
                        ),
                    ],
                    output=[
                        mc.ModelOutput(name=VECTORS, data_type=mc.TYPE_FP32, dims=[-1, dim]),
                        mc.ModelOutput(name=OFFSETS, data_type=mc.TYPE_INT32, dims=[-1, 2]),
                        mc.ModelOutput(name=WORDS, data_type=mc.TYPE_STRING, dims=[-1]),
                        mc.ModelOutput(name=TEXT_INDEX, data_type=mc.TYPE_INT32, dims=[-1]),
                    ],
                )
            )

        return await self._simple("ModelConfig", context, build)

    async def ModelStatistics(self, request: Any, context: Context) -> pb.ModelStatisticsResponse:
        """Counts and cumulative times per model, from its batcher (both faces' requests)."""

        def build(record: CallRecord) -> pb.ModelStatisticsResponse:
            request_ = _checked(request)
            names = [request_.name] if request_.name else [m.name for m in self.registry]
            response = pb.ModelStatisticsResponse()
            for name in names:
                served = self._served(name, request_.version)
                s = served.batcher.stats
                ok, failed = s.requests_done, s.requests_failed
                busy = s.queue_s + s.prepare_s + s.run_s + s.pool_s + s.serialize_s
                stat = response.model_stats.add(
                    name=name,
                    version=VERSION,
                    last_inference=s.last_done_unix_ms,
                    inference_count=s.texts,
                    execution_count=s.batches,
                )
                stats = stat.inference_stats
                stats.success.count, stats.success.ns = ok, _ns(busy)
                stats.fail.count = failed
                stats.queue.count, stats.queue.ns = ok, _ns(s.queue_s)
                stats.compute_input.count, stats.compute_input.ns = ok, _ns(s.prepare_s)
                stats.compute_infer.count, stats.compute_infer.ns = ok, _ns(s.run_s)
                stats.compute_output.count = ok
                stats.compute_output.ns = _ns(s.pool_s + s.serialize_s)
            return response

        return await self._simple("ModelStatistics", context, build)

    # -- inference ------------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Context) -> pb.ModelInferResponse:
        async def work(record: CallRecord) -> tuple[pb.ModelInferResponse, list[Any]]:
            request_ = _checked(request)
            name, version = request_.model_name, request_.model_version
            served = self._served(name, version, record, "model_name")
            call = decode_infer_request(request_)
            check_request_size(len(call.inputs), served.model.limits)
            wanted = requested_outputs(request_, call.options)

            def build(results: list[Any]) -> pb.ModelInferResponse:
                return infer_response(request_, served.name, results, call.options, wanted)

            return await run_batched(served, call, context, build)

        return await answer(self.calls, "ModelInfer", context, work)


def _checked(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidInput("request", f"is not a valid inference message: {request.error}")
    return request
