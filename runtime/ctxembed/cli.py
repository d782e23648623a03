"""The ``ctxembed`` command: export, serve, embed, info.

Subcommands import what they need when they run, so ``ctxembed serve`` works on a runtime-only
install and ``ctxembed export`` says which extra is missing instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ctxembed.runtime.errors import CtxembedError
from ctxembed.runtime.settings import (
    DEFAULT_GRAPH_LENGTHS,
    MAX_PADDING,
    RUN_BATCH_TOKENS,
    EngineSettings,
)
from ctxembed.runtime.types import POOLINGS, PROVIDERS, EmbedOptions, Limits, TextInput

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXPORT_EXTRA_HINT = "pip install torch==2.13.0 'ctxembed[export]'"


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Light imports (the heavy ones happen inside the export's functions): defaults and
    # choices are defined once, in ExportOptions and the validation thresholds.
    from ctxembed.export.int8_schemes import INT8_SCHEMES
    from ctxembed.export.pipeline import (
        INT8_ACTIVATIONS,
        LAYER_OUTPUTS,
        QUANT_PRESET_CHOICES,
        QUANTIZE,
        TARGETS,
        ExportOptions,
    )
    from ctxembed.export.validate import DEFAULT_THRESHOLDS

    d, t = ExportOptions(), DEFAULT_THRESHOLDS
    p = sub.add_parser(
        "export", help="convert a BERT-family model to a validated ONNX model folder"
    )
    p.add_argument(
        "--model",
        default=d.model,
        help="Hugging Face id or local folder (default: the embedded all-MiniLM-L6-v2)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: models/<name>)")
    p.add_argument("--target", choices=TARGETS, default=d.target)
    p.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default=d.quantize,
        help="int8 variant for --target cpu (default: %(default)s)",
    )
    p.add_argument(
        "--layers",
        choices=LAYER_OUTPUTS,
        default=d.layers,
        help="graph outputs: the last hidden state, or every hidden state",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--quant-preset",
        default=d.quant_preset,
        choices=QUANT_PRESET_CHOICES,
        help="optimum quantization preset (default: detected from this CPU)",
    )
    p.add_argument("--no-per-channel", action="store_true", help="per-tensor int8 weight scales")
    p.add_argument(
        "--int8-scheme",
        choices=INT8_SCHEMES,
        default=d.int8_scheme,
        help="which MatMuls get per-tensor int8 and which block-wise int8; auto (default):"
        " the fastest scheme that meets the int8 thresholds (README, int8)",
    )
    p.add_argument(
        "--int8-activations",
        choices=INT8_ACTIVATIONS,
        default=None,
        help="older flag: shorthand for --int8-scheme calibrated|dynamic",
    )
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument(
        "--fp32-min-cosine",
        type=float,
        default=t["fp32"].word_min,
        help="fp32: minimum per-token and per-word cosine vs PyTorch (default %(default)s)",
    )
    p.add_argument(
        "--int8-word-mean",
        type=float,
        default=t["int8"].word_mean,
        help="int8: minimum mean per-word cosine (default %(default)s)",
    )
    p.add_argument(
        "--int8-word-min",
        type=float,
        default=t["int8"].word_min,
        help="int8: minimum per-word cosine (default %(default)s)",
    )
    p.add_argument(
        "--fp16-word-min",
        type=float,
        default=t["fp16"].word_min,
        help="fp16: minimum per-word cosine (default %(default)s)",
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _run_export(args: argparse.Namespace) -> int:
    missing = [m for m in ("torch", "transformers", "optimum", "onnx") if not _importable(m)]
    if missing:
        print(
            f"error: ctxembed export needs the export extra ({', '.join(missing)} missing):"
            f" {EXPORT_EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2
    from ctxembed.export import ExportOptions, export_model
    from ctxembed.export.report import summary
    from ctxembed.export.validate import DEFAULT_THRESHOLDS, Thresholds

    f, fp16_mean = args.fp32_min_cosine, DEFAULT_THRESHOLDS["fp16"].word_mean
    thresholds = {
        "fp32": Thresholds(token_min=f, word_mean=f, word_min=f),
        "int8": Thresholds(word_mean=args.int8_word_mean, word_min=args.int8_word_min),
        "fp16": Thresholds(
            word_mean=max(args.fp16_word_min, fp16_mean), word_min=args.fp16_word_min
        ),
    }
    opts = ExportOptions(
        model=args.model,
        out=args.out,
        target=args.target,
        quantize=args.quantize,
        layers=args.layers,
        force=args.force,
        quant_preset=args.quant_preset,
        per_channel=not args.no_per_channel,
        int8_scheme=args.int8_activations or args.int8_scheme,
        revision=args.revision,
        thresholds=thresholds,
    )
    result = export_model(opts)
    print(summary(result.out, result.manifest, result.seconds))
    return 0


def _at_least(
    low: float, high: float | None = None, *, integer: bool = True
) -> Callable[[str], float]:
    """An argparse type: a number in [low, high]; argparse names the flag in the error."""

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not low <= value <= (high if high is not None else value):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ctxembed.service.event_loop import EVENT_LOOPS
    from ctxembed.service.settings import BatcherSettings, ServerSettings

    # Defaults come from the settings dataclasses: each is defined once, there.
    d, e, b, lim = ServerSettings(), EngineSettings(), BatcherSettings(), Limits()
    p = sub.add_parser("serve", help="serve a model folder over gRPC")
    p.add_argument("--model-dir", type=Path, required=True, help="folder from `ctxembed export`")
    p.add_argument("--host", default=d.host, help="bind address (default %(default)s)")
    p.add_argument(
        "--port",
        type=_at_least(0, 65535),
        default=d.port,
        help="port; 0 picks a free one (default %(default)s)",
    )
    p.add_argument("--provider", choices=PROVIDERS, default=e.provider)
    p.add_argument(
        "--variant", default=e.variant, help="model variant (default: int8 on CPU, fp16 on CUDA)"
    )
    p.add_argument(
        "--threads",
        type=_at_least(1),
        default=e.threads,
        help="ONNX Runtime threads (default: physical cores)",
    )
    p.add_argument(
        "--spinning",
        action=argparse.BooleanOptionalAction,
        default=e.spinning,
        help="let idle ONNX Runtime threads spin (inside runs, and briefly after)",
    )
    p.add_argument(
        "--spin-after-run-us",
        type=_at_least(0),
        default=e.spin_after_run_us,
        help="microseconds threads keep spinning after a run, so that a request arriving"
        " soon finds them awake (0: stop at once); default %(default)s",
    )
    p.add_argument(
        "--parallel-runs",
        type=_at_least(1),
        default=d.engine.parallel_runs,
        help="ONNX runs in flight at once when a batch has several rows, one thread each"
        " (default: physical cores; 1 saves the second session's memory)",
    )
    p.add_argument(
        "--stride",
        type=_at_least(1),
        default=e.stride,
        help="window stride for long texts, in tokens (default: half a window)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=_at_least(1),
        default=b.max_batch_tokens,
        help="micro-batch token budget (default %(default)s)",
    )
    p.add_argument(
        "--run-batch-tokens",
        type=_at_least(1),
        default=e.run_batch_tokens,
        help=f"padded tokens per ONNX run (default: {_per_provider(RUN_BATCH_TOKENS)})",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA: replay single-row runs of up to"
        f" {DEFAULT_GRAPH_LENGTHS[-1]} tokens from CUDA graphs, padded to"
        f" {', '.join(map(str, DEFAULT_GRAPH_LENGTHS))} tokens (a copy of the weights per length)",
    )
    p.add_argument(
        "--max-padding",
        type=_at_least(0, integer=False),
        default=e.max_padding,
        help="padding per ONNX run, as a fraction of its real tokens"
        f" (default: {_per_provider(MAX_PADDING)})",
    )
    p.add_argument(
        "--batch-int8-rows",
        action="store_true",
        help="batch the rows of an int8 variant with dynamic activation scales"
        " (exported with --int8-activations dynamic): faster, but vectors then depend"
        " slightly on batch neighbours; calibrated int8 (the default) always batches",
    )
    p.add_argument(
        "--max-wait-ms",
        type=_at_least(0, integer=False),
        default=b.max_wait_ms,
        help="micro-batch maximum wait (default %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=_at_least(1),
        default=b.max_queue,
        help="queued requests before RESOURCE_EXHAUSTED (default %(default)s)",
    )
    p.add_argument(
        "--max-queued-tokens",
        type=_at_least(1),
        default=b.max_queued_tokens,
        help="estimated tokens of the queued requests before RESOURCE_EXHAUSTED: bounds the"
        " queue's memory (default %(default)s, about 5 s of int8 MiniLM on 2 cores)",
    )
    p.add_argument(
        "--grace",
        type=_at_least(0, integer=False),
        default=d.grace_s,
        help="seconds to finish in-flight requests on SIGTERM (default %(default)s)",
    )
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=EVENT_LOOPS[0],
        help="event loop: the standard one (default) or uvloop (pip install 'ctxembed[uvloop]')",
    )
    p.add_argument("--max-inputs", type=_at_least(1), default=lim.max_inputs_per_request)
    p.add_argument("--max-chars", type=_at_least(1), default=lim.max_chars_per_text)
    p.add_argument("--max-words", type=_at_least(1), default=lim.max_words_per_text)
    p.add_argument("--max-spans", type=_at_least(1), default=lim.max_spans_per_text)
    p.add_argument(
        "--max-tokens-per-request",
        type=_at_least(1),
        default=lim.max_tokens_per_request,
        help="tokens of all the texts of one request (default %(default)s)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate (with --tls-key)")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key (with --tls-cert)")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="mutual TLS: require client certificates signed by this CA (PEM)",
    )
    p.add_argument(
        "--auth-token-file",
        type=Path,
        default=_env_path("CTXEMBED_AUTH_TOKEN_FILE"),
        help="accepted bearer tokens, one per line, re-read on SIGHUP"
        " (default: $CTXEMBED_AUTH_TOKEN_FILE; none: no authentication)",
    )
    p.add_argument(
        "--open-reflection",
        action="store_true",
        help="serve reflection without a token (health never needs one)",
    )
    p.add_argument(
        "--health-port",
        type=_at_least(0, 65535),
        default=d.health_port,
        help="also serve the health service alone, in plaintext, on this port (for probes"
        " that cannot present a client certificate)",
    )
    p.add_argument(
        "--metrics-port",
        type=_at_least(0, 65535),
        default=d.metrics_port,
        help="serve Prometheus /metrics over HTTP on this port (0 picks one; off by default)",
    )
    p.add_argument(
        "--metrics-host",
        default=d.metrics_host,
        help="address of /metrics (default %(default)s; it has no authentication)",
    )
    p.add_argument(
        "--workers",
        type=_at_least(1),
        default=1,
        help="server processes sharing the port, the cores split between them (default 1)",
    )
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--access-log",
        action="store_true",
        help="one log line per call: method, peer, status, milliseconds, texts, tokens",
    )


def _run_serve(args: argparse.Namespace) -> int:
    from ctxembed.service import event_loop, logs
    from ctxembed.service.server import serve
    from ctxembed.service.settings import BatcherSettings, ServerSettings

    logs.configure(args.log_level, args.log_format)
    settings = ServerSettings(
        model_dir=args.model_dir,
        host=args.host,
        port=args.port,
        engine=EngineSettings(
            provider=args.provider,
            variant=args.variant,
            threads=args.threads,
            spinning=args.spinning,
            spin_after_run_us=args.spin_after_run_us,
            parallel_runs=args.parallel_runs,
            stride=args.stride,
            run_batch_tokens=args.run_batch_tokens,
            cuda_graph_lengths=DEFAULT_GRAPH_LENGTHS if args.cuda_graphs else (),
            max_padding=args.max_padding,
            isolate_rows=False if args.batch_int8_rows else None,
            limits=Limits(
                max_inputs_per_request=args.max_inputs,
                max_chars_per_text=args.max_chars,
                max_words_per_text=args.max_words,
                max_spans_per_text=args.max_spans,
                max_tokens_per_request=args.max_tokens_per_request,
            ),
        ),
        batcher=BatcherSettings(
            max_batch_tokens=args.max_batch_tokens,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_queued_tokens=args.max_queued_tokens,
        ),
        grace_s=args.grace,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token_file=args.auth_token_file,
        open_reflection=args.open_reflection,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        access_log=args.access_log,
    )
    try:
        if args.workers > 1:
            from ctxembed.service.workers import Supervisor

            event_loop.resolve(args.event_loop)
            return Supervisor(settings, args.workers, args.event_loop).run()
        return event_loop.run(serve(settings), args.event_loop)
    except event_loop.EventLoopUnavailable as exc:
        print(f"ctxembed serve: {exc}", file=sys.stderr)
        return 2


def _per_provider(defaults: dict[str, Any]) -> str:
    """A per-provider default for --help: "256 on CPU, 8192 on CUDA"."""
    return ", ".join(f"{value} on {provider.upper()}" for provider, value in defaults.items())


def _layers(text: str) -> list[int]:
    """An argparse type: comma-separated layer indices."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as -1 or 0,-1, got {text!r}"
        ) from None


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _add_connection(p: argparse.ArgumentParser, timeout: float) -> None:
    """How a client command reaches the server: address, TLS files, token, timeout."""
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--tls-ca", type=Path, default=None, help="CA that signed the server (PEM)")
    p.add_argument("--tls-cert", type=Path, default=None, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, default=None, help="client key (mutual TLS)")
    p.add_argument(
        "--token",
        default=os.environ.get("CTXEMBED_TOKEN"),
        help="bearer token (default: $CTXEMBED_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=timeout)


def _client(args: argparse.Namespace) -> Any:
    from ctxembed.client import Client

    return Client(
        args.server,
        timeout=args.timeout,
        token=args.token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("embed", help="embed a text through a running server")
    p.add_argument("text")
    p.add_argument("--word", default=None, help="only this word (every occurrence)")
    _add_connection(p, timeout=30.0)
    p.add_argument("--pooling", default=EmbedOptions.pooling, choices=POOLINGS)
    p.add_argument(
        "--layers", type=_layers, default=[-1], help="comma-separated layers (default -1)"
    )
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON with the full vectors")
    q = sub.add_parser("info", help="what a running server serves")
    _add_connection(q, timeout=10.0)
    b = sub.add_parser(
        "embed-file", help="embed a file of texts into Parquet, one row per word (resumable)"
    )
    b.add_argument("input", type=Path, help="one text per line, or JSONL with --text-field")
    b.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    b.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="embed in process with this model folder (default: through --server)",
    )
    b.add_argument("--text-field", default=None, help="JSONL input: the field holding the text")
    b.add_argument("--select-words", default="", help="comma-separated words to keep")
    b.add_argument("--chunk-lines", type=_at_least(1), default=4096, help="lines per part file")
    _add_connection(b, timeout=60.0)
    h = sub.add_parser("health", help="exit 0 if the server is SERVING, 1 if not (exec probes)")
    h.add_argument("target", nargs="?", default=None, help="host:port (default: --server)")
    h.add_argument("--service", default="", help="service to check (default: the server)")
    _add_connection(h, timeout=5.0)


def _run_embed(args: argparse.Namespace) -> int:
    import json

    import grpc
    import numpy as np

    inp = TextInput(text=args.text, select_words=[args.word] if args.word else [])
    try:
        with _client(args) as client:
            [res] = client.embed(
                [inp], pooling=args.pooling, layers=args.layers, normalize=args.normalize
            )
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    if args.word and not res.words:
        print(f"error: {args.word!r} does not occur in the text", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "word": w.text,
                        "start": w.start,
                        "end": w.end,
                        "index": w.index,
                        "vector": [round(float(x), 6) for x in v],
                    }
                    for w, v in zip(res.words, res.vectors)
                ],
                ensure_ascii=False,
            )
        )
        return 0
    for w, v in zip(res.words, res.vectors):
        head = " ".join(f"{x:+.4f}" for x in v[:5])
        print(
            f"{w.text!r} [{w.start}:{w.end}] index={w.index} dim={v.shape[0]}"
            f" norm={float(np.linalg.norm(v)):.4f} [{head} ...]"
        )
    return 0


