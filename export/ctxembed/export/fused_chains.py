"""Wrap chains of small operators as ONNX functions that ctxembed's fused kernels run.

Around each int8 product the ``outlier`` scheme (``outliers.py``) leaves onnxruntime about ten
small nodes, each a pass over the activations and a kernel launch: on a short text they cost as
much as the products. And onnxruntime's CPU ``SkipLayerNormalization`` sums each row one element
at a time. Here each chain, and each layer norm of a float graph, becomes one node of the
``ctxembed`` domain::

    Mul, Abs, ReduceMax, Max, Div, QuantizeLinear [, Gather]  ->  RowQuantize[Outliers]
    Cast, Mul, Mul [, Add]                                    ->  RowDequantize[Add]
    com.microsoft.SkipLayerNormalization                      ->  SkipLayerNorm[Bias]

and the model carries each as an ONNX function whose body is those same operators, so the file
stays standard ONNX: any onnxruntime inlines the bodies and computes what it computed before.
Where ``ctxembed.kernels`` is registered (ModelSession does it on the CPU provider), each node
runs as one kernel of ``fused_ops.c`` instead: the int8 chains with the same results bit for
bit, the layer norms to float rounding (tests/test_kernels.py). On all-mpnet-base-v2's int8
graph: 47 products and 25 layer norms, 1,206 nodes -> 813. The export wraps every CPU variant
after building it (``wrapped_variant``).

A folder exported before: ``python -m ctxembed.export.upgrade MODEL_DIR``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctxembed.runtime.manifest import Variant

DOMAIN = "ctxembed"  # ctxembed.kernels.DOMAIN: the export does not import the runtime's kernels
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators (SkipLayerNormalization)
FUNCTION_OPSET = 1


def functions(opset: int) -> list[Any]:
    """The functions the kernels implement, their bodies in the standard operators of
    ``opset`` (and onnxruntime's ``SkipLayerNormalization``)."""
    from onnx import AttributeProto, TensorProto, helper

    def node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
        return helper.make_node(op, inputs, outputs, **attrs)

    quantize = [
        node("Mul", ["x", "inlier_scale"], ["v"]),
        node("Abs", ["v"], ["a"]),
        node("Constant", [], ["axes"], value_ints=[-1]),
        node("ReduceMax", ["a", "axes"], ["peak"], keepdims=1),
        node("Max", ["peak", "floor"], ["row"]),
        node("Div", ["v", "row"], ["t"]),
        node("QuantizeLinear", ["t", "qscale", "zero_point"], ["q"]),
    ]
    gather = node("Gather", ["x", "channels"], ["outliers"], axis=-1)
    dequantize = [
        node("Cast", ["acc"], ["f"], to=TensorProto.FLOAT),
        node("Mul", ["f", "col_scale"], ["g"]),
    ]
    q_in = ["x", "inlier_scale", "floor", "qscale", "zero_point"]
    imports = [helper.make_opsetid("", opset)]
    epsilon = AttributeProto(name="epsilon", ref_attr_name="epsilon", type=AttributeProto.FLOAT)
    norms = [
        helper.make_function(
            DOMAIN, name, inputs, ["y"],
            [node("SkipLayerNormalization", inputs, ["y"], domain=MS_DOMAIN)],
            [*imports, helper.make_opsetid(MS_DOMAIN, 1)],
            attributes=["epsilon"],
        )
        for name, inputs in (
            ("SkipLayerNorm", ["x", "skip", "gamma", "beta"]),
            ("SkipLayerNormBias", ["x", "skip", "gamma", "beta", "bias"]),
        )
    ]  # fmt: skip
    norms[0].node[0].attribute.append(epsilon)
    norms[1].node[0].attribute.append(epsilon)
    return norms + [
        helper.make_function(DOMAIN, name, inputs, outputs, body, imports)
        for name, inputs, outputs, body in (
            ("RowQuantize", q_in, ["q", "row"], quantize),
            ("RowQuantizeOutliers", [*q_in, "channels"], ["q", "row", "outliers"],
             [*quantize, gather]),
            ("RowDequantize", ["acc", "col_scale", "row"], ["y"],
             [*dequantize, node("Mul", ["g", "row"], ["y"])]),
            ("RowDequantizeAdd", ["acc", "col_scale", "row", "extra"], ["y"],
             [*dequantize, node("Mul", ["g", "row"], ["h"]), node("Add", ["h", "extra"], ["y"])]),
        )
    ]  # fmt: skip


def wrap_row_chains(model: Any) -> int:
    """In ``model`` (an ONNX ModelProto, changed in place), replace every per-row chain around a
    ``MatMulInteger`` by its ``ctxembed`` node; returns how many products were wrapped. Chains
    whose inner values are read elsewhere are left as they are."""
    from onnx import TensorProto, helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    for out in graph.output:
        readers[out.name].append(None)  # a graph output is read by the caller

    weights = {t.name: t for t in graph.initializer}

    def shaped(name: str, rank: int, dtype: int = TensorProto.FLOAT) -> bool:
        t = weights.get(name)
        return t is not None and t.data_type == dtype and len(t.dims) == rank

    def per_channel(name: str) -> bool:
        """A 1-D constant: stored, or the quantizer's product of the activation's scale and
        the weights' per-channel scales (onnxruntime folds it at load)."""
        node = producer.get(name)
        if node is None or node.op_type != "Mul":
            return shaped(name, 1)
        ranks = sorted(len(weights[i].dims) if i in weights else -1 for i in node.input)
        return ranks == [0, 1]

    def kernel_operands(scaled_in: Any, row: Any, quant: Any, scaled: Any, cast: Any) -> bool:
        """The constants are what the kernels read: per-channel vectors, per-tensor scalars
        and a uint8 zero point (other graphs keep their chains)."""
        col_scale = next((i for i in scaled.input if i != cast.output[0]), "")
        return (
            shaped(scaled_in.input[1], 1)
            and shaped(row.input[1], 0)
            and shaped(quant.input[1], 0)
            and len(quant.input) == 3
            and shaped(quant.input[2], 0, TensorProto.UINT8)
            and per_channel(col_scale)
        )

    def made_by(name: str, op: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def only_reader(name: str, op: str) -> Any:
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0] and found[0].op_type == op else None

    replaced: dict[int, Any] = {}  # id(node) -> the node that takes its place
    dropped: set[int] = set()
    quantized: set[int] = set()  # the QuantizeLinear nodes already wrapped
    products = 0
    for mm in [n for n in graph.node if n.op_type == "MatMulInteger"]:
        quant = made_by(mm.input[0], "QuantizeLinear")
        div = (
            quant
            and only_reader(quant.input[0], "QuantizeLinear")
            and made_by(quant.input[0], "Div")
        )
        row = div and made_by(div.input[1], "Max")
        peak = row and made_by(row.input[0], "ReduceMax")
        absolute = peak and only_reader(peak.output[0], "Max") and made_by(peak.input[0], "Abs")
        scaled_in = absolute and made_by(absolute.input[0], "Mul")
        cast = only_reader(mm.output[0], "Cast")
        scaled = cast and only_reader(cast.output[0], "Mul")
        by_row = scaled and only_reader(scaled.output[0], "Mul")
        if not (
            scaled_in
            and kernel_operands(scaled_in, row, quant, scaled, cast)
            and div.input[0] == scaled_in.output[0]
            and len(readers[scaled_in.output[0]]) == 2  # Abs and Div, nothing else
            and only_reader(absolute.output[0], "ReduceMax")
            and by_row
            and row.output[0] in by_row.input
        ):
            continue
        products += 1
        if id(quant) not in quantized:
            quantized.add(id(quant))
            x = scaled_in.input[0]
            inputs = [x, scaled_in.input[1], row.input[1], quant.input[1], quant.input[2]]
            outputs = [quant.output[0], row.output[0]]
            gather = next(
                (n for n in readers[x] if n is not None and n.op_type == "Gather"
                 and n.input[0] == x), None,
            )  # fmt: skip
            op = "RowQuantize"
            if gather is not None:
                op = "RowQuantizeOutliers"
                inputs.append(gather.input[1])
                outputs.append(gather.output[0])
                dropped.add(id(gather))
            replaced[id(scaled_in)] = helper.make_node(
                op, inputs, outputs, name=f"{quant.output[0]}_fused", domain=DOMAIN
            )
            dropped.update({id(absolute), id(peak), id(row), id(div), id(quant)})
        col_scale = next(i for i in scaled.input if i != cast.output[0])
        add = only_reader(by_row.output[0], "Add")
        extra = next((i for i in add.input if i != by_row.output[0]), "") if add else ""
        dropped.update({id(cast), id(scaled)})
        inputs, last, op = [mm.output[0], col_scale, row.output[0]], by_row, "RowDequantize"
        if add is not None and made_by(extra, "MatMul") is not None:  # the outlier part
            inputs, last, op = [*inputs, extra], add, "RowDequantizeAdd"
            dropped.add(id(by_row))
        replaced[id(last)] = helper.make_node(
            op, inputs, [last.output[0]], name=f"{mm.output[0]}_dequantized", domain=DOMAIN
        )
    # Each new node takes the place of its chain's first (quantizing) or last (dequantizing)
    # node: its inputs are computed before it and its outputs read after, so the order holds.
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    return products


def wrap_layer_norms(model: Any) -> int:
    """Every float ``SkipLayerNormalization`` with one output becomes ``SkipLayerNorm[Bias]``
    (same inputs and epsilon); returns how many."""
    weights = {t.name: t for t in model.graph.initializer}
    wrapped = 0
    for node in model.graph.node:
        gamma = weights.get(node.input[2]) if len(node.input) > 2 else None
        if (
            node.op_type != "SkipLayerNormalization"
            or node.domain != MS_DOMAIN
            or len(node.input) not in (4, 5)
            or "" in node.input
            or len(node.output) != 1
            or gamma is None
            or gamma.data_type != 1  # float
        ):
            continue
        node.op_type = "SkipLayerNormBias" if len(node.input) == 5 else "SkipLayerNorm"
        node.domain = DOMAIN
        wrapped += 1
    return wrapped


def wrap_chains(model: Any) -> dict[str, int]:
    """Both wraps on ``model`` (changed in place), and the functions; counts of each, or {}
    when there was nothing to wrap (or it was wrapped already). A graph partly wrapped (an
    int8 graph quantized from a wrapped fp32 one) gets the rest."""
    from onnx import helper

    counts = {"products": wrap_row_chains(model), "layer_norms": wrap_layer_norms(model)}
    if not any(counts.values()):
        return {}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    have = {f.name for f in model.functions if f.domain == DOMAIN}
    model.functions.extend(f for f in functions(opset) if f.name not in have)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, FUNCTION_OPSET))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return counts


