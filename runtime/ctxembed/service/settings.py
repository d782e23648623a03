"""What ``ctxembed serve`` configures, and every default, defined once; the CLI reads them here.

Kept apart from the server so that building the CLI's parser imports no engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctxembed.runtime.errors import CtxembedError
from ctxembed.runtime.settings import EngineSettings


@dataclass(frozen=True)
class BatcherSettings:
    max_batch_tokens: int = 8192  # estimated tokens gathered into one batch
    max_wait_ms: float = 2.0  # longest a request waits for company (only under concurrency)
    max_queue: int = 256  # queued requests before RESOURCE_EXHAUSTED
    # Estimated tokens of the queued requests before RESOURCE_EXHAUSTED: bounds the queue's
    # memory however large each request is (about 5 s of int8 MiniLM on 2 cores).
    max_queued_tokens: int = 65_536
    max_inflight: int | None = None  # batches computed at once; None: the model's parallel runs
    max_response_bytes: int = 64 * 1024 * 1024  # what the server may send (ServerSettings)

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_queue", "max_queued_tokens", "max_inflight"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC and people read it: an IPv6 host in brackets (``[::]:50051``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ServeError(CtxembedError):
    """The server cannot start (address in use, unreadable TLS files)."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``ctxembed serve`` configures, built once in main(); the CLI's defaults."""

    model_dir: Path | None = None  # None only when start_server is given a model
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    # The server computes batched rows in parallel runs, one per physical core.
    engine: EngineSettings = field(default_factory=lambda: EngineSettings(parallel_runs=None))
    batcher: BatcherSettings = field(default_factory=BatcherSettings)
    grace_s: float = 10.0  # seconds in-flight calls get to finish after SIGTERM
    max_receive_mb: int = 16
    max_send_mb: int = 64
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: client certificates signed by this CA
    auth_token_file: Path | None = None  # bearer tokens, one per line (re-read on SIGHUP)
    open_reflection: bool = False  # reflection without a token (health is always open)
    health_port: int | None = None  # health alone, in plaintext, for probes beside mTLS
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; 0 picks a free port
    metrics_host: str = "127.0.0.1"
    # A worker of --workers: record metrics in prometheus-client's multiprocess files, which
    # the supervisor serves on metrics_port for all workers together.
    metrics_shared: bool = False
    access_log: bool = False  # one line per call: method, peer, code, ms, texts, tokens
    # Several worker processes share the port (ctxembed serve --workers); a lone server keeps
    # reuseport off so that a second one on a taken port fails instead of sharing it.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServeError("TLS needs both --tls-cert and --tls-key; refusing to serve plaintext")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ServeError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
