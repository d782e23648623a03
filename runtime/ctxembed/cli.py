"""The ``ctxembed`` command: export, serve, embed, info.

Subcommands import what they need when they run, so ``ctxembed serve`` works on a runtime-only
install and ``ctxembed export`` says which extra is missing instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from ctxembed.runtime.errors import CtxembedError

EXPORT_EXTRA_HINT = "pip install torch==2.13.0 'ctxembed[export]'"


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export", help="convert a BERT-family model to a validated ONNX model folder"
    )
    p.add_argument(
        "--model",
        default="embedded:all-MiniLM-L6-v2",
        help="Hugging Face id or local folder (default: the embedded all-MiniLM-L6-v2)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: models/<name>)")
    p.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--quantize",
        choices=("int8", "none"),
        default="int8",
        help="int8 variant for --target cpu (default: int8)",
    )
    p.add_argument(
        "--layers",
        choices=("last", "all"),
        default="last",
        help="graph outputs: the last hidden state, or every hidden state",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--quant-preset",
        default="auto",
        choices=("auto", "avx2", "avx512", "avx512_vnni", "arm64"),
        help="optimum quantization preset (default: detected from this CPU)",
    )
    p.add_argument("--no-per-channel", action="store_true", help="per-tensor int8 weight scales")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument(
        "--fp32-min-cosine",
        type=float,
        default=0.9999,
        help="fp32: minimum per-token and per-word cosine vs PyTorch (default 0.9999)",
    )
    p.add_argument(
        "--int8-word-mean",
        type=float,
        default=0.985,
        help="int8: minimum mean per-word cosine (default 0.985)",
    )
    p.add_argument(
        "--int8-word-min",
        type=float,
        default=0.95,
        help="int8: minimum per-word cosine (default 0.95)",
    )
    p.add_argument(
        "--fp16-word-min",
        type=float,
        default=0.99,
        help="fp16: minimum per-word cosine (default 0.99)",
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _run_export(args: argparse.Namespace) -> int:
    missing = [
        m
        for m in ("torch", "transformers", "optimum", "onnx")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(
            f"error: ctxembed export needs the export extra ({', '.join(missing)} missing):"
            f" {EXPORT_EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2
    from ctxembed.export import ExportOptions, export_model
    from ctxembed.export.report import summary
    from ctxembed.export.validate import Thresholds

    f = args.fp32_min_cosine
    thresholds = {
        "fp32": Thresholds(token_min=f, word_mean=f, word_min=f),
        "int8": Thresholds(word_mean=args.int8_word_mean, word_min=args.int8_word_min),
        "fp16": Thresholds(word_mean=max(args.fp16_word_min, 0.999), word_min=args.fp16_word_min),
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
        revision=args.revision,
        thresholds=thresholds,
    )
    result = export_model(opts)
    print(summary(result.out, result.manifest, result.seconds))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxembed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"export": _run_export}
    try:
        return handlers[args.command](args)
    except CtxembedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
