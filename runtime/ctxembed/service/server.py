"""The aio gRPC server: settings, health, reflection, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ctxembed.runtime.cpu import cpu_budget, limit_helper_threads
from ctxembed.runtime.embedder import WordEmbedder
from ctxembed.runtime.stages import WordEmbeddingModel
from ctxembed.service.auth import TokenAuth
from ctxembed.service.batcher import MicroBatcher
from ctxembed.service.event_loop import running_loop_name
from ctxembed.service.interceptors import Drain
from ctxembed.service.metrics import Metrics
from ctxembed.service.open_inference import SERVICE as INFERENCE_SERVICE
from ctxembed.service.open_inference import InferenceServicer
from ctxembed.service.registry import ModelRegistry, ServedModel
from ctxembed.service.servicer import WordEmbedderServicer, server_version
from ctxembed.service.settings import ServeError, ServerSettings, host_port, with_setting
from ctxembed.v1 import embedder_pb2 as pb

log = logging.getLogger("ctxembed.service")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WordEmbedder"].full_name
MiB = 1024 * 1024
DRAIN_QUIET_S = 0.25  # after the last call in progress, before grpc's stop


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: HealthServicer
    registry: ModelRegistry
    port: int
    address: str
    auth: TokenAuth | None = None
    health_server: grpc.aio.Server | None = None  # --health-port: health alone, plaintext
    health_port: int | None = None
    metrics: Metrics | None = None
    metrics_port: int | None = None
    drain: Drain | None = None

    @property
    def model(self) -> WordEmbeddingModel:
        """The default model (the first)."""
        return self.registry.default.model

    @property
    def batcher(self) -> MicroBatcher:
        """The default model's batcher."""
        return self.registry.default.batcher

    async def shutdown(self, grace_s: float) -> None:
        """NOT_SERVING first; then new calls get UNAVAILABLE while the calls in progress finish
        (within the grace), and only then the server stops (see interceptors.Drain)."""
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        if self.drain is not None:
            self.drain.closed = True
            while self.drain.active and loop.time() < deadline:
                await asyncio.sleep(0.01)
            # calls already on the wire meet the refusal, not grpc's stop
            await asyncio.sleep(min(DRAIN_QUIET_S, max(0.0, deadline - loop.time())))
        await self.server.stop(max(0.0, deadline - loop.time()))
        if self.health_server is not None:
            await self.health_server.stop(None)
        if self.metrics is not None:
            self.metrics.close()
        for served in self.registry:
            await served.batcher.close()
            if served.owned:
                served.model.close()


def channel_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_receive_mb * MiB),
        ("grpc.max_send_message_length", settings.max_send_mb * MiB),
        # A lone server: a second one on the same port must fail, not share it (workers share).
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


Models = WordEmbeddingModel | Mapping[str, WordEmbeddingModel]


