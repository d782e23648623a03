"""The ``outlier`` int8 scheme: outlier channels in fp32, every row on its own int8 scale.

Per-tensor int8 (the fast ``MatMulInteger`` kernels) fails BERT-family models in two ways
(Bondarenko et al. 2021; Dettmers et al. 2022, LLM.int8()):

- a few hidden channels carry values tens of times larger than the rest, for every text (on
  all-mpnet-base-v2 113 channels over 48 tensors, at most 13 of one tensor's 768 or 3,072):
  one scale for the tensor wastes its steps on them;
- delimiter and punctuation tokens (``.``, ``,``) carry rows far larger or smaller than their
  neighbours', so a scale fitted to typical rows clips or flattens theirs.

For each weight ``MatMul`` input x (with weights W) this rewrites ``y = x W`` as::

    inliers = x * (mask / s)                 # outlier channels zeroed; SmoothQuant's s folded in
    r       = max(|inliers|, per row)        # one scale per row: batching cannot change a row
    y       = MatMul(inliers / r, W * s) * r  +  MatMul(Gather(x, outliers), W[outliers])

The first ``MatMul`` is then quantized like every other (int8 weights per channel, activations
per tensor with the fixed range [-1, 1]); the second stays fp32 and is tiny (a few rows of W).
Outlier channels are those whose peak over the calibration texts exceeds ``OUTLIER_RATIO`` times
the tensor's median channel peak: on both real models the same channels for every text.
A fused ``Attention`` reads its input whole, so its input is only smoothed (``smooth.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxembed.export.calibrate import ActivationRange
from ctxembed.export.smooth import ALPHA, channel_peaks, smoothing_scale

# Of 2-6 tried on all-mpnet-base-v2 (1,000 selection texts): 4 kept the worst word highest for
# few fp32 channels (88 found on 336 texts); 2 moved 2,693 channels to fp32, ran 15% slower.
OUTLIER_RATIO = 4.0
# smooth.ALPHA (0.75) on the inliers too: 0.5 and 0 kept a worse tail here.
ROW_RANGE = ActivationRange(-1.0, 1.0)  # what every row-normalised input spans, by construction


@dataclass(frozen=True)
class Decomposition:
    """What the rewrite left for the quantizer: fp32 nodes, and the inputs of fixed range."""

    fp32_nodes: list[str]
    row_normalised: dict[str, ActivationRange]
    facts: dict[str, Any]


def outlier_channels(peak: np.ndarray, ratio: float = OUTLIER_RATIO) -> np.ndarray:
    """Indices of the channels whose peak exceeds ``ratio`` times the median channel peak."""
    return np.flatnonzero(peak > ratio * np.median(peak)).astype(np.int64)


def decompose_outliers(
    fused: Path, out: Path, feeds: Sequence[dict[str, np.ndarray]], ratio: float = OUTLIER_RATIO
) -> Decomposition:
    """Write ``out``: ``fused`` with every weight MatMul rewritten as in the module docstring,
    the channels above ``ratio`` times the median peak in fp32."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fused))
    weights = {init.name: init for init in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    readers: dict[str, list[Any]] = {}
    for node in matmuls:
        readers.setdefault(node.input[0], []).append(node)
    if any(name in {i.name for i in model.graph.input} for name in readers):
        raise ValueError("a graph input feeds a weight MatMul directly: nothing to decompose")
    peaks = channel_peaks(model, sorted(readers), feeds)
    plans: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # input -> (outlier channels, s)
    for name, peak in peaks.items():
        idx = outlier_channels(peak, ratio)
        mask = np.ones_like(peak)
        mask[idx] = 0.0
        mats = [numpy_helper.to_array(weights[n.input[1]]) for n in readers[name]]
        scale = smoothing_scale(peak * mask + (1.0 - mask), mats)
        scale[idx] = 1.0
        plans[name] = (idx, scale)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array((mask / scale).astype(np.float32), f"{name}_inlier_scale"),
                numpy_helper.from_array(idx, f"{name}_outlier_channels"),
            ]
        )
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1e-12, np.float32), "row_scale_floor"),
            numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
        ]
    )

    def prepare(x: str) -> list[Any]:  # right after x's producer: the graph stays sorted
        nodes = [
            helper.make_node("Mul", [x, f"{x}_inlier_scale"], [f"{x}_inliers"], name=f"{x}_in"),
            helper.make_node("Abs", [f"{x}_inliers"], [f"{x}_abs"], name=f"{x}_abs"),
            helper.make_node(
                "ReduceMax", [f"{x}_abs", "last_axis"], [f"{x}_rmax"], name=f"{x}_rmax", keepdims=1
            ),
            helper.make_node(
                "Max", [f"{x}_rmax", "row_scale_floor"], [f"{x}_row"], name=f"{x}_row"
            ),
            helper.make_node("Div", [f"{x}_inliers", f"{x}_row"], [f"{x}_rows"], name=f"{x}_rows"),
        ]
        if plans[x][0].size:
            nodes.append(
                helper.make_node(
                    "Gather",
                    [x, f"{x}_outlier_channels"],
                    [f"{x}_outliers"],
                    name=f"{x}_outliers",
                    axis=-1,
                )
            )
        return nodes

    def rewrite(node: Any) -> list[Any]:
        x, y = node.input[0], node.output[0]
        idx, scale = plans[x]
        w = numpy_helper.to_array(weights[node.input[1]])
        weights[node.input[1]].CopyFrom(
            numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1])
        )
        inlier_part = f"{y}_inlier_part" if idx.size else y
        node.input[0], node.output[0] = f"{x}_rows", f"{y}_per_row"
        nodes = [
            node,
            helper.make_node(
                "Mul", [f"{y}_per_row", f"{x}_row"], [inlier_part], name=f"{node.name}_row"
            ),
        ]
        if idx.size:
            fp32.append(f"{node.name}_outliers")
            model.graph.initializer.append(
                numpy_helper.from_array(w[idx].astype(np.float32), f"{node.name}_outlier_rows")
            )
            nodes += [
                helper.make_node(
                    "MatMul",
                    [f"{x}_outliers", f"{node.name}_outlier_rows"],
                    [f"{y}_outlier_part"],
                    name=f"{node.name}_outliers",
                ),
                helper.make_node(
                    "Add", [inlier_part, f"{y}_outlier_part"], [y], name=f"{node.name}_sum"
                ),
            ]
        return nodes

    rewritten = {n.output[0] for n in matmuls}
    fp32: list[str] = []
    nodes: list[Any] = []
    for node in model.graph.node:
        nodes += rewrite(node) if node.output[0] in rewritten else [node]
        for output in node.output:
            if output in plans:
                nodes += prepare(output)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    channels = {name: int(idx.size) for name, (idx, _) in plans.items()}
    return Decomposition(
        fp32_nodes=fp32,
        row_normalised={f"{name}_rows": ROW_RANGE for name in plans},
        facts={
            "outliers": {
                "ratio": ratio,
                "alpha": ALPHA,
                "tensors": len(plans),
                "fp32_channels": sum(channels.values()),
                "max_channels_per_tensor": max(channels.values(), default=0),
                "activation_scale": "per row",
            }
        },
    )