def wrap_model(model: Any) -> dict[str, Any]:
    """``wrap_chains`` on ``model`` (changed in place); the manifest's optimization facts ({}
    when there was nothing to wrap)."""
    before = len(model.graph.node)
    counts = wrap_chains(model)
    if not counts:
        return {}
    nodes = [before, len(model.graph.node)]
    return {"fused_chains": {"domain": DOMAIN, **counts, "nodes": nodes}}


def wrap_file(src: Path, dst: Path) -> dict[str, Any]:
    """``wrap_model`` on the file ``src``, written to ``dst`` when it wrapped any."""
    import onnx

    model = onnx.load(str(src))
    facts = wrap_model(model)
    if facts:
        onnx.save(model, str(dst))
    return facts


def wrapped_variant(folder: Path, variant: Variant, graph: Path | None = None) -> Variant:
    """``variant`` with its graph (``graph``, else its file in ``folder``) wrapped in place, its
    checksum, size and facts updated; a CUDA graph, or one with nothing to wrap, as it was."""
    from ctxembed.export.pipeline import file_sha256

    path = graph or folder / variant.file
    facts = wrap_file(path, path) if variant.target == "cpu" else {}
    if not facts:
        return variant
    return replace(
        variant,
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        optimization=variant.optimization | facts,
    )
