"""What fused int8 kernels would buy: the `outlier` graph timed beside a timing proxy of itself.

    python -m benchmarks.fusion_bound --model-dir DIR [--rounds 5] [--reps 200]

The `outlier` scheme (docs/int8.md) runs each int8 product as a chain of onnxruntime's own ops:
before it, ``Mul`` (smoothing, outlier channels masked), ``Abs``, ``ReduceMax``, ``Max``,
``Div`` and ``QuantizeLinear`` give every row its own scale; after it, ``Cast``, ``Mul``
(weight scales), ``Mul`` (the row's scale) and, where the input has outlier channels, a
``Gather`` + fp32 ``MatMul`` + ``Add``. About ten small nodes per product, each a pass over
the activations, around one ``MatMulInteger``. A custom kernel would do the quantizing chain in
one node and the dequantizing chain (outlier part included) in another.

The proxy has exactly that node count: each quantizing chain becomes one
``DynamicQuantizeLinear``, each dequantizing chain one ``Cast``, the outlier parts are dropped.
Its numbers are wrong (one scale per tensor, no outliers); its speed is what fused kernels
could reach at best (theirs would also compute the outlier part), so the figure it gives is a
bound, not a promise. One proxy per part (quantizing chain, dequantizing chain, outlier part)
shows what each costs. All graphs run through the same ``WordEmbedder`` with the same settings,
in interleaved rounds: the bank sentence's p50 and corpus texts/s in calls of 32.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.engines import BANK, BATCH, throughput, time_calls
from benchmarks.stats import percentiles
from ctxembed.runtime import TextInput, WordEmbedder
from ctxembed.runtime.manifest import load_manifest
from testkit.corpus import load_corpus

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache" / "fusion-proxy"
# The chains' three parts: before the int8 product, after it, and the fp32 outlier product.
PARTS = ("quantize", "dequantize", "outliers")


def collapse_row_chains(src: Path, dst: Path, parts: Sequence[str] = PARTS) -> dict[str, int]:
    """Write the timing proxy of ``src`` (an ``outlier`` int8 graph) to ``dst``, collapsing the
    chains' ``parts`` (all by default; one at a time shows what each costs); count what
    changed. Products whose input is not a per-row chain are left as they are."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"parts: unknown {sorted(unknown)}, expected some of {list(PARTS)}")
    model = onnx.load(str(src))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def made_by(name: str, op: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def only_user(name: str, op: str) -> Any:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    dropped: set[int] = set()
    quantize_before: dict[int, Any] = {}  # id(MatMulInteger) -> its DynamicQuantizeLinear
    quantized: dict[str, str] = {}
    products = 0
    for mm in [n for n in graph.node if n.op_type == "MatMulInteger"]:
        quant = made_by(mm.input[0], "QuantizeLinear")
        div = quant and made_by(quant.input[0], "Div")
        masked = div and made_by(div.input[0], "Mul")
        row = div and made_by(div.input[1], "Max")
        cast = only_user(mm.output[0], "Cast")
        scaled = cast and only_user(cast.output[0], "Mul")
        by_row = scaled and only_user(scaled.output[0], "Mul")
        if not (masked and row and by_row and row.output[0] in by_row.input):
            continue
        products += 1
        add = only_user(by_row.output[0], "Add")
        other = add and next((i for i in add.input if i != by_row.output[0]), None)
        outlier = other and made_by(other, "MatMul")
        if not (outlier and made_by(outlier.input[0], "Gather")):
            add = None
        last = by_row
        if "dequantize" in parts:  # Cast, Mul, Mul -> one Cast
            cast.output[0] = by_row.output[0]
            dropped.update({id(scaled), id(by_row)})
            last = cast
        if "outliers" in parts and add is not None:  # Gather, MatMul, Add -> nothing
            last.output[0] = add.output[0]
            dropped.add(id(add))
        if "quantize" in parts:  # Mul, Abs, ReduceMax, Max, Div, QuantizeLinear -> one node
            source = masked.input[0]
            if source not in quantized:
                quantized[source] = f"{source}_proxy_q"
                quantize_before[id(mm)] = helper.make_node(
                    "DynamicQuantizeLinear",
                    [source],
                    [quantized[source], f"{source}_proxy_scale", f"{source}_proxy_zero"],
                )
            mm.input[0] = quantized[source]
            mm.input[2] = f"{source}_proxy_zero"
            if last is by_row:  # the row's scale: a constant, so its chain goes
                by_row.input[list(by_row.input).index(row.output[0])] = "proxy_one"
    nodes: list[Any] = []
    for node in graph.node:
        if id(node) in quantize_before:
            nodes.append(quantize_before[id(node)])
        if id(node) not in dropped:
            nodes.append(node)
    # What only fed the chains' old nodes is dead now: drop it, keeping the graph's order.
    live = {o.name for o in graph.output}
    kept: list[Any] = []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    before = len(graph.node)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "proxy_one"))
    used = {i for n in graph.node for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return {"products": products, "nodes_before": before, "nodes_after": len(graph.node)}


def proxy_folder(model_dir: Path, out: Path, parts: Sequence[str] = PARTS) -> dict[str, int]:
    """A copy of the model folder whose int8 graph is the timing proxy (the rest linked)."""
    manifest = load_manifest(model_dir)
    int8 = next(v for v in manifest.variants if v.precision == "int8")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.is_file() and item.name != int8.file:
            (out / item.name).symlink_to(item.resolve())
    return collapse_row_chains(model_dir / int8.file, out / int8.file, parts)


def measure(
    model_dir: Path,
    rounds: int,
    reps: int,
    texts: int,
    cache: Path = CACHE,
    each_part: bool = True,
) -> dict[str, Any]:
    """The real graph, the proxy with every part collapsed (``proxy``) and, with
    ``each_part``, one proxy per part alone, all timed in the same rounds."""
    folder = cache / model_dir.resolve().name
    counts = proxy_folder(model_dir, folder / "proxy")
    if not counts["products"]:  # not an `outlier` graph: nothing to fuse this way
        shutil.rmtree(folder)
        return counts
    engines = {
        "outlier": WordEmbedder.load(model_dir, provider="cpu"),
        "proxy": WordEmbedder.load(folder / "proxy", provider="cpu"),
    }
    for part in PARTS if each_part else ():
        proxy_folder(model_dir, folder / part, [part])
        engines[part] = WordEmbedder.load(folder / part, provider="cpu")
    bank = [TextInput(text=BANK, select_words=["bank"])]
    corpus = load_corpus(texts)
    p50: dict[str, list[float]] = {k: [] for k in engines}
    rate: dict[str, list[float]] = {k: [] for k in engines}
    for emb in engines.values():  # every graph warm, buffers grown, before the first round
        time_calls(functools.partial(emb.embed, bank), 0, warmup=30)
        emb.embed(corpus[:BATCH])
    for _ in range(rounds):
        for key, emb in engines.items():
            p50[key].append(
                percentiles(time_calls(functools.partial(emb.embed, bank), reps))["p50_ms"]
            )
            rate[key].append(throughput(emb.embed, corpus, BATCH, repeats=1))
    bank_ms = {k: statistics.median(v) for k, v in p50.items()}
    texts_per_s = {k: statistics.median(v) for k, v in rate.items()}
    return counts | {
        "rounds": rounds,
        "bank_p50_ms": bank_ms,
        "corpus_texts_per_s": texts_per_s,
        "bank_saving_ms": bank_ms["outlier"] - bank_ms["proxy"],
        "corpus_speedup": texts_per_s["proxy"] / texts_per_s["outlier"],
        "part_saving_ms": {p: bank_ms["outlier"] - bank_ms[p] for p in PARTS if p in bank_ms},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--texts", type=int, default=128, help="corpus lines per round")
    p.add_argument("--all-parts-only", action="store_true", help="skip the per-part proxies")
    args = p.parse_args(argv)
    result = measure(
        args.model_dir,
        args.rounds,
        args.reps,
        args.texts,
        each_part=not args.all_parts_only,
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
