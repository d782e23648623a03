"""The closing summary of an export: sizes, validation figures, where the folder is."""

from __future__ import annotations

from pathlib import Path

from ctxembed.runtime.manifest import Manifest


def summary(out: Path, manifest: Manifest, seconds: float) -> str:
    lines = [
        f"Exported {manifest.source['model']} → {out}  ({seconds:.1f} s)",
        f"  {manifest.architecture}, {manifest.num_layers} layers, dim {manifest.hidden_size},"
        f" max {manifest.max_tokens} tokens, layers available {manifest.layers_available}",
        f"  {'variant':8} {'size':>9}  {'word cos mean':>13} {'word cos min':>12}"
        f" {'token cos min':>13} {'max |diff|':>10}",
    ]
    for v in manifest.variants:
        val = v.validation
        lines.append(
            f"  {v.name:8} {v.size_bytes / 1e6:7.1f}MB  {val['word_cosine_mean']:13.6f}"
            f" {val['word_cosine_min']:12.6f} {val['token_cosine_min']:13.6f}"
            f" {val['max_abs_diff']:10.4f}"
        )
    return "\n".join(lines)
