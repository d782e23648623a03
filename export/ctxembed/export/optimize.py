"""Steps 3 and 5: ONNX Runtime transformer fusions, then int8 (CPU) or fp16 (CUDA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ctxembed.export.attention_fusion import fuse_checked
from ctxembed.export.merge_matmuls import merge_shared_input_matmuls

# "auto" picks the preset from this CPU's flags (detect_cpu_preset).
QuantPresetChoice = Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"]
QUANT_PRESETS: tuple[QuantPresetChoice, ...] = get_args(QuantPresetChoice)[1:]
# Only the dense layers. Quantizing the embedding lookup (Gather, EmbedLayerNormalization), as
# optimum's presets do, saves no compute and costs accuracy (README, "Exporting").
QUANTIZED_OPERATORS = ("MatMul", "Attention")


@dataclass(frozen=True)
class Fused:
    path: Path
    fusions: dict[str, int]  # fused operator → count, for the manifest
    merged_matmuls: int  # groups of MatMuls reading one input, merged (merge_matmuls.py)
    fused_attention: int  # attentions ORT left unfused, made MultiHeadAttention here

    def optimization(self) -> dict[str, Any]:
        """The manifest's ``optimization`` entry of a variant built from this graph."""
        return {
            "fusions": self.fusions,
            "merged_matmuls": self.merged_matmuls,
            "fused_attention": self.fused_attention,
        }


def _heads_and_hidden(config: Any) -> tuple[int, int]:
    # 0 lets ORT's optimizer detect the value from the graph.
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "EmbedLayerNormalization",
    "LayerNormalization",
)


def _bert_optimizer(model: Path, config: Any, use_gpu: bool) -> Any:
    """ORT's transformer optimizer (model_type "bert" covers every supported encoder family)."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _heads_and_hidden(config)
    # opt_level=0: graph-level fusions only, so the file stays portable across providers;
    # ORT applies its basic/extended rewrites again at session creation.
    return optimize_model(
        str(model),
        model_type="bert",
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
        use_gpu=use_gpu,
    )


def fuse(model: Path, out: Path, config: Any, use_gpu: bool) -> Fused:
    """Attention, SkipLayerNormalization, BiasGelu... fusions, then the MatMuls that share an
    input (an unfused attention's q, k, v) merged into one, then the attentions ORT left
    unfused (a position bias: MPNet) as MultiHeadAttention; counts what was fused."""
    optimized = _bert_optimizer(model, config, use_gpu)
    merged = merge_shared_input_matmuls(optimized.model)
    attention = fuse_checked(optimized.model, _heads_and_hidden(config)[0])
    optimized.save_model_to_file(str(out))
    counts: dict[str, int] = {}
    for node in optimized.model.graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return Fused(out, counts, merged, attention)


def to_fp16(model: Path, out: Path, config: Any) -> None:
    """Fusions for CUDA, then fp16 weights and compute; inputs and outputs keep their types.

    Nodes that compute gather indices stay fp32 (see ``index_nodes``)."""
    optimized = _bert_optimizer(model, config, use_gpu=True)
    optimized.convert_float_to_float16(
        keep_io_types=True, node_block_list=index_nodes(optimized.model.graph)
    )
    optimized.save_model_to_file(str(out))


def index_nodes(graph: Any) -> list[str]:
    """Names of the nodes whose outputs feed a Gather's indices, transitively.

    Such arithmetic must be exact: MPNet computes its relative-position buckets as
    ``log(n / 16) / log(8) * 16`` cast to int, and with fp16 constants a distance near a bucket
    edge lands in the next bucket, so distant tokens get another attention bias (one word of a
    long probe text fell to cosine 0.993; 0.999998 with these nodes in fp32). A Shape node reads
    only its input's shape, so the walk stops there.
    """
    producer = {output: node for node in graph.node for output in node.output}
    pending = [node.input[1] for node in graph.node if node.op_type == "Gather"]
    names: list[str] = []
    seen: set[str] = set()
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name:  # an unnamed node cannot be listed (none in optimum's exports)
            names.append(node.name)
        if node.op_type != "Shape":
            pending.extend(node.input)
    return names


def detect_cpu_preset() -> str:
    """optimum's quantization preset for this CPU.

    Without VNNI, x86 int8 matmuls go through u8×s8 instructions that saturate on signed weights,
    which corrupts outputs: the avx2 preset therefore uses unsigned weights.
    """
    from ctxembed.runtime.cpu import cpu_flags, is_arm

    if is_arm():
        return "arm64"
    flags = cpu_flags()
    if not flags:
        return "avx2"  # the safe choice: unsigned weights work everywhere
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def quantize_int8(
    fused: Path, out: Path, preset: str, per_channel: bool, keep_fp32: Sequence[str] = ()
) -> dict[str, Any]:
    """Dynamic int8 quantization with optimum's preset, except the ``keep_fp32`` nodes; returns
    what the manifest records."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    cfg = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=per_channel)
    quantize_dynamic(
        fused,
        out,
        op_types_to_quantize=list(QUANTIZED_OPERATORS),
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        weight_type=cfg.weights_dtype,
        nodes_to_exclude=list(keep_fp32),
        # Shape inference fails on fused contrib ops (QAttention) without a default type.
        extra_options={
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            "WeightSymmetric": cfg.weights_symmetric,
            "ActivationSymmetric": cfg.activations_symmetric,
        },
    )
    return {
        "preset": preset,
        "activations": "dynamic",  # calibrate.py may fix them afterwards
        "weights_dtype": cfg.weights_dtype.name,
        "activations_dtype": cfg.activations_dtype.name,
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
        "weights_symmetric": cfg.weights_symmetric,
        "operators": list(QUANTIZED_OPERATORS),
    }
