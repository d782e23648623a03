"""The aio gRPC server: settings, health, reflection, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ctxembed.runtime import CtxembedError, Limits, WordEmbedder
from ctxembed.runtime.session import physical_cores
from ctxembed.runtime.types import DEFAULT_MAX_PADDING, DEFAULT_SPIN_AFTER_RUN_US
from ctxembed.service.batcher import MicroBatcher
from ctxembed.service.event_loop import running_loop_name
from ctxembed.service.servicer import WordEmbedderServicer
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc

log = logging.getLogger("ctxembed.service")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WordEmbedder"].full_name
MiB = 1024 * 1024


class ServeError(CtxembedError):
    """The server cannot start (address in use, unreadable TLS files)."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``ctxembed serve`` configures, built once in main()."""

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    provider: str = "auto"
    variant: str | None = None
    threads: int | None = None
    spinning: bool = True
    spin_after_run_us: int = DEFAULT_SPIN_AFTER_RUN_US
    parallel_runs: int | None = None  # None: one per physical core (see ModelSession)
    stride: int | None = None
    max_batch_tokens: int = 8192  # micro-batch flush budget (requests gathered per batch)
    run_batch_tokens: int = 256  # padded tokens per ONNX run inside a micro-batch
    max_padding: float = DEFAULT_MAX_PADDING  # per run, as a fraction of its real tokens
    isolate_rows: bool | None = None  # None: on for dynamic int8 (see WordEmbedder.load)
    max_wait_ms: float = 2.0
    max_queue: int = 256
    grace_s: float = 10.0
    limits: Limits = field(default_factory=Limits)
    max_receive_mb: int = 16
    max_send_mb: int = 64
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: HealthServicer
    batcher: MicroBatcher
    embedder: WordEmbedder
    port: int
    address: str
    owns_embedder: bool = False  # loaded by start_server, so closed by shutdown

    async def shutdown(self, grace_s: float) -> None:
        """NOT_SERVING first, then refuse new calls and let in-flight ones finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.batcher.close()
        if self.owns_embedder:
            self.embedder.close()


def channel_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_receive_mb * MiB),
        ("grpc.max_send_message_length", settings.max_send_mb * MiB),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


async def start_server(
    settings: ServerSettings, embedder: WordEmbedder | None = None
) -> RunningServer:
    owns_embedder = embedder is None
    if embedder is None:
        embedder = WordEmbedder.load(
            settings.model_dir,
            settings.provider,
            variant=settings.variant,
            threads=settings.threads,
            spinning=settings.spinning,
            spin_after_run_us=settings.spin_after_run_us,
            parallel_runs=settings.parallel_runs or physical_cores(),
            stride=settings.stride,
            limits=settings.limits,
            run_batch_tokens=settings.run_batch_tokens,
            max_padding=settings.max_padding,
            isolate_rows=settings.isolate_rows,
        )
    batcher = MicroBatcher(
        embedder,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
    )
    server = grpc.aio.server(options=channel_options(settings))
    pb_grpc.add_WordEmbedderServicer_to_server(
        WordEmbedderServicer(embedder, batcher, settings.limits), server
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls_cert and settings.tls_key:
            creds = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except (RuntimeError, OSError) as exc:
        # so_reuseport is off: a port already in use fails here instead of being shared.
        if owns_embedder:
            embedder.close()
        raise ServeError(f"cannot listen on {address}: {exc}") from None
    batcher.start()
    await server.start()
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = f"{settings.host}:{port}"
    return RunningServer(server, health, batcher, embedder, port, address, owns_embedder)


async def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code."""
    started = time.perf_counter()
    running = await start_server(settings)
    emb = running.embedder
    log.info(
        "ctxembed serving %s (%s, %s, %d threads, %d parallel runs, %s) on %s, ready in %.2f s",
        emb.name,
        emb.session.variant.name,
        emb.session.provider,
        emb.session.threads,
        emb.session.parallel_runs,
        running_loop_name(),
        running.address,
        time.perf_counter() - started,
    )
    log.info(
        'try: ctxembed embed "I live near the bank of America" --word bank --server %s',
        running.address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
