"""Fuse the attention that ONNX Runtime's optimizer leaves unfused into ``MultiHeadAttention``.

ORT's transformer optimizer fuses BERT's attention into one ``Attention`` node, but not an
attention with a relative position bias added to its scores (MPNet's): there each layer keeps
~20 small nodes (q, k and v reshaped and transposed, the score MatMul, its scale, one Add per
bias, Softmax, the MatMul with v, and the transpose and reshape back), whose fixed cost per node
is most of the attention's time on a short text. Each such layer becomes one
``com.microsoft.MultiHeadAttention`` reading q, k and v as (batch, sequence, hidden) and the
bias terms summed once as ``attention_bias`` (batch, heads, sequence, sequence), shared by every
layer that adds the same terms.

Same arithmetic up to float rounding: the scale multiplies the scores as before (MPNet's 1/8 is
exact), and ``scores + (position_bias + mask)`` equals ``(scores + position_bias) + mask``
exactly wherever the mask is 0; masked keys get a bias near float's lowest either way. Only the
exact pattern below is touched, and ``fuse_checked`` (what the export calls) keeps the fused
graph only when it runs and matches the unfused one on a padded batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("ctxembed.export")
MS_DOMAIN = "com.microsoft"
Q_PERM = [0, 2, 1, 3]  # (batch, sequence, heads, head) -> (batch, heads, sequence, head)
K_PERM = [0, 2, 3, 1]  # ... -> (batch, heads, head, sequence): k already transposed
CHECK_TOKENS = 12
CHECK_TOLERANCE = 1e-4  # of the output's largest value: float rounding, not a changed graph


@dataclass(frozen=True)
class _Layer:
    """One unfused attention: its inputs, what it adds to the scores, and the nodes it frees."""

    q: str
    k: str
    v: str
    scale: float
    bias_terms: tuple[str, ...]
    output: str  # the final Reshape's output, which the next layer reads
    nodes: tuple[Any, ...]  # matched nodes, removed once the fused node replaces them


class _Graph:
    """Lookups over an ONNX graph: who makes a value, who reads it, constant values."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.maker = {out: node for node in graph.node for out in node.output}
        self.readers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.readers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self.consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def made_by(self, name: str, op: str) -> Any | None:
        node = self.maker.get(name)
        return node if node is not None and node.op_type == op else None

    def only_reader(self, name: str, op: str) -> Any | None:
        """The one node reading ``name``, if it is an ``op`` and ``name`` is no graph output."""
        readers = self.readers.get(name, [])
        if len(readers) != 1 or readers[0].op_type != op or name in self.outputs:
            return None
        return readers[0]

    def scalar(self, name: str) -> float | None:
        value = self.consts.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _perm(node: Any) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _heads_view(g: _Graph, name: str, perm: list[int]) -> tuple[str, list[Any]] | None:
    """``name`` = Transpose(perm) of a Reshape of a (batch, sequence, hidden) tensor into heads:
    (that tensor, [transpose, reshape]), each read by nothing else."""
    transpose = g.made_by(name, "Transpose")
    if transpose is None or _perm(transpose) != perm or len(g.readers[name]) != 1:
        return None
    reshape = g.made_by(transpose.input[0], "Reshape")
    if reshape is None or g.only_reader(reshape.output[0], "Transpose") is None:
        return None
    return reshape.input[0], [transpose, reshape]


def _scores(g: _Graph, softmax: Any) -> tuple[Any, float, tuple[str, ...], list[Any]] | None:
    """Walk back from Softmax over the bias Adds and the scale to the score MatMul:
    (that MatMul, scale, bias terms in the order added, the Adds and scale node)."""
    terms: list[str] = []
    chain: list[Any] = []
    name = softmax.input[0]
    scale: float | None = None
    while True:
        node = g.maker.get(name)
        if node is None or len(g.readers[name]) != 1 or name in g.outputs:
            return None
        if node.op_type == "Add" and scale is None:
            # The score side comes from the MatMul through Adds and the scale; the other is a
            # bias term (the position bias, the mask).
            sides = [i for i in (0, 1) if _reaches_matmul(g, node.input[i])]
            if len(sides) != 1:
                return None
            terms.insert(0, node.input[1 - sides[0]])
            chain.append(node)
            name = node.input[sides[0]]
        elif node.op_type in ("Div", "Mul") and scale is None:
            value = g.scalar(node.input[1])
            if not value:
                return None
            scale = 1.0 / value if node.op_type == "Div" else value
            chain.append(node)
            name = node.input[0]
        elif node.op_type == "MatMul" and terms:
            return node, 1.0 if scale is None else scale, tuple(terms), chain
        else:
            return None


def _reaches_matmul(g: _Graph, name: str) -> bool:
    """Whether ``name`` comes from a MatMul through Adds and scales (the score side)."""
    node = g.maker.get(name)
    if node is None:
        return False
    if node.op_type == "Add":
        return any(_reaches_matmul(g, i) for i in node.input)
    if node.op_type in ("Div", "Mul"):
        return _reaches_matmul(g, node.input[0])
    return node.op_type == "MatMul"


