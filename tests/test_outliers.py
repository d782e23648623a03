"""The ``outlier`` int8 scheme: the rewrite is exact in fp32, and its int8 rows batch exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxembed.export.outliers import decompose_outliers, outlier_channels
from ctxembed.runtime import WordEmbedder
from ctxembed.runtime.manifest import load_manifest


def test_outlier_channels_are_the_few_far_above_the_median() -> None:
    peak = np.ones(768)
    peak[[3, 500]] = [30.0, 4.5]
    assert outlier_channels(peak).tolist() == [3, 500]
    assert outlier_channels(np.ones(64)).size == 0


def test_decomposition_is_exact_before_quantization(outlier_export: Path, tmp_path: Path) -> None:
    """Masking, smoothing, per-row scaling and the fp32 outlier product undo each other."""
    import onnxruntime as ort

    from ctxembed.export.calibrate import calibration_feeds

    manifest = load_manifest(outlier_export)
    feeds = calibration_feeds(
        outlier_export / "tokenizer.json", manifest.graph_inputs, manifest.max_tokens
    )
    fused = outlier_export / "model.onnx"
    # the random tiny model has no outlier channels of its own: a low ratio makes some
    split = decompose_outliers(fused, tmp_path / "split.onnx", feeds, ratio=1.5)
    assert split.fp32_nodes and split.facts["outliers"]["fp32_channels"] > 0
    ids = np.array([[101, 7592, 1010, 2088, 1012, 2023, 102] * 3], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in manifest.graph_inputs:
        feed["token_type_ids"] = np.zeros_like(ids)
    cpu = ["CPUExecutionProvider"]
    expected = ort.InferenceSession(str(fused), providers=cpu).run(None, feed)
    actual = ort.InferenceSession(str(tmp_path / "split.onnx"), providers=cpu).run(None, feed)
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_outlier_int8_is_row_scaled_and_batches_exactly(outlier_export: Path) -> None:
    import onnx

    int8 = load_manifest(outlier_export).variant("int8")
    q = int8.quantization or {}
    assert q["scheme"] == "outlier" and q["outliers"]["activation_scale"] == "per row"
    assert not int8.dynamic_activation_scales
    graph = onnx.load(str(outlier_export / int8.file)).graph
    ops = [n.op_type for n in graph.node]
    # the per-row chains are wrapped as functions (fused_chains.py); their bodies hold them
    assert "RowQuantize" in ops and "RowDequantize" in ops
    assert "ReduceMax" in {
        n.op_type for f in onnx.load(str(outlier_export / int8.file)).functions for n in f.node
    }
    assert "MatMulNBits" not in ops and "DynamicQuantizeLinear" not in ops
    # per layer (2): attention output, FFN up and down; Q, K and V are the fused QAttention
    assert ops.count("MatMulInteger") == 3 * 2 and ops.count("QAttention") == 2
    texts = ["short", "a somewhat longer text, about the river bank.", "bank . " * 40]
    with WordEmbedder.load(outlier_export, provider="cpu") as emb:
        assert not emb.isolate_rows
        for text, res in zip(texts, emb.embed(texts), strict=True):
            np.testing.assert_array_equal(res.vectors, emb.embed([text])[0].vectors)
