"""The int8 word-embedding table: 8-bit blocks per row gathered by GatherBlockQuantized."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxembed.export.embedding_table import quantize_rows, quantize_word_embeddings


def test_rows_keep_their_own_range() -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 384)).astype(np.float32)
    table[7] *= 100  # one row with a huge range must not cost the others precision
    data, scales, zero = quantize_rows(table, 128)
    back = (data.astype(np.float32) - zero.repeat(128, axis=1)) * scales.repeat(128, axis=1)
    error = np.abs(back - table).max(axis=1) / np.abs(table).max(axis=1)
    assert error.max() < 0.005  # half a step of 1/127 per row, at worst
    assert data.dtype == np.uint8 and scales.shape == (50, 3)


def test_a_plain_gather_becomes_a_quantized_gather(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(1).standard_normal((2000, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], name="embed")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    facts = quantize_word_embeddings(path)
    assert facts == {
        "word_embeddings": {
            "op": "GatherBlockQuantized", "bits": 8, "block_size": 64, "rows": 2000,
            "fused": False,
        }
    }  # fmt: skip
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops == ["GatherBlockQuantized"]
    ids = np.array([[3, 1999, 0, 3]], dtype=np.int64)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids}
    )[0]
    np.testing.assert_allclose(out[0], table[ids[0]], atol=np.abs(table).max() / 127)
    assert quantize_word_embeddings(path) is None  # nothing left to quantize