def _match(g: _Graph, softmax: Any, heads: int) -> _Layer | None:
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    found = _scores(g, softmax)
    if found is None:
        return None
    score_mm, scale, terms, chain = found
    q_side = _heads_view(g, score_mm.input[0], Q_PERM)
    k_side = _heads_view(g, score_mm.input[1], K_PERM)
    context = g.only_reader(softmax.output[0], "MatMul")
    if q_side is None or k_side is None or context is None or context.input[0] != softmax.output[0]:
        return None
    v_side = _heads_view(g, context.input[1], Q_PERM)
    back = g.only_reader(context.output[0], "Transpose")
    if v_side is None or back is None or _perm(back) != Q_PERM:
        return None
    merge = g.only_reader(back.output[0], "Reshape")
    if merge is None or not _splits_heads(g, [q_side, k_side, v_side], heads):
        return None
    nodes = [*q_side[1], *k_side[1], *v_side[1], score_mm, *chain, softmax, context, back, merge]
    return _Layer(q_side[0], k_side[0], v_side[0], scale, terms, merge.output[0], tuple(nodes))


def _splits_heads(g: _Graph, sides: list[tuple[str, list[Any]]], heads: int) -> bool:
    """Each Reshape's target shape, where its head count is a constant, says ``heads``."""
    for _, (_, reshape) in sides:
        shape = g.consts.get(reshape.input[1])
        if shape is not None:
            if shape.size != 4 or int(shape[2]) != heads:
                return False
            continue
        concat = g.made_by(reshape.input[1], "Concat")
        if concat is None or len(concat.input) != 4:
            return False
        count = g.scalar(concat.input[2])
        if count is not None and int(count) != heads:
            return False
    return True


def fuse_attention(model: Any, heads: int) -> int:
    """Replace every unfused attention in ``model`` (an ONNX ModelProto, changed in place) by
    a ``MultiHeadAttention`` node; returns how many. ``heads``: the model's attention heads."""
    from onnx import helper

    if heads <= 0:
        return 0
    g = _Graph(model)
    layers = [m for s in g.maker.values() if s.op_type == "Softmax" if (m := _match(g, s, heads))]
    layers = list({layer.output: layer for layer in layers}.values())
    if not layers:
        return 0
    graph = model.graph
    dropped = {node.output[0] for layer in layers for node in layer.nodes}  # outputs: unique
    sums: dict[tuple[str, ...], str] = {}  # bias terms -> their summed tensor, made once
    added: dict[str, list[Any]] = defaultdict(list)  # a layer's output -> the nodes that make it
    for n, layer in enumerate(layers):
        bias = sums.get(layer.bias_terms)
        new: list[Any] = []
        if bias is None:
            bias = layer.bias_terms[0]
            for i, term in enumerate(layer.bias_terms[1:]):
                out = f"ctxembed_attention_bias_{len(sums)}_{i}"
                new.append(helper.make_node("Add", [bias, term], [out], name=out))
                bias = out
            sums[layer.bias_terms] = bias
        new.append(
            helper.make_node(
                "MultiHeadAttention",
                [layer.q, layer.k, layer.v, "", "", bias],
                [layer.output],
                name=f"ctxembed_attention_{n}",
                domain=MS_DOMAIN,
                num_heads=heads,
                scale=layer.scale,
            )
        )
        added[layer.output] = new
    kept: list[Any] = []
    for node in graph.node:
        if node.output[0] not in dropped:
            kept.append(node)
        for out in node.output:  # the fused nodes go where each layer's last node was
            kept.extend(added.pop(out, []))
    del graph.node[:]
    graph.node.extend(_without_dead(kept, {o.name for o in graph.output}))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(layers)


def _without_dead(nodes: list[Any], outputs: Iterable[str]) -> list[Any]:
    """``nodes`` less those whose outputs nothing reads any more (the shape arithmetic that
    only the removed reshapes used), in order."""
    needed = set(outputs)
    live: list[Any] = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    return live[::-1]


def fuse_checked(model: Any, heads: int) -> int:
    """``fuse_attention`` on ``model`` only when the fused graph runs and matches the unfused
    one (onnxruntime, CPU) on a padded batch; else ``model`` stays as it was. Returns how many
    attentions were fused (0: none matched, or the check refused them, which is logged)."""
    fused = type(model)()
    fused.CopyFrom(model)
    count = fuse_attention(fused, heads)
    if not count:
        return 0
    try:
        before, after = _run(model), _run(fused)
    except Exception as exc:  # onnxruntime raises its own types: any failure keeps the original
        log.warning("attention fusion not kept: the fused graph could not be run (%s)", exc)
        return 0
    for name, a, b in zip(_output_names(model), before, after, strict=True):
        scale = max(1.0, float(np.abs(a).max()))
        if a.shape != b.shape or float(np.abs(a - b).max()) > CHECK_TOLERANCE * scale:
            log.warning("attention fusion not kept: output %s differs from the unfused graph", name)
            return 0
    model.CopyFrom(fused)
    return count


def _output_names(model: Any) -> list[str]:
    return [o.name for o in model.graph.output]


def _run(model: Any) -> list[np.ndarray]:
    """The graph's outputs on two short rows, the second half padding (the mask matters)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    ids = np.random.default_rng(0).integers(5, 100, (2, CHECK_TOKENS), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, CHECK_TOKENS // 2 :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {k: v for k, v in feeds.items() if k in names})
    keep = mask.astype(bool)  # padded positions' vectors are never read
    return [o[keep] if o.shape[:2] == mask.shape else o for o in map(np.asarray, outputs)]
