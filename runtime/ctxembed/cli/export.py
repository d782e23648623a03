"""``ctxembed export``: a BERT-family model to a validated ONNX model folder (the export extra).

Light imports only at parser build time: defaults and choices are defined once, in
``ExportOptions`` and the validation thresholds; the heavy ones happen when the export runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

EXPORT_EXTRA_HINT = "pip install torch==2.13.0 'ctxembed[export]'"


def add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--variants",
        type=lambda text: tuple(v.strip() for v in text.split(",") if v.strip()),
        default=(),
        help="comma-separated variants the folder keeps, e.g. int8 for a CPU deployment"
        " (default: every variant built; all are validated either way)",
    )
    p.add_argument(
        "--int8-embeddings",
        action="store_true",
        help="also quantize the word-embedding table (8-bit row blocks): a third of the file"
        " for small models; validate the result on a large --selection-texts set",
    )
    p.add_argument(
        "--selection-texts",
        type=Path,
        default=None,
        help="texts (one per line) that validate every variant and choose the int8 scheme"
        " (default: 36 built-in probe texts; releases use benchmarks/data/int8-selection.txt)",
    )
    for flag, default, what in (
        ("--fp32-min-cosine", t["fp32"].word_min, "fp32: minimum per-token and per-word cosine"),
        ("--int8-word-mean", t["int8"].word_mean, "int8: minimum mean per-word cosine"),
        ("--int8-word-min", t["int8"].word_min, "int8: minimum per-word cosine"),
        ("--fp16-word-min", t["fp16"].word_min, "fp16: minimum per-word cosine"),
    ):  # the validation thresholds against PyTorch
        p.add_argument(flag, type=float, default=default, help=f"{what} (default %(default)s)")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run_export(args: argparse.Namespace) -> int:
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
        selection_texts=args.selection_texts,
        int8_embeddings=args.int8_embeddings,
        variants=args.variants,
    )
    result = export_model(opts)
    print(summary(result.out, result.manifest, result.seconds))
    return 0


def conflicting_int8_flags(args: argparse.Namespace) -> bool:
    return bool(args.int8_activations) and args.int8_scheme not in ("auto", args.int8_activations)
