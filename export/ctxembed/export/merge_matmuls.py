"""Merge the weight MatMuls that read one input (an unfused attention's q, k and v) into one.

``x Wq + bq``, ``x Wk + bk``, ``x Wv + bv`` become ``Split(x [Wq Wk Wv] + [bq bk bv])``: the
same numbers (each output column is the same dot product; per-channel weight scales, a shared
input's activation scale and its outlier channels are unchanged by concatenation), a third of
the nodes. That matters most for int8, whose every weight MatMul carries a chain of small nodes
(quantize, integer MatMul, cast, scale, per-row scale, outlier part) that on a short text costs a
few microseconds each whatever its size: on all-mpnet-base-v2's ``outlier`` graph the merge took
the bank sentence from 7.4 to 7.0 ms with bit-identical outputs (docs/int8.md, "Fewer nodes").
Fused ``Attention`` nodes (BERT, MiniLM) already read their input once: nothing to merge there.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

SPLIT_INPUT_OPSET = 13  # Split takes its sizes as an input from opset 13


def _bias_add(node: Any, readers: dict[str, list[Any]], weights: dict[str, Any]) -> Any | None:
    """(the Add, its bias's name) when an Add of a 1-D constant alone reads ``node``'s output."""
    after = readers.get(node.output[0], [])
    if len(after) != 1 or after[0].op_type != "Add":
        return None
    add = after[0]
    bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    return (add, bias) if bias in weights and len(weights[bias].dims) == 1 else None


def merge_shared_input_matmuls(model: Any) -> int:
    """In ``model`` (an ONNX ModelProto, changed in place), every group of weight MatMuls that
    share an input and each add a bias becomes one MatMul, one Add and a Split (the Adds'
    outputs keep their names). Returns the number of groups merged."""
    import numpy as np
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < SPLIT_INPUT_OPSET:
        return 0
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    readers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {o.name for o in graph.output}  # a graph output must keep its producer
    groups: dict[str, list[tuple[Any, Any, str]]] = defaultdict(list)  # input -> members
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or node.output[0] in outputs:
            continue
        found = _bias_add(node, readers, weights)
        if found is not None and len(weights[node.input[1]].dims) == 2:
            groups[node.input[0]].append((node, *found))
    replaced: dict[str, list[Any]] = {}  # the first member's output -> the merged nodes
    dropped: set[str] = set()  # outputs of the nodes merged away
    merged_from: set[str] = set()  # weights and biases now copied into merged ones
    for x, members in groups.items():
        if len(members) < 2:
            continue
        mats = [numpy_helper.to_array(weights[m.input[1]]) for m, _, _ in members]
        biases = [numpy_helper.to_array(weights[bias]) for _, _, bias in members]
        first = members[0][0]
        base = f"{first.name or first.output[0]}/merged"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.concatenate(mats, axis=1), f"{base}/weight"),
                numpy_helper.from_array(np.concatenate(biases), f"{base}/bias"),
                numpy_helper.from_array(
                    np.array([w.shape[1] for w in mats], np.int64), f"{base}/split"
                ),
            ]
        )
        replaced[first.output[0]] = [
            helper.make_node(
                "MatMul", [x, f"{base}/weight"], [f"{base}/mm"], name=f"{base}/MatMul"
            ),
            helper.make_node(
                "Add", [f"{base}/mm", f"{base}/bias"], [f"{base}/out"], name=f"{base}/Add"
            ),
            helper.make_node(
                "Split",
                [f"{base}/out", f"{base}/split"],
                [add.output[0] for _, add, _ in members],
                name=f"{base}/Split",
                axis=-1,
            ),
        ]
        for m, add, bias in members:
            dropped |= {m.output[0], add.output[0]}
            merged_from |= {m.input[1], bias}
    if not replaced:
        return 0
    nodes: list[Any] = []
    for node in graph.node:
        if node.output[0] in replaced:
            nodes += replaced[node.output[0]]
        elif node.output[0] not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used or i.name not in merged_from]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(replaced)