def _run_info(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import grpc

    try:
        with _client(args) as client:
            info = client.info()
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print(json.dumps(dataclasses.asdict(info), indent=2))
    return 0


def _conflicting_int8_flags(args: argparse.Namespace) -> bool:
    return bool(args.int8_activations) and args.int8_scheme not in ("auto", args.int8_activations)


def _run_embed_file(args: argparse.Namespace) -> int:
    from ctxembed.bulk import embed_file

    if not args.input.is_file():
        print(f"error: {args.input} is not a file", file=sys.stderr)
        return 1
    select = [w.strip() for w in args.select_words.split(",") if w.strip()]
    if args.model_dir is not None:
        from ctxembed.runtime import WordEmbedder

        source = WordEmbedder.load(args.model_dir, parallel_runs=None)  # every core
        embed, dimension = source.embed, source.dimension
        info = source.info()
        model = f"{args.model_dir.resolve()} ({info.precision})"
    else:
        source = _client(args)
        info = source.info()
        embed, dimension = source.embed, info.dimension
        model = f"{args.server} {info.name} ({info.precision}, {info.source_model})"
    with source:
        summary = embed_file(
            args.input,
            args.out,
            embed,
            dimension,
            text_field=args.text_field,
            select_words=select,
            chunk_lines=args.chunk_lines,
            model=model,
        )
    print(
        f"{args.out}: {summary.words} words from {summary.texts} texts"
        f" ({summary.empty_lines} empty lines skipped, {summary.parts_reused} parts reused)"
        f" in {summary.seconds:.1f} s"
    )
    return 0


def _run_health(args: argparse.Namespace) -> int:
    import grpc

    if args.target:
        args.server = args.target
    try:
        with _client(args) as client:
            status = client.health(args.service)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxembed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_serve(sub)
    _add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "export": _run_export,
        "serve": _run_serve,
        "embed": _run_embed,
        "info": _run_info,
        "health": _run_health,
        "embed-file": _run_embed_file,
    }
    if args.command == "export" and _conflicting_int8_flags(args):
        parser.error("--int8-activations is shorthand for --int8-scheme: give one of them")
    if args.command == "serve" and (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both, or neither for plaintext")
    try:
        return handlers[args.command](args)
    except (CtxembedError, OSError) as exc:  # expected failures: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