def _load_models(settings: ServerSettings, given: Models | None) -> list[ServedModel]:
    """The models to serve, in order (the first is the default), each with its own engine
    settings: the cores split between several unless set, then its --model-setting values."""
    if isinstance(given, Mapping):
        specs: list[tuple[str | None, WordEmbeddingModel | None, Path | None]] = [
            (name, model, None) for name, model in given.items()
        ]
    elif given is not None:
        specs = [(None, given, None)]
    elif settings.models:
        specs = [(m.name, None, m.model_dir) for m in settings.models]
    elif settings.model_dir is not None:
        specs = [(None, None, settings.model_dir)]
    else:
        raise ServeError("no model: pass --model-dir DIR, or --model NAME=DIR (repeatable)")
    names = {name for name, _, _ in specs}
    for item in settings.model_settings:
        if item.model not in names:
            known = ", ".join(sorted(n for n in names if n)) or "none named: use --model NAME=DIR"
            raise ServeError(f"--model-setting {item.model}.{item.setting}: no model {item.model!r}"
                             f" ({known})")  # fmt: skip
    share = max(1, cpu_budget().cores // len(specs))
    served: list[ServedModel] = []
    try:
        for name, model, folder in specs:
            engine, batcher = settings.engine, settings.batcher
            if len(specs) > 1:  # several models share the cores unless told otherwise
                engine = replace(
                    engine,
                    threads=engine.threads or share,
                    parallel_runs=engine.parallel_runs or share,
                )
                # ... and the event loop: one model's inline run would hold the others' calls.
                batcher = replace(batcher, inline_max_tokens=0)
            for item in settings.model_settings:
                if item.model == name and item.path[0] == "engine":
                    engine = with_setting(engine, item.path[1:], item.value)
                elif item.model == name and item.path[0] == "batcher":
                    batcher = with_setting(batcher, item.path[1:], item.value)
            owned = model is None
            if model is None:
                assert folder is not None
                model = WordEmbedder.load(folder, settings=engine)
            # The batcher refuses, before computing it, a response larger than may be sent.
            limit = replace(batcher, max_response_bytes=settings.max_send_mb * MiB)
            served.append(
                ServedModel(
                    name or model.info().name, model, MicroBatcher(model, limit), None, owned
                )
            )
    except BaseException:
        for s in served:
            if s.owned:
                s.model.close()
        raise
    return served


def _queue_depth(batcher: MicroBatcher) -> Callable[[], int]:
    return lambda: batcher.queued


async def start_server(settings: ServerSettings, model: Models | None = None) -> RunningServer:
    """Start serving ``model`` (one, or several by name), or the model folders of ``settings``
    (then owned and closed)."""
    registry = ModelRegistry(_load_models(settings, model))
    metrics = None
    if settings.metrics_port is not None or settings.metrics_shared:
        metrics = Metrics(server_version(), settings.metrics_shared)
        for served in registry:
            depth = _queue_depth(served.batcher)
            served.metrics = metrics.for_model(served.name, served.model.info(), depth)
            served.batcher.metrics = served.metrics
    auth = None
    if settings.auth_token_file is not None:
        auth = TokenAuth(settings.auth_token_file, settings.open_reflection)
    drain = Drain()
    server = grpc.aio.server(
        options=channel_options(settings), interceptors=[drain, *([auth] if auth else [])]
    )
    v1 = WordEmbedderServicer(registry, settings.access_log)
    v1.add_to_server(server)
    InferenceServicer(registry, v1.calls, drain).add_to_server(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_server = None
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            INFERENCE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = host_port(settings.host, settings.port)
    health_port = None

    def close_models() -> None:
        for served in registry:
            if served.owned:
                served.model.close()

    try:
        creds = _server_credentials(settings)
        if creds is not None:
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if settings.health_port is not None:
            # Kubernetes probes send no certificate and no token: health alone, plaintext.
            health_server = grpc.aio.server(options=channel_options(settings))
            health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
            where = host_port(settings.host, settings.health_port)
            health_port = health_server.add_insecure_port(where)
    except (RuntimeError, OSError) as exc:
        # so_reuseport is off: a port already in use fails here instead of being shared.
        close_models()
        raise ServeError(f"cannot listen on {address}: {exc}") from None
    metrics_port = None
    if metrics is not None and not settings.metrics_shared:
        try:
            metrics_port = metrics.serve(settings.metrics_host, settings.metrics_port or 0)
        except OSError as exc:
            close_models()
            where = f"{settings.metrics_host}:{settings.metrics_port}"
            raise ServeError(f"cannot serve metrics on {where}: {exc}") from None
    for served in registry:
        served.batcher.start()
    await server.start()
    if health_server is not None:
        await health_server.start()
    # The overall service, ctxembed.v1's, and one per model ("ctxembed.v1.WordEmbedder/NAME").
    for service in ("", SERVICE_NAME, *(f"{SERVICE_NAME}/{m.name}" for m in registry)):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = host_port(settings.host, port)
    return RunningServer(
        server,
        health,
        registry,
        port,
        address,
        auth,
        health_server,
        health_port,
        metrics,
        metrics_port,
        drain,
    )


def _server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise ServeError(f"cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def serve(
    settings: ServerSettings, on_ready: Callable[[RunningServer], None] | None = None
) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code."""
    started = time.perf_counter()
    budget = cpu_budget()
    limit_helper_threads(settings.engine.threads or budget.cores)
    running = await start_server(settings)
    if on_ready is not None:
        on_ready(running)
    loop_name = running_loop_name()
    served = " and ".join(
        f"{m.name} ({i.precision}, {i.execution_provider}, {i.threads} threads,"
        f" {i.parallel_runs} parallel runs{', fused kernels' if i.fused_kernels else ''},"
        f" {loop_name})"
        for m in running.registry
        for i in (m.model.info(),)
    )
    extras = f"; {budget.cores} cores by {budget.source}"
    if running.metrics_port is not None:
        extras += f", metrics on http://{settings.metrics_host}:{running.metrics_port}/metrics"
    if running.health_port is not None:
        extras += f", plaintext health on {host_port(settings.host, running.health_port)}"
    log.info(
        "ctxembed serving %s on %s, ready in %.2f s%s",
        served,
        running.address,
        time.perf_counter() - started,
        extras,
    )
    log.info(
        'try: ctxembed embed "I live near the bank of America" --word bank --server %s',
        running.address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if running.auth is not None:
        loop.add_signal_handler(signal.SIGHUP, running.auth.reload)
    await stop.wait()
    log.info("ctxembed stopping: finishing in-flight requests (grace %.1f s)", settings.grace_s)
    await running.shutdown(settings.grace_s)
    stats = running.batcher.stats
    log.info(
        "ctxembed stopped (%d requests served); stats %s",
        stats.requests_done,
        json.dumps(stats.snapshot()),
    )
    return 0
