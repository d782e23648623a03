"""What ``ctxembed serve`` configures, and every default, defined once: the CLI's flags and
environment variables are generated from these fields (``runtime/flag.py``).

Kept apart from the server so that building the CLI's parser imports no engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ctxembed.runtime.errors import CtxembedError
from ctxembed.runtime.flag import flag
from ctxembed.runtime.settings import EngineSettings
from ctxembed.service.event_loop import EVENT_LOOPS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: tuple[Literal["text", "json"], ...] = ("text", "json")


@dataclass(frozen=True)
class BatcherSettings:
    max_batch_tokens: int = field(
        default=8192, metadata=flag("estimated tokens gathered into one micro-batch", minimum=1)
    )
    # Only under concurrency: a lone client never waits.
    max_wait_ms: float = field(
        default=2.0,
        metadata=flag("longest a request waits for company in a micro-batch", type=float,
                      minimum=0),
    )  # fmt: skip
    max_queue: int = field(
        default=256, metadata=flag("queued requests before RESOURCE_EXHAUSTED", minimum=1)
    )
    # Bounds the queue's memory however large each request is.
    max_queued_tokens: int = field(
        default=65_536,
        metadata=flag(
            "estimated tokens of the queued requests before RESOURCE_EXHAUSTED (about 5 s of"
            " int8 MiniLM on 2 cores)",
            minimum=1,
        ),
    )
    max_inflight: int | None = field(
        default=None,
        metadata=flag("micro-batches computed at once", minimum=1,
                      default_text="the model's parallel runs"),
    )  # fmt: skip
    # A lone request on an idle batcher runs on the event loop itself: the executor thread's
    # round trip cost ~0.15 ms of MiniLM's ~2 ms (docs/benchmarks.md). The loop waits meanwhile,
    # so only short requests run there; the server turns it off when it serves several models.
    inline_max_tokens: int = field(
        default=128,
        metadata=flag("estimated tokens up to which a lone request on an idle server runs"
                      " without the executor thread hop (0: never)", minimum=0),
    )  # fmt: skip
    # What the server may send: set from ServerSettings.max_send_mb, so not a flag of its own.
    max_response_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_queue", "max_queued_tokens", "max_inflight"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.inline_max_tokens < 0:
            raise ValueError(f"inline_max_tokens must be >= 0, got {self.inline_max_tokens}")


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC and people read it: an IPv6 host in brackets (``[::]:50051``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ServeError(CtxembedError):
    """The server cannot start (address in use, unreadable TLS files)."""


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class NamedModel:
    """``--model NAME=DIR``: a model folder served under a name of the operator's choosing."""

    name: str
    model_dir: Path

    @classmethod
    def parse(cls, text: str) -> NamedModel:
        name, sep, folder = text.partition("=")
        if not sep or not folder:
            raise ValueError(f"expected NAME=DIR, got {text!r}")
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(
                f"model name {name!r}: letters, digits, '_', '.', '-', starting with a letter or"
                " digit"
            )
        return cls(name, Path(folder))


