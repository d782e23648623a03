"""Step 5, int8: how each MatMul is quantized, per scheme.

Per-tensor int8 (``MatMulInteger``/``QAttention``, optimum's preset for this CPU) is the fastest
kind, but one scale per activation tensor cannot hold the outlier channels of BERT-family
activations. Two remedies, combined by the schemes: smoothing (``smooth.py``: outliers moved
into the weights, one ``Mul`` per input, full int8 speed) and ``MatMulNBits`` with 8-bit weights
and ``accuracy_level=4``, which quantizes activations per block of each row (holds any outlier;
slower kernels at the row counts of short texts). The FFN down-projection (after GELU) carries
the largest outliers. The schemes, fastest first (with ctxembed's fused kernels, which run the
``outlier`` scheme's per-row chains as one kernel each):

- ``smooth``: every weight MatMul's input smoothed, then per-tensor int8 with calibrated ranges.
- ``outlier``: outlier channels in fp32 and every row on its own scale (``outliers.py``), the
  rest per-tensor int8; a fused ``Attention``'s input smoothed. Where only a few words fail,
  ``auto`` takes the FFN down-projections that break them out of it, chosen by measured harm
  (``fallback.py``), block-wise where that passes, else fp32: on both real models one of them,
  block-wise (docs/int8.md).
- ``smooth-blockwise-ffn``: the FFN down-projections block-wise, the rest as ``smooth``. Before
  the kernels it came before ``outlier``; with them ``outlier`` runs 0.95x against 0.78x of
  dynamic int8's bank time on MPNet, 0.86x against 0.58x of its corpus rate (MiniLM 0.98x and
  0.88x against 0.89x and 0.67x; ``make bench-int8``, 2026-12-07). Without the kernels the two
  are within 10% of each other.
- ``blockwise``: every weight MatMul block-wise; a fused ``Attention`` stays per-tensor
  (calibrated).
- ``calibrated``: per-tensor int8 with calibrated ranges, no smoothing (the 0.1 default).
- ``dynamic``: per-tensor int8 with scales computed per run over the whole batch (older still:
  a text's vectors then depend on its neighbours, so its windows run alone).

Calibrated, smoothed and block-wise graphs all give a row the same vectors in any batch.
``auto`` takes the first of ``AUTO_ORDER`` that meets the validation thresholds on the selection
texts. The order is by speed, measured once (``make bench-int8``, README "int8"), never timed
during an export, so the choice is repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ctxembed.export.calibrate import freeze_activation_ranges
from ctxembed.export.embedding_table import quantize_word_embeddings
from ctxembed.export.optimize import quantize_int8
from ctxembed.export.outliers import decompose_outliers
from ctxembed.export.smooth import smooth_graph

# How the MatMuls that ``fallback.py`` keeps from a scheme's int8 run: block-wise (MPNet's one
# down-projection 6.3 -> 5.5 ms at the bank sentence, selection texts' worst word 0.9838 against
# 0.9804 in fp32) is tried first, fp32 where that fails.
FallbackForm = Literal["blockwise", "fp32"]
FALLBACK_FORMS: tuple[FallbackForm, ...] = get_args(FallbackForm)
Int8Scheme = Literal[
    "auto", "smooth", "smooth-blockwise-ffn", "outlier", "blockwise", "calibrated", "dynamic"
]
INT8_SCHEMES: tuple[Int8Scheme, ...] = get_args(Int8Scheme)
AUTO_ORDER: tuple[Int8Scheme, ...] = ("smooth", "outlier", "smooth-blockwise-ffn", "blockwise")
# Schemes that may keep a few MatMuls in fp32 when only their worst words fail (fallback.py).
FALLBACK_SCHEMES: tuple[Int8Scheme, ...] = ("outlier",)
BLOCK_SIZE = 128  # accuracy held at 32-256 on both real models (design texts); 256 ran 5% faster
# but gave one row different vectors in a batch than alone (tested): 128 keeps rows exact
BLOCKWISE_BITS = 8
ACCURACY_LEVEL = 4  # int8 activations, quantized per block
# The x86 kernel for 8-bit MatMulNBits arrived in onnxruntime 1.22 (microsoft/onnxruntime#24491).
BLOCKWISE_MIN_ONNXRUNTIME = "1.22"
GELU_OPS = {"Gelu", "BiasGelu", "FastGelu"}


def weight_matmuls(model: Any) -> list[Any]:
    """MatMul nodes whose second input is a weight (activation × activation ones excluded)."""
    weights = {init.name for init in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def gelu_outputs(model: Any) -> set[str]:
    """Tensors a GELU writes: the FFN down-projections read them."""
    return {o for n in model.graph.node if n.op_type in GELU_OPS for o in n.output}


def blockwise_nodes(model: Any, scheme: Int8Scheme) -> list[str]:
    """Names of the MatMuls a scheme quantizes block-wise."""
    if scheme == "blockwise":
        return [n.name for n in weight_matmuls(model)]
    if scheme == "smooth-blockwise-ffn":
        return ffn_down_projections(model)
    return []


def ffn_down_projections(model: Any) -> list[str]:
    """Names of the weight MatMuls that read a GELU's output: the FFN down-projections."""
    ffn = gelu_outputs(model)
    return [n.name for n in weight_matmuls(model) if n.input[0] in ffn]


