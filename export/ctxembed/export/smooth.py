"""SmoothQuant-style scaling: move activation outliers into the weights before int8.

One scale per activation tensor cannot hold BERT-family activations, whose few outlier channels
are tens of times larger than the rest. For each weight MatMul (and fused Attention) input x
with weights W, channel j is divided by s_j = max|x_j|^a / max|W_j|^(1-a) and W's row j
multiplied by it (Xiao et al., SmoothQuant, 2023): the product is unchanged in exact arithmetic,
while x's channels become even enough for one int8 scale. The division is one ``Mul`` per input
tensor (inputs shared by Q, K and V get one), and max|x_j| is measured on the calibration texts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ALPHA = 0.75  # of 0.5-1.0 tried on both real models, the best on the design texts
WEIGHT_OPS = ("MatMul", "Attention")


def smooth_graph(
    fused: Path,
    out: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    skip_inputs: Collection[str] = (),
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Write ``out``: ``fused`` with every weight MatMul/Attention input smoothed, except those
    reading a tensor in ``skip_inputs``. Returns manifest facts."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fused))
    weights = {init.name: init for init in model.graph.initializer}

    def is_target(node: Any) -> bool:
        return (
            node.op_type in WEIGHT_OPS
            and node.input[1] in weights
            and node.input[0] not in skip_inputs
        )

    targets = [n for n in model.graph.node if is_target(n)]
    consumers: dict[str, list[Any]] = {}
    for node in targets:
        consumers.setdefault(node.input[0], []).append(node)
    inputs = sorted(consumers)
    peak = channel_peaks(model, inputs, feeds)
    smoothed: dict[str, str] = {}
    for name in inputs:
        mats = [numpy_helper.to_array(weights[n.input[1]]) for n in consumers[name]]
        scale = smoothing_scale(peak[name], mats, alpha)
        for node, w in zip(consumers[name], mats, strict=True):
            weights[node.input[1]].CopyFrom(
                numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1])
            )
        model.graph.initializer.append(
            numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}_smooth_scale")
        )
        smoothed[name] = f"{name}_smoothed"
    nodes = []
    for node in model.graph.node:
        if is_target(node):
            node.input[0] = smoothed[node.input[0]]
        nodes.append(node)
        for output in node.output:
            if output in smoothed:  # right after its producer: the graph stays sorted
                nodes.append(
                    helper.make_node(
                        "Mul",
                        [output, f"{output}_smooth_scale"],
                        [smoothed[output]],
                        name=f"{output}_smooth",
                    )
                )
    graph_inputs = {i.name for i in model.graph.input}
    for name in inputs:  # a graph input has no producer: its Mul goes first
        if name in graph_inputs:
            nodes.insert(
                0, helper.make_node("Mul", [name, f"{name}_smooth_scale"], [smoothed[name]])
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return {"smoothing": {"alpha": alpha, "tensors": len(inputs), "operators": len(targets)}}


def smoothing_scale(
    peak: np.ndarray, weights: Sequence[np.ndarray], alpha: float = ALPHA
) -> np.ndarray:
    """s_j = max|x_j|^a / max|W_j|^(1-a), over every W that reads the tensor."""
    w_peak = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    scale = peak**alpha / np.maximum(w_peak, 1e-8) ** (1.0 - alpha)
    return np.clip(scale, 1e-4, 1e4).astype(np.float32)


def channel_peaks(
    model: Any, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """max |x_j| per channel of each named tensor over the feeds (each run alone)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(list(names), feed), strict=True):
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peaks[name] = np.maximum(peaks[name], channel) if name in peaks else channel
    return peaks