@dataclass(frozen=True)
class ModelSetting:
    """``--model-setting NAME.SETTING=VALUE``: one model's engine or batcher setting. The CLI
    checks SETTING and converts VALUE with that setting's own flag (``path`` is then the field's
    path in ``ServerSettings``, e.g. ("engine", "limits", "max_inputs_per_request"))."""

    model: str
    setting: str
    value: Any
    path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelSetting:
        key, sep, value = text.partition("=")
        model, dot, setting = key.partition(".")
        if not sep or not dot or not model or not setting:
            raise ValueError(f"expected NAME.SETTING=VALUE, got {text!r}")
        return cls(model, setting.replace("-", "_"), value)


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``ctxembed serve`` configures: its flags are generated from these fields."""

    model_dir: Path | None = field(
        default=None,  # None when --model is given, or start_server is given models
        metadata=flag("folder from `ctxembed export`, served under its manifest's name (or use"
                      " --model)", type=Path),
    )  # fmt: skip
    models: tuple[NamedModel, ...] = field(
        default=(),
        metadata=flag("NAME=DIR: serve this folder as NAME; repeat for several models (the first"
                      " is the default); the variable takes a=DIR1,b=DIR2", name="--model",
                      kind="append", type=NamedModel.parse),
    )  # fmt: skip
    model_settings: tuple[ModelSetting, ...] = field(
        default=(),
        metadata=flag("NAME.SETTING=VALUE: one model's engine or batcher setting, e.g."
                      " small.max_inputs_per_request=64 or big.threads=1 (repeatable)",
                      name="--model-setting", kind="append", type=ModelSetting.parse),
    )  # fmt: skip
    host: str = field(
        default="127.0.0.1", metadata=flag("bind address ([::] or :: for every IPv6 one)")
    )
    port: int = field(
        default=50051, metadata=flag("port; 0 picks a free one", minimum=0, maximum=65535)
    )
    # The server computes batched rows in parallel runs, one per core of the CPU budget.
    engine: EngineSettings = field(default_factory=lambda: EngineSettings(parallel_runs=None))
    batcher: BatcherSettings = field(default_factory=BatcherSettings)
    grace_s: float = field(
        default=10.0,
        metadata=flag("seconds in-flight requests get to finish after SIGTERM", name="--grace",
                      type=float, minimum=0),
    )  # fmt: skip
    max_receive_mb: int = field(
        default=16, metadata=flag("largest request message accepted, in MiB", minimum=1)
    )
    max_send_mb: int = field(
        default=64,
        metadata=flag("largest response message sent, in MiB (larger ones are refused before"
                      " they are computed)", minimum=1),
    )  # fmt: skip
    tls_cert: Path | None = field(
        default=None, metadata=flag("PEM certificate (with --tls-key)", type=Path)
    )
    tls_key: Path | None = field(
        default=None, metadata=flag("PEM private key (with --tls-cert)", type=Path)
    )
    tls_client_ca: Path | None = field(
        default=None,
        metadata=flag("mutual TLS: require client certificates signed by this CA (PEM)",
                      type=Path),
    )  # fmt: skip
    auth_token_file: Path | None = field(
        default=None,
        metadata=flag("accepted bearer tokens, one per line, re-read on SIGHUP (none: no"
                      " authentication)", type=Path),
    )  # fmt: skip
    open_reflection: bool = field(
        default=False,
        metadata=flag("serve reflection without a token (health never needs one)",
                      kind="switch"),
    )  # fmt: skip
    health_port: int | None = field(
        default=None,
        metadata=flag("also serve the health service alone, in plaintext, on this port (for"
                      " probes that cannot present a client certificate)", minimum=0,
                      maximum=65535),
    )  # fmt: skip
    metrics_port: int | None = field(
        default=None,
        metadata=flag("serve Prometheus /metrics over HTTP on this port (0 picks one; off by"
                      " default)", minimum=0, maximum=65535),
    )  # fmt: skip
    metrics_host: str = field(
        default="127.0.0.1", metadata=flag("address of /metrics (it has no authentication)")
    )
    # A worker of --workers: record metrics in prometheus-client's multiprocess files, which
    # the supervisor serves on metrics_port for all workers together.
    metrics_shared: bool = False
    access_log: bool = field(
        default=False,
        metadata=flag("one log line per call: method, peer, status, milliseconds, texts, tokens",
                      kind="switch"),
    )  # fmt: skip
    # Several worker processes share the port (ctxembed serve --workers); a lone server keeps
    # reuseport off so that a second one on a taken port fails instead of sharing it.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.model_dir is not None and self.models:
            raise ServeError("pass --model-dir for one model or --model NAME=DIR, not both")
        names = [m.name for m in self.models]
        if len(set(names)) < len(names):
            raise ServeError(f"each --model needs its own name, got {names}")
        if self.max_receive_mb < 1 or self.max_send_mb < 1:
            raise ServeError("max_receive_mb and max_send_mb must be at least 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServeError("TLS needs both --tls-cert and --tls-key; refusing to serve plaintext")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ServeError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")


@dataclass(frozen=True)
class ProcessSettings:
    """How the ``ctxembed serve`` process runs around its server(s)."""

    workers: int = field(
        default=1,
        metadata=flag("server processes sharing the port, the cores split between them",
                      minimum=1),
    )  # fmt: skip
    event_loop: str = field(
        default=EVENT_LOOPS[0],
        metadata=flag("event loop: the standard one, or uvloop (pip install 'ctxembed[uvloop]')",
                      choices=EVENT_LOOPS),
    )  # fmt: skip
    log_level: str = field(
        default="INFO", metadata=flag("log level", type=str.upper, choices=LOG_LEVELS)
    )
    log_format: Literal["text", "json"] = field(
        default="text", metadata=flag("text, or one JSON object per line", choices=LOG_FORMATS)
    )


def with_setting(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """``obj`` (nested frozen dataclasses) with the field at ``path`` set to ``value``."""
    head, *rest = path
    inner = with_setting(getattr(obj, head), tuple(rest), value) if rest else value
    return replace(obj, **{head: inner})


def setting_paths(root: Any, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Field name -> path of every leaf field under ``root`` (nested settings walked)."""
    found: dict[str, tuple[str, ...]] = {}
    for f in fields(root):
        value = getattr(root, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            found |= setting_paths(value, (*prefix, f.name))
        else:
            found[f.name] = (*prefix, f.name)
    return found
