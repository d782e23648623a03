"""fp32 fallback by measured harm (export/ctxembed/export/fallback.py): the search, the graph it
builds, and the export's auto path that runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctxembed.cli import main
from ctxembed.export import fallback
from ctxembed.export.fallback import MAX_NODES, WORST_TEXTS, choose_fallback
from ctxembed.export.int8_schemes import build_int8, ffn_down_projections
from ctxembed.runtime.manifest import load_manifest

# 40 texts, worst word 0.99 each but text 3 (0.95) and text 7 (0.97). In fp32, node "a" lifts
# text 3 to 0.99, node "b" lifts text 7; "c" changes nothing.
BASE = {3: 0.95, 7: 0.97}
LIFTS = {"a": 3, "b": 7}


def _fake_worst_words(session: frozenset[str], refs: Sequence[int]) -> np.ndarray:
    lifted = {LIFTS[n] for n in session if n in LIFTS}
    return np.array([0.99 if i in lifted else BASE.get(i, 0.99) for i in refs])


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[frozenset[str]]:
    """The fp32 node sets the search built, in order; worst_words reads them as the session."""
    monkeypatch.setattr(fallback, "worst_words", _fake_worst_words)
    return []


def _build(builds: list[frozenset[str]]) -> Any:
    def build(nodes: Sequence[str]) -> frozenset[str]:
        builds.append(frozenset(nodes))
        return frozenset(nodes)

    return build


def test_adds_the_most_helpful_nodes_until_the_worst_texts_pass(
    builds: list[frozenset[str]],
) -> None:
    refs: Any = list(range(40))
    found = choose_fallback(_build(builds), ["c", "b", "a"], refs, word_min=0.98)
    assert found.nodes == ["a", "b"]  # "a" alone leaves text 7 at 0.97
    # b and c leave the same worst word (text 3); b's shortfall is smaller: it fixes text 7
    expected = {"c": (0.04, 0.95), "b": (0.03, 0.95), "a": (0.01, 0.97)}
    assert {n: pytest.approx(v) for n, v in expected.items()} == found.probes
    assert (found.worst_before, found.worst_after) == (0.95, 0.99)
    # no fallback, each candidate alone, then the pair: never more builds than that
    assert builds == [frozenset(), *(frozenset(n) for n in "cba"), frozenset("ab")]
    assert found.facts()["worst_texts"] == WORST_TEXTS


def test_one_node_that_suffices_is_all_it_takes(builds: list[frozenset[str]]) -> None:
    refs: Any = list(range(40))
    found = choose_fallback(_build(builds), ["c", "b", "a"], refs, word_min=0.96)
    assert found.nodes == ["a"] and found.worst_after == 0.97
    assert len(builds) == 4  # the one chosen was scored alone already


def test_no_choice_within_the_limit_keeps_nothing(builds: list[frozenset[str]]) -> None:
    refs: Any = list(range(40))
    found = choose_fallback(_build(builds), ["c", "b", "a"], refs, word_min=0.999)
    assert found.nodes == []
    assert max(len(b) for b in builds) == min(MAX_NODES, 3)


def test_a_fallback_node_stays_an_fp32_matmul(outlier_export: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from ctxembed.export.calibrate import calibration_feeds

    manifest = load_manifest(outlier_export)
    feeds = calibration_feeds(
        outlier_export / "tokenizer.json", manifest.graph_inputs, manifest.max_tokens
    )
    fused = outlier_export / "model.onnx"
    down = ffn_down_projections(onnx.load(str(fused)))
    assert len(down) == 2  # one per layer
    out = tmp_path / "int8.onnx"
    facts = build_int8(fused, out, "outlier", "avx2", True, feeds, fp32_nodes=down[:1])
    assert facts["fp32_fallback"] == down[:1]
    graph = onnx.load(str(out)).graph
    weights = {w.name: w for w in graph.initializer}
    kept = [n for n in graph.node if n.name == down[0]]
    assert [n.op_type for n in kept] == ["MatMul"]
    assert numpy_helper.to_array(weights[kept[0].input[1]]).dtype == np.float32
    assert not [n for n in graph.node if n.name == down[1]]  # the other one is int8
    assert [n.op_type for n in graph.node].count("MatMulInteger") == 3 * 2 - 1


def test_auto_searches_a_fallback_when_only_the_worst_words_fail(
    tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mean holds (threshold 0) and no worst word can reach 1.01: the outlier scheme's
    search probes each FFN down-projection, finds no choice, and auto goes on to the next."""
    out = tmp_path / "strict"
    args = ["export", "--model", str(tiny_source), "--out", str(out)]
    assert main([*args, "--int8-word-mean", "0", "--int8-word-min", "1.01"]) == 1
    printed = capsys.readouterr()
    probes = [ln for ln in printed.out.splitlines() if "in fp32: shortfall" in ln]
    assert len(probes) == 2 and all("/output/dense/MatMul" in ln for ln in probes)
    assert "int8 schemes tried:" in printed.err and "outlier" in printed.err


