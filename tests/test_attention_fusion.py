"""MPNet's attention, which ONNX Runtime's optimizer leaves unfused (its scores add a position
bias), becomes one MultiHeadAttention per layer (attention_fusion.py): fewer nodes, the same
vectors; older folders get it from ``python -m ctxembed.export.upgrade``. Tiny random weights:
these check the rewrite, not accuracy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from families import FAMILIES, build_family

from ctxembed.export import attention_fusion
from ctxembed.export.attention_fusion import fuse_attention, fuse_checked
from ctxembed.export.upgrade import main, upgrade_folder
from ctxembed.runtime import TextInput, WordEmbedder
from ctxembed.runtime.manifest import load_manifest

pytestmark = pytest.mark.model

MPNET = next(f for f in FAMILIES if f.name == "mpnet")
TEXTS = [  # one call: rows of very different lengths, so the mask matters
    TextInput(text="I sat by the river bank."),
    TextInput(text="a"),
    TextInput(text="The bank of the river, the bank of America, and 3.14 banks. " * 3),
]


def _export(source: Path, out: Path) -> None:
    from ctxembed.cli import main as cli

    args = ["export", "--model", str(source), "--out", str(out), "--int8-scheme", "outlier"]
    assert cli([*args, "--int8-word-mean", "0.5", "--int8-word-min", "0.0"]) == 0


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny MPNet exported as now, and as before the fusion existed (fusion off, its
    manifest entry removed: what an earlier release wrote)."""
    root = tmp_path_factory.mktemp("attention")
    source = build_family(MPNET, root / "source")
    _export(source, root / "fused")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ctxembed.export.optimize.fuse_checked", lambda model, heads: 0)
        _export(source, root / "before")
    manifest = load_manifest(root / "before")
    for variant in manifest.variants:
        del variant.optimization["fused_attention"]
    (root / "before" / "manifest.json").write_text(manifest.to_json())
    return root / "fused", root / "before"


def _graph(folder: Path, variant: str) -> Any:
    import onnx

    return onnx.load(str(folder / load_manifest(folder).variant(variant).file))


def _heads(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text())["num_attention_heads"])


def _vectors(folder: Path, variant: str) -> list[np.ndarray]:
    with WordEmbedder.load(folder, "cpu", variant=variant) as emb:
        batched = [r.vectors for r in emb.embed(TEXTS)]
        alone = [emb.embed([t])[0].vectors for t in TEXTS]
    return batched + alone


def _assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_each_mpnet_layer_becomes_one_multi_head_attention(
    exports: tuple[Path, Path], variant: str
) -> None:
    fused, before = exports
    layers = load_manifest(fused).num_layers
    facts = load_manifest(fused).variant(variant).optimization
    assert facts["fused_attention"] == layers
    assert facts["fusions"]["MultiHeadAttention"] == layers
    ops = [n.op_type for n in _graph(fused, variant).graph.node]
    assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops
    assert len(ops) < len(_graph(before, variant).graph.node)


def test_the_fused_graph_gives_the_unfused_vectors(exports: tuple[Path, Path]) -> None:
    fused, before = exports
    _assert_same(_vectors(fused, "fp32"), _vectors(before, "fp32"))


def test_an_older_folder_is_upgraded_in_place(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctxembed.export.pipeline import file_sha256

    _, before = exports
    folder = tmp_path / "old"
    shutil.copytree(before, folder)
    was = {v: _vectors(folder, v) for v in ("fp32", "int8")}
    modes = {p.name: p.stat().st_mode for p in folder.iterdir()}
    assert main([str(folder)]) == 0
    assert {p.name: p.stat().st_mode for p in folder.iterdir()} == modes  # still readable
    layers = load_manifest(folder).num_layers
    assert json.loads(capsys.readouterr().out)["int8"]["fused_attention"] == layers
    for variant in load_manifest(folder).variants:
        assert variant.optimization["fused_attention"] == layers
        assert variant.optimization["fusions"]["MultiHeadAttention"] == layers
        assert variant.sha256 == file_sha256(folder / variant.file)
        assert variant.size_bytes == (folder / variant.file).stat().st_size
        # chains wrapped at the export: their node counts follow the fusion
        nodes = len(_graph(folder, variant.name).graph.node)
        assert variant.optimization["fused_chains"]["nodes"][1] == nodes
        _assert_same(_vectors(folder, variant.name), was[variant.name])
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in before.iterdir())
    assert upgrade_folder(folder) == {}  # current: nothing to do
    assert main([str(folder)]) == 0 and "already current" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 1  # one line, no traceback
    assert capsys.readouterr().err.startswith("error: ")


def test_a_fusion_that_changes_the_numbers_is_not_kept(
    exports: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The check runs both graphs on a padded batch: a rewrite that would change the vectors
    (here a wrong scale) leaves the graph as it was, and says so."""
    _, before = exports
    model = _graph(before, "fp32")
    nodes = len(model.graph.node)
    real = attention_fusion.fuse_attention

    def wrong_scale(graph: Any, heads: int) -> int:
        count = real(graph, heads)
        for node in graph.graph.node:
            for attr in node.attribute:
                if node.op_type == "MultiHeadAttention" and attr.name == "scale":
                    attr.f *= 2
        return count

    monkeypatch.setattr(attention_fusion, "fuse_attention", wrong_scale)
    with caplog.at_level(logging.WARNING, logger="ctxembed.export"):
        assert fuse_checked(model, _heads(before)) == 0
    assert len(model.graph.node) == nodes
    assert "attention fusion not kept" in caplog.text
    monkeypatch.undo()
    assert fuse_attention(model, _heads(before) + 1) == 0  # heads the reshapes do not say
    assert fuse_checked(model, _heads(before)) == load_manifest(before).num_layers


def test_bert_attention_stays_onnxruntime_s(outlier_export: Path) -> None:
    """BERT's attention is fused by ONNX Runtime's optimizer (``Attention``): nothing to do."""
    facts = load_manifest(outlier_export).variant("int8").optimization
    assert facts["fused_attention"] == 0 and facts["fusions"]["Attention"] > 0
