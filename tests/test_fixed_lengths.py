"""Fixed-length runs (the CUDA graph path): padding to a length must not move a vector.

The class runs on the CPU too (fixed shapes, IO binding, no graphs), so its padding, binding and
slicing are tested here; the graphs themselves in the GPU test and benchmarks/bench_gpu.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ctxembed.export.optimize import index_nodes
from ctxembed.runtime import WordEmbedder
from ctxembed.runtime.fixed_lengths import FixedLengthRuns
from ctxembed.runtime.manifest import load_manifest
from ctxembed.runtime.session import _options
from ctxembed.runtime.settings import EngineSettings


@pytest.fixture(scope="module")
def runs(model_dir: Path) -> FixedLengthRuns:
    manifest = load_manifest(model_dir)
    return FixedLengthRuns(
        model_dir / manifest.variant("fp32").file,
        (16, 8),
        lambda: _options(1, EngineSettings()),
        ["CPUExecutionProvider"],
        manifest.tokenizer.pad_token_id,
        "cpu",
    )


def test_padded_runs_equal_unpadded_ones(
    runs: FixedLengthRuns, fp32_embedder: WordEmbedder
) -> None:
    assert runs.lengths == (8, 16)
    outputs = list(fp32_embedder.session.session.get_outputs())
    names = [o.name for o in outputs][::-1]  # every layer, in another order than bound
    tokenizer = fp32_embedder.tokenizer
    for text in ("bank", "I sat by the river bank", "a longer sentence about the bank of a river"):
        ids = tokenizer.tokenize_texts([text])[0].framed_ids[None, :]
        assert runs.fits(*ids.shape) == (ids.shape[1] <= 16)
        if not runs.fits(*ids.shape):
            continue
        mask = np.ones_like(ids)
        got = runs.run(ids, mask, names)
        want = fp32_embedder.session.run(ids, mask, names)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape == (1, ids.shape[1], 384)
            np.testing.assert_allclose(g, w, atol=2e-5)
    assert not runs.fits(2, 4), "several rows take the ordinary path"


def test_embedder_with_graph_lengths_on_cpu_ignores_them(model_dir: Path) -> None:
    emb = WordEmbedder.load(model_dir, "cpu", cuda_graph_lengths=(16,))
    assert emb.session.graph_lengths == ()
    assert (emb.run_batch_tokens, emb.max_padding) == (256, 0.1)  # the CPU's defaults
    with pytest.raises(ValueError, match="cuda_graph_lengths"):
        EngineSettings(cuda_graph_lengths=(0,))


def _gather_graph() -> onnx.GraphProto:
    """x's shape → Cast → Log → Cast → Gather indices; a float path beside it."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Log", ["f"], ["log"], name="log"),
        helper.make_node("Cast", ["log"], ["idx"], to=TensorProto.INT64, name="to_int"),
        helper.make_node("Gather", ["table", "idx"], ["bias"], name="gather"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
        helper.make_node("Add", ["y", "bias"], ["out"], name="add"),
    ]
    return helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("table", TensorProto.FLOAT, [4], [0.0, 1.0, 2.0, 3.0]),
            helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0]),
        ],
    )


def test_index_nodes_stay_fp32_and_stop_at_shape() -> None:
    names = index_nodes(_gather_graph())
    assert sorted(names) == ["log", "shape", "to_float", "to_int"]
