"""merge_matmuls.py: MatMuls that read one input become one MatMul, one Add and a Split."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ctxembed.export.merge_matmuls import merge_shared_input_matmuls

RNG = np.random.default_rng(0)


def _graph(bias_first: bool = False) -> Any:
    """x feeds q, k, v (MatMul + bias Add each), a MatMul with no bias, and one more MatMul
    with a bias that reads another input: only q, k, v may merge."""
    inits = []
    nodes = []
    outputs = []
    for name in ("q", "k", "v"):
        inits += [
            numpy_helper.from_array(RNG.normal(size=(8, 6)).astype(np.float32), f"W{name}"),
            numpy_helper.from_array(RNG.normal(size=6).astype(np.float32), f"b{name}"),
        ]
        adds = [f"b{name}", f"{name}_mm"] if bias_first else [f"{name}_mm", f"b{name}"]
        nodes += [
            helper.make_node(
                "MatMul", ["x", f"W{name}"], [f"{name}_mm"], name=f"/attn/{name}/MatMul"
            ),
            helper.make_node("Add", adds, [name], name=f"/attn/{name}/Add"),
        ]
        outputs.append(name)
    inits += [
        numpy_helper.from_array(RNG.normal(size=(8, 4)).astype(np.float32), "Wn"),
        numpy_helper.from_array(RNG.normal(size=(6, 3)).astype(np.float32), "Wo"),
        numpy_helper.from_array(RNG.normal(size=3).astype(np.float32), "bo"),
    ]
    nodes += [
        helper.make_node("MatMul", ["x", "Wn"], ["nobias"], name="/nobias/MatMul"),
        helper.make_node("MatMul", ["q", "Wo"], ["o_mm"], name="/o/MatMul"),
        helper.make_node("Add", ["o_mm", "bo"], ["o"], name="/o/Add"),
    ]
    outputs += ["nobias", "o"]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: Any, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})  # type: ignore[no-any-return]


def test_q_k_v_merge_into_one_matmul_with_the_same_outputs() -> None:
    for bias_first in (False, True):
        model = _graph(bias_first)
        x = RNG.normal(size=(2, 5, 8)).astype(np.float32)
        before = _run(model, x)
        assert merge_shared_input_matmuls(model) == 1
        ops = Counter(n.op_type for n in model.graph.node)
        assert ops == {"MatMul": 3, "Add": 2, "Split": 1}  # merged, no-bias, o
        after = _run(model, x)
        for a, b in zip(before, after, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        names = {i.name for i in model.graph.initializer}
        assert not names & {"Wq", "Wk", "Wv", "bq", "bk", "bv"}  # the originals are gone


def test_a_matmul_whose_output_the_graph_returns_is_not_merged() -> None:
    model = _graph()
    model.graph.output.append(helper.make_tensor_value_info("k_mm", TensorProto.FLOAT, None))
    x = RNG.normal(size=(1, 3, 8)).astype(np.float32)
    before = _run(model, x)
    assert merge_shared_input_matmuls(model) == 1  # q and v only
    assert Counter(n.op_type for n in model.graph.node)["MatMul"] == 4  # q+v, k, no-bias, o
    for a, b in zip(before, _run(model, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_nothing_to_merge_leaves_the_graph_alone() -> None:
    model = _graph()
    del model.graph.node[2:6]  # only q reads x with a bias now
    model.graph.output.pop(1)
    model.graph.output.pop(1)
    before = model.SerializeToString()
    assert merge_shared_input_matmuls(model) == 0
    assert model.SerializeToString() == before
