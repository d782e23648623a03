"""The same model folder on x86 and on arm64: word vectors compared (make test-arm64).

    python deploy/arm64/vectors.py reference --model-dir DIR --out REF.npz   (x86, export env)
    python deploy/arm64/vectors.py check --model-dir DIR --reference REF.npz  (arm64, runtime)

``reference`` embeds fixed texts with the folder's fp32 and int8 variants and with PyTorch fp32
(the model the folder was exported from), and saves vectors and offsets. ``check`` embeds the
same texts where it runs (the runtime alone, no torch) and requires: the same words and offsets,
fp32 per-word cosine >= 0.99999 against x86's fp32, and int8 within the export's own int8
thresholds against PyTorch (word mean and worst word, as its manifest recorded them), and with
``--expect-kernels`` ctxembed's fused kernels running. Prints the figures as JSON; exits 1 when a
requirement fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = [
    "I live near the bank of America",
    "We sat by the river bank, watching the boats.",
    "naïve café — 東京タワー and Zürich's Straße",
    "Version 2.0.1 (beta): see https://example.org/docs#install for details!",
    "مرحبا بالعالم، هذه جملة عربية",
    "The quick brown fox jumps over the lazy dog. " * 20,
]
FP32_MIN = 0.99999


def _embed(model_dir: Path, variant: str) -> list[object]:
    from ctxembed.runtime import WordEmbedder

    with WordEmbedder.load(model_dir, provider="cpu", variant=variant) as emb:
        return emb.embed(TEXTS)  # type: ignore[return-value]


def _kernels_form() -> str | None:
    """The form of ctxembed's fused kernels a session here runs ("scalar" on arm64), or None
    where the install carries none (the graphs then run their standard bodies)."""
    from ctxembed.kernels import form
    from ctxembed.runtime.session import fused_kernels_library

    path = fused_kernels_library()
    return None if path is None else form(path)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def reference(model_dir: Path, out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ctxembed.export.source import embedded_model_dir
    from ctxembed.runtime import WordEmbedder
    from testkit.fidelity import references

    fp32, int8 = _embed(model_dir, "fp32"), _embed(model_dir, "int8")
    with WordEmbedder.load(model_dir, provider="cpu", variant="fp32") as emb:
        location = Path(str(emb.manifest.source.get("location") or ""))
        source = location if location.is_dir() else embedded_model_dir()
        torch_refs = references(source, emb, TEXTS)
    np.savez(
        out,
        fp32=np.concatenate([r.vectors for r in fp32]),  # type: ignore[attr-defined]
        int8=np.concatenate([r.vectors for r in int8]),  # type: ignore[attr-defined]
        torch=np.concatenate(torch_refs),
        offsets=np.asarray([(w.start, w.end) for r in fp32 for w in r.words]),  # type: ignore[attr-defined]
        machine=np.asarray(platform.machine()),
    )


def check(
    model_dir: Path, ref_path: Path, with_fp32: bool = True, expect_kernels: bool = False
) -> int:
    from ctxembed.runtime.manifest import load_manifest

    ref = np.load(ref_path)
    variant = load_manifest(model_dir).variant("int8")
    thresholds = (variant.validation or {}).get("thresholds", {})
    int8 = _embed(model_dir, "int8")
    offsets = np.asarray([(w.start, w.end) for r in int8 for w in r.words])  # type: ignore[attr-defined]
    fp32_cos = np.ones(1)
    if with_fp32:
        fp32 = _embed(model_dir, "fp32")
        fp32_cos = _cosines(np.concatenate([r.vectors for r in fp32]), ref["fp32"])  # type: ignore[attr-defined]
    int8_vectors = np.concatenate([r.vectors for r in int8])  # type: ignore[attr-defined]
    int8_torch = _cosines(int8_vectors, ref["torch"])
    int8_x86 = _cosines(int8_vectors, ref["int8"])
    x86_torch = _cosines(ref["int8"], ref["torch"])
    figures: dict[str, Any] = {
        "machine": platform.machine(),
        "reference_machine": str(ref["machine"]),
        "words": len(offsets),
        "offsets_identical": bool(np.array_equal(offsets, ref["offsets"])),
        "fp32_vs_x86_fp32_min": float(fp32_cos.min()),
        "int8_vs_pytorch_mean": float(int8_torch.mean()),
        "int8_vs_pytorch_min": float(int8_torch.min()),
        "int8_vs_x86_int8_min": float(int8_x86.min()),
        "x86_int8_vs_pytorch_mean": float(x86_torch.mean()),
        "x86_int8_vs_pytorch_min": float(x86_torch.min()),
        "int8_scheme": (variant.quantization or {}).get("scheme"),
        "fused_kernels": _kernels_form(),
        "int8_thresholds": {k: thresholds.get(k) for k in ("word_cosine_mean", "word_cosine_min")},
    }
    passed = (
        figures["offsets_identical"]
        and figures["fp32_vs_x86_fp32_min"] >= FP32_MIN
        and figures["int8_vs_pytorch_mean"] >= thresholds.get("word_cosine_mean", 0.995)
        and figures["int8_vs_pytorch_min"] >= thresholds.get("word_cosine_min", 0.98)
        and (figures["fused_kernels"] is not None or not expect_kernels)
    )
    figures["passed"] = bool(passed)
    print(json.dumps(figures, indent=1))
    return 0 if passed else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("reference", "check"))
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--reference", type=Path)
    p.add_argument("--no-fp32", action="store_true", help="check: the int8 variant alone")
    p.add_argument(
        "--expect-kernels",
        action="store_true",
        help="check: fail unless the install's fused kernels run (a wheel built with them)",
    )
    args = p.parse_args()
    if args.mode == "reference":
        reference(args.model_dir, args.out)
        return 0
    return check(
        args.model_dir, args.reference, not args.no_fp32, expect_kernels=args.expect_kernels
    )


if __name__ == "__main__":
    raise SystemExit(main())