def test_a_blockwise_fallback_node_becomes_matmul_nbits(
    outlier_export: Path, tmp_path: Path
) -> None:
    """The faster form: the same node as MatMulNBits (8-bit weights, per-block activations),
    with the facts the runtime checks (min_onnxruntime), and outputs near the fp32 form's."""
    import onnx
    import onnxruntime as ort

    from ctxembed.export.calibrate import calibration_feeds

    manifest = load_manifest(outlier_export)
    feeds = calibration_feeds(
        outlier_export / "tokenizer.json", manifest.graph_inputs, manifest.max_tokens
    )
    fused = outlier_export / "model.onnx"
    down = ffn_down_projections(onnx.load(str(fused)))
    outs = {}
    for form in ("blockwise", "fp32"):
        out = tmp_path / f"{form}.onnx"
        facts = build_int8(
            fused, out, "outlier", "avx2", True, feeds, fp32_nodes=down[:1], fallback=form
        )
        assert facts[f"{form}_fallback"] == down[:1]
        kept = [n.op_type for n in onnx.load(str(out)).graph.node if n.name.startswith(down[0])]
        assert ("MatMulNBits" in kept) == (form == "blockwise")
        outs[form] = ort.InferenceSession(str(out)).run(None, feeds[0])[0]
    assert facts.get("min_onnxruntime") is None  # the fp32 form needs no newer onnxruntime
    blockwise = build_int8(
        fused, tmp_path / "b.onnx", "outlier", "avx2", True, feeds, fp32_nodes=down[:1],
        fallback="blockwise",
    )  # fmt: skip
    assert blockwise["min_onnxruntime"] and blockwise["blockwise_nodes"] == down[:1]
    a, b = outs["blockwise"].reshape(-1, outs["fp32"].shape[-1]), outs["fp32"].reshape(-1, 64)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("passing", ["blockwise", "fp32"])
def test_auto_keeps_the_fallback_blockwise_when_that_passes(
    tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passing: str
) -> None:
    """The chosen nodes are built block-wise first and in fp32 only if that fails. The
    figures are made to fail every int8 graph but the outlier scheme with ``passing``."""
    from ctxembed.export import pipeline
    from ctxembed.export.fallback import Fallback

    builds: list[tuple[str, str]] = []
    from ctxembed.export.int8_schemes import build_int8 as real_build
    from ctxembed.export.validate import compare_variant as real_compare

    def build(*args: Any) -> dict[str, Any]:
        scheme, nodes, form = args[2], args[7] if len(args) > 7 else (), args[8:9] or ("",)
        builds.append((scheme, form[0] if nodes else ""))
        return real_build(*args)  # type: ignore[no-any-return]

    def compare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        figures = real_compare(*args, **kwargs)
        figures["passed"] = builds[-1] == ("outlier", passing)
        return figures

    def search(_build: Any, candidates: Sequence[str], *_: Any) -> Fallback:
        return Fallback([candidates[0]], {}, 0.9, 0.99)

    monkeypatch.setattr(pipeline, "build_int8", build)
    monkeypatch.setattr(pipeline, "compare_variant", compare)
    monkeypatch.setattr(pipeline, "choose_fallback", search)
    out = tmp_path / "auto"
    args = ["export", "--model", str(tiny_source), "--out", str(out), "--int8-word-mean", "0"]
    assert main(args) == 0
    expected = [("smooth", ""), ("outlier", ""), ("outlier", "blockwise")]
    assert builds == expected + ([("outlier", "fp32")] if passing == "fp32" else [])
    quantization = load_manifest(out).variant("int8").quantization or {}
    assert quantization["scheme"] == "outlier" and quantization[f"{passing}_fallback"]
    other = "fp32" if passing == "blockwise" else "blockwise"
    assert f"{other}_fallback" not in quantization
    assert f"outlier + 1 {passing}" in quantization["auto"]["tried"]
