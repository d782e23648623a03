"""Fidelity of an exported variant against PyTorch fp32 on the large held-out set, alone and in
calls of 32: the figure the int8 goal is judged by (mean >= 0.995, worst >= 0.98 per word).

    python -m benchmarks.fidelity --model-dir DIR [--source SRC] [--variant int8] [--limit N]

SRC is the PyTorch model the folder was exported from (default: the manifest's source). The texts
are ``benchmarks/data/int8-heldout.txt`` (1,200 PyPI summaries, 30% non-ASCII, sampled by
``benchmarks/data/sample_texts.py``), never used to design or choose a scheme. Prints the figures
with the machine named and the worst words with their texts, and writes
``benchmarks/results/fidelity-<model>-<variant>.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_int8 import scheme_label
from benchmarks.machine import machine_facts
from benchmarks.saving import save_results
from ctxembed.runtime import WordEmbedder
from testkit.fidelity import GOAL, references

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ROOT / "benchmarks" / "data" / "int8-heldout.txt"


def held_out_texts(limit: int | None = None) -> list[str]:
    lines = [t for t in HELD_OUT.read_text(encoding="utf-8").splitlines() if t.strip()]
    return lines[:limit] if limit else lines


def cosines(vectors: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a, b = vectors.astype(np.float64), ref.astype(np.float64)
    return np.asarray(
        (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    )


def measure(
    emb: WordEmbedder, texts: Sequence[str], refs: Sequence[np.ndarray], batch: int
) -> dict[str, Any]:
    per_text = []
    for start in range(0, len(texts), batch):
        results = emb.embed(list(texts[start : start + batch]))
        for k, res in enumerate(results):
            per_text.append((start + k, res, cosines(res.vectors, refs[start + k])))
    flat = np.concatenate([c for _, _, c in per_text])
    worst = sorted(
        ((float(c.min()), i, res.words[int(c.argmin())].text) for i, res, c in per_text if c.size),
    )[:5]
    return {
        "batch": batch,
        "words": int(flat.size),
        "word_mean": float(flat.mean()),
        "word_min": float(flat.min()),
        "share_below_0_98": float((flat < 0.98).mean()),
        "worst": [{"cosine": c, "word": w, "text": texts[i]} for c, i, w in worst],
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Fidelity on held-out text: {result['model']} {result['variant']}",
        "",
        f"{result['texts']} texts of `benchmarks/data/int8-heldout.txt`; PyTorch fp32 reference;"
        f" machine: {m['cpu']}, {m['logical_cpus']} CPUs ({', '.join(m['cpu_flags'])}).",
        f" Scheme: {result['scheme']}; ctxembed's fused kernels"
        f" {'on' if result.get('fused_kernels') else 'off'}. Goal: mean >= {GOAL['word_mean']},"
        f" worst >= {GOAL['word_min']}.",
        "",
        "| calls of | words | mean | worst | words < 0.98 |",
        "|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['batch']} | {r['words']} | {r['word_mean']:.4f} | {r['word_min']:.4f} |"
            f" {100 * r['share_below_0_98']:.2f}% |"
        )
    lines += ["", "Worst words (calls of 1):", ""]
    for w in result["runs"][0]["worst"]:
        lines.append(f"- {w['cosine']:.4f} `{w['word']}` in: {w['text'][:120]}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    p.add_argument("--source", type=Path, default=None, help="the PyTorch model folder")
    p.add_argument("--variant", default="int8")
    p.add_argument("--limit", type=int, default=None, help="only the first N texts")
    args = p.parse_args(argv)
    texts = held_out_texts(args.limit)
    emb = WordEmbedder.load(args.model_dir, provider="cpu", variant=args.variant)
    source = args.source or Path(str(emb.manifest.source.get("location") or ""))
    if not source.is_dir():
        from ctxembed.export.source import embedded_model_dir

        source = embedded_model_dir()
    started = time.perf_counter()
    refs = references(source, emb, texts)
    runs = [measure(emb, texts, refs, batch) for batch in (1, 32)]
    quantization = emb.session.variant.quantization or {}
    result = {
        "model": emb.name,
        "variant": args.variant,
        "scheme": scheme_label(quantization) if quantization else args.variant,
        "texts": len(texts),
        "fused_kernels": emb.session.kernels is not None,
        "machine": machine_facts(),
        "runs": runs,
        "seconds": time.perf_counter() - started,
    }
    stem = f"fidelity-{emb.name}-{args.variant}"
    if "auto" not in quantization and args.variant == "int8":  # a scheme chosen by hand
        stem += f"-{quantization['scheme']}"
    save_results(stem, result, markdown(result), ensure_ascii=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
