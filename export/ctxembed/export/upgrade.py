"""Bring a folder exported by an earlier ctxembed up to the graphs the export writes now.

    python -m ctxembed.export.upgrade MODEL_DIR

Only rewrites that keep the numbers, so no re-export and no new validation: the attentions
ONNX Runtime left unfused become ``MultiHeadAttention`` (``attention_fusion.py``: checked by
running; every variant but fp16, whose graph was built apart), then the CPU variants' chains
become the functions ctxembed's kernels run (``fused_chains.py``). What a variant's manifest
entry says was done is not done again. Each graph is rewritten in a copy beside it and renamed
into place whole, and the manifest last: a failure part-way leaves every graph either as it was
or upgraded, each one loadable (the manifest's checksums are for the record, not checked at load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctxembed.export.attention_fusion import fuse_checked
from ctxembed.export.fused_chains import wrap_model
from ctxembed.runtime.manifest import MANIFEST_NAME, Variant, load_manifest


def _heads(model_dir: Path) -> int:
    """The model's attention heads from its config.json (0: unknown, no attention fusion)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    heads = config.get("num_attention_heads") or config.get("n_heads") or 0
    return heads if isinstance(heads, int) else 0


def _needs_attention(variant: Variant) -> bool:
    """Not fused yet, by its manifest entry (fp16 graphs are built apart: left as they are)."""
    return variant.precision != "fp16" and "fused_attention" not in variant.optimization


def _needs_chains(variant: Variant) -> bool:
    """Chains not wrapped yet, by its manifest entry (the kernels run on the CPU only)."""
    return variant.target == "cpu" and "fused_chains" not in variant.optimization


def _upgrade_graph(path: Path, variant: Variant, heads: int) -> dict[str, Any]:
    """Rewrite the graph at ``path`` in place; the optimization facts it gained ({}: none)."""
    import onnx

    facts: dict[str, Any] = {}
    model = onnx.load(str(path))
    before = len(model.graph.node)
    if _needs_attention(variant):
        facts["fused_attention"] = fuse_checked(model, heads)
        if facts["fused_attention"]:
            fusions = dict(variant.optimization.get("fusions", {}))
            fusions["MultiHeadAttention"] = facts["fused_attention"]
            facts["fusions"] = fusions
        chains = variant.optimization.get("fused_chains")
        removed = before - len(model.graph.node)
        if chains and removed:  # wrapped before the fusion: its node counts move with it
            facts["fused_chains"] = chains | {"nodes": [n - removed for n in chains["nodes"]]}
    if _needs_chains(variant):
        facts |= wrap_model(model)
    if len(model.graph.node) != before:
        onnx.save(model, str(path))
    return facts


def upgrade_folder(model_dir: Path) -> dict[str, Any]:
    """Upgrade the graphs of ``model_dir`` in place; the facts each variant gained, by name
    ({} when it was current)."""
    from ctxembed.export.pipeline import file_sha256

    manifest = load_manifest(model_dir)
    heads = _heads(model_dir)
    done: dict[str, Any] = {}
    variants = []
    for variant in manifest.variants:
        if not (_needs_attention(variant) or _needs_chains(variant)):
            variants.append(variant)
            continue
        fd, name = tempfile.mkstemp(prefix=".upgrade-", suffix=".onnx", dir=model_dir)
        os.close(fd)
        copy = Path(name)
        try:
            shutil.copyfile(model_dir / variant.file, copy)
            shutil.copymode(model_dir / variant.file, copy)  # not mkstemp's owner-only mode
            facts = _upgrade_graph(copy, variant, heads)
            if facts:
                os.replace(copy, model_dir / variant.file)
                path = model_dir / variant.file
                variant = replace(
                    variant,
                    sha256=file_sha256(path),
                    size_bytes=path.stat().st_size,
                    optimization=variant.optimization | facts,
                )
                done[variant.name] = facts
        finally:
            copy.unlink(missing_ok=True)
        variants.append(variant)
    if done:
        written = model_dir / f".{MANIFEST_NAME}.new"
        written.write_text(replace(manifest, variants=variants).to_json(), encoding="utf-8")
        os.replace(written, model_dir / MANIFEST_NAME)
    return done


def main(argv: list[str] | None = None) -> int:
    from ctxembed.runtime.errors import CtxembedError

    parser = argparse.ArgumentParser(
        description="Upgrade an exported folder's graphs in place (same numbers, fewer nodes)."
    )
    parser.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        facts = upgrade_folder(args.model_dir)
    except CtxembedError as exc:  # no folder, no manifest, a corrupt one: one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts) if facts else f"{args.model_dir}: already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