def quantize_blockwise(source: Path, out: Path, nodes: Sequence[str]) -> None:
    """``nodes`` as MatMulNBits (8-bit weights per block, int8 activations per block)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    wanted = set(nodes)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=BLOCKWISE_BITS,
        block_size=BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=ACCURACY_LEVEL,
        nodes_to_exclude=others,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


def build_int8(
    fused: Path,
    out: Path,
    scheme: Int8Scheme,
    preset: str,
    per_channel: bool,
    feeds: Sequence[dict[str, np.ndarray]],
    int8_embeddings: bool = False,
    fp32_nodes: Sequence[str] = (),
    fallback: FallbackForm = "fp32",
) -> dict[str, Any]:
    """Write ``out``, the int8 graph of ``scheme`` (not ``auto``); returns the manifest facts.
    ``int8_embeddings``: the word-embedding table in 8-bit row blocks too. ``fp32_nodes``:
    weight MatMuls kept from the scheme's int8 (``fallback.py`` chooses them), in fp32 or, with
    ``fallback="blockwise"``, block-wise like the ``blockwise`` scheme's."""
    import onnx

    if scheme == "auto":
        raise ValueError("build_int8 builds one scheme; pick it from AUTO_ORDER")
    graph = onnx.load(str(fused), load_external_data=False)
    nodes = blockwise_nodes(graph, scheme)
    if fallback == "blockwise":
        nodes = [*nodes, *(n for n in fp32_nodes if n not in nodes)]
    source, smoothing, keep_fp32, known = fused, {}, list[str](), {}
    if scheme.startswith("smooth"):
        smoothing = smooth_graph(
            fused, out, feeds, skip_inputs=gelu_outputs(graph) if nodes else ()
        )
        source = out
    if scheme == "outlier":
        # A fused Attention reads its input whole: smoothing is all it gets.
        matmul_inputs = {n.input[0] for n in weight_matmuls(graph)}
        if any(n.op_type == "Attention" for n in graph.graph.node):
            smooth_graph(fused, out, feeds, skip_inputs=matmul_inputs)
            source = out
        split = decompose_outliers(source, out, feeds)
        source, keep_fp32, known, smoothing = (
            out,
            split.fp32_nodes,
            split.row_normalised,
            split.facts,
        )
    if nodes:
        quantize_blockwise(source, out, nodes)
        source = out
    facts = quantize_int8(source, out, preset, per_channel, [*keep_fp32, *fp32_nodes]) | smoothing
    if fp32_nodes:
        facts[f"{fallback}_fallback"] = list(fp32_nodes)
    facts["scheme"] = scheme
    if int8_embeddings:
        facts |= quantize_word_embeddings(out) or {}
    if nodes:
        facts |= {
            "blockwise_nodes": nodes,
            "blockwise": {
                "bits": BLOCKWISE_BITS,
                "block_size": BLOCK_SIZE,
                "accuracy_level": ACCURACY_LEVEL,
            },
            "min_onnxruntime": BLOCKWISE_MIN_ONNXRUNTIME,
        }
    if scheme == "dynamic":
        return facts
    graph = onnx.load(str(out), load_external_data=False)
    if any(n.op_type == "DynamicQuantizeLinear" for n in graph.graph.node):
        facts |= freeze_activation_ranges(out, out, feeds, known=known)
    else:  # every weight MatMul is block-wise: no per-tensor activation left to calibrate
        facts["activations"] = "blockwise"
    return facts
