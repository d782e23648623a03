"""The client commands: ``embed``, ``info``, ``health`` and ``embed-file``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ctxembed.cli.flags import at_least
from ctxembed.runtime.types import POOLINGS, EmbedOptions, TextInput


def _layers(text: str) -> list[int]:
    """An argparse type: comma-separated layer indices."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as -1 or 0,-1, got {text!r}"
        ) from None


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
    p.add_argument("--model", default="", help="which of the server's models (default: its first)")


def _client(args: argparse.Namespace) -> Any:
    from ctxembed.client import Client

    return Client(
        args.server,
        timeout=args.timeout,
        token=args.token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        model=args.model,
    )


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    b.add_argument("--chunk-lines", type=at_least(1), default=4096, help="lines per part file")
    _add_connection(b, timeout=60.0)
    h = sub.add_parser("health", help="exit 0 if the server is SERVING, 1 if not (exec probes)")
    h.add_argument("target", nargs="?", default=None, help="host:port (default: --server)")
    h.add_argument("--service", default="", help="service to check (default: the server)")
    _add_connection(h, timeout=5.0)


def run_embed(args: argparse.Namespace) -> int:
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


def run_info(args: argparse.Namespace) -> int:
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


def run_embed_file(args: argparse.Namespace) -> int:
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


def run_health(args: argparse.Namespace) -> int:
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
