"""Step 5, calibrated int8: fixed activation ranges, so a text's vectors ignore its batch.

Dynamic int8 quantization (what ``quantize_dynamic`` writes) computes each activation's scale at
run time over the whole input tensor: batch several texts and every text's vectors shift with
its neighbours. Here each
``DynamicQuantizeLinear`` becomes a ``QuantizeLinear`` with a constant scale and zero point,
measured on calibration texts run one at a time. The int8 kernels (QAttention, MatMulInteger)
stay the same, so speed is unchanged, and a padded batch now gives every row exactly the vectors
it gets alone: the server may batch int8 rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxembed.export.calibration_texts import CALIBRATION_TEXTS
from ctxembed.export.errors import ExportError

# Of the per-text extremes, the range covers this percentile: one unusual text does not
# coarsen every other text's steps (values beyond it saturate); it kept the worst token closer
# to fp32 than the plain maximum did (README, "Batching").
DEFAULT_PERCENTILE = 99.0


@dataclass(frozen=True)
class ActivationRange:
    low: float
    high: float

    def scale_and_zero_point(self) -> tuple[float, int]:
        """uint8 parameters, the way DynamicQuantizeLinear derives them (range includes 0)."""
        low, high = min(0.0, self.low), max(0.0, self.high)
        scale = (high - low) / 255.0 or 1.0
        return scale, int(np.clip(round(-low / scale), 0, 255))


def calibration_feeds(
    tokenizer_file: Path, graph_inputs: Sequence[str], max_tokens: int
) -> list[dict[str, np.ndarray]]:
    """One single-row feed per calibration text, special tokens included."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    feeds = []
    for text in CALIBRATION_TEXTS:
        ids = np.asarray([tokenizer.encode(text).ids[:max_tokens]], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in graph_inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        feeds.append(feed)
    return feeds


def measure_ranges(
    model: Any,
    feeds: Sequence[dict[str, np.ndarray]],
    percentile: float,
    known: Mapping[str, ActivationRange],
) -> dict[str, ActivationRange]:
    """Range of every DynamicQuantizeLinear input over the feeds (each run alone), except the
    ``known`` ones."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [
        n.input[0]
        for n in probe.graph.node
        if n.op_type == "DynamicQuantizeLinear" and n.input[0] not in known
    ]
    if not names:
        return dict(known)
    outputs = {o.name for o in probe.graph.output}
    for name in names:
        if name not in outputs:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    lows = np.empty((len(feeds), len(names)))
    highs = np.empty((len(feeds), len(names)))
    for i, feed in enumerate(feeds):
        for j, value in enumerate(session.run(names, feed)):
            lows[i, j], highs[i, j] = value.min(), value.max()
    low = np.percentile(lows, 100.0 - percentile, axis=0)
    high = np.percentile(highs, percentile, axis=0)
    measured = {n: ActivationRange(float(lo), float(hi)) for n, lo, hi in zip(names, low, high)}
    return measured | dict(known)


def freeze_activation_ranges(
    model_path: Path,
    out: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    percentile: float = DEFAULT_PERCENTILE,
    known: Mapping[str, ActivationRange] | None = None,
) -> dict[str, Any]:
    """Rewrite a dynamic int8 graph with fixed activation ranges (``known`` ones as given);
    returns manifest facts."""
    import onnx
    from onnx import helper, numpy_helper

    if not feeds:
        raise ExportError("int8 calibration needs at least one text")
    model = onnx.load(str(model_path))
    ranges = measure_ranges(model, feeds, percentile, known or {})
    if not ranges:
        raise ExportError(f"{model_path} has no DynamicQuantizeLinear node to calibrate")
    nodes = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        quantized, scale_name, zero_name = node.output
        scale, zero = ranges[node.input[0]].scale_and_zero_point()
        # Same output names: the consumers (QAttention, MatMulInteger, the rescaling Mul) keep
        # reading the scale and zero point, now constants.
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name),
                numpy_helper.from_array(np.array(zero, dtype=np.uint8), zero_name),
            ]
        )
        nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [node.input[0], scale_name, zero_name],
                [quantized],
                name=f"{node.name or quantized}_calibrated",
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return {
        "activations": "calibrated",
        "calibration_texts": len(feeds),
        "calibration_percentile": percentile,
        "calibrated_tensors": len(ranges),
    }
