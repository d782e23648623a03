"""int8 word-embedding table: 8 bits per value with a scale per block of a row, gathered with
onnxruntime's ``GatherBlockQuantized`` so only the rows a text uses are ever dequantized.

The table is most of a small model's file (MiniLM: 44.7 of 56 MiB in fp32). One scale for the
whole table cost accuracy; a scale per block of each row does not, since each row keeps its own
range. A ``DequantizeLinear`` on the initializer would shrink the file but not the memory
(onnxruntime folds it back to fp32 at load); gathering the quantized rows shrinks both.

Two shapes of graph: a plain ``Gather`` of the table is replaced by the quantized gather; a fused
``EmbedLayerNormalization`` (which gathers the table itself) is fed the gathered rows of the
batch as its table and ids that index them (``0..n-1``), so the fused kernel still does the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BITS = 8
MIN_ROWS = 1000  # a vocabulary, not a small table such as token types or positions


def _block_size(columns: int) -> int:
    """The largest power of two from 128 down to 16 that divides the row (16 is the op's floor)."""
    for size in (128, 64, 32, 16):
        if columns % size == 0:
            return size
    return 16


def quantize_rows(table: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks of each row: (uint8 data, float scales, uint8 zero points 128)."""
    rows, columns = table.shape
    padded = -(-columns // block) * block
    blocks = np.zeros((rows, padded), dtype=np.float32)
    blocks[:, :columns] = table
    blocks = blocks.reshape(rows, padded // block, block)
    scales = np.abs(blocks).max(axis=-1) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[..., None]), -127, 127).astype(np.int16) + 128
    data = q.reshape(rows, padded)[:, :columns].astype(np.uint8)
    return data, scales, np.full(scales.shape, 128, dtype=np.uint8)


def _table(model: Any) -> tuple[Any, list[Any]] | None:
    """The word-embedding table and the nodes that read it, if every one of them is a Gather of
    it or a fused EmbedLayerNormalization (``--layers all`` graphs have both)."""
    tables = {
        init.name: init
        for init in model.graph.initializer
        if len(init.dims) == 2 and init.dims[0] >= MIN_ROWS and init.data_type == 1
    }
    for name, init in tables.items():
        readers = [n for n in model.graph.node if name in n.input]
        handled = [
            n
            for n in readers
            if (n.op_type == "Gather" and n.input[0] == name)
            or (n.op_type == "EmbedLayerNormalization" and n.input[2] == name)
        ]
        if readers and handled == readers:
            return init, readers
    return None


def quantize_word_embeddings(path: Path) -> dict[str, Any] | None:
    """Rewrite ``path`` with its word-embedding table in 8-bit blocks; the manifest facts, or
    None where the graph has no such table (it is left as it is)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    found = _table(model)
    if found is None:
        return None
    init, readers = found
    table = numpy_helper.to_array(init).astype(np.float32)
    block = _block_size(table.shape[1])
    data, scales, zero_points = quantize_rows(table, block)
    base = init.name
    model.graph.initializer.remove(init)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(data, f"{base}_q8"),
            numpy_helper.from_array(scales, f"{base}_scales"),
            numpy_helper.from_array(zero_points, f"{base}_zero_points"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{base}_flat"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), f"{base}_zero"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), f"{base}_one"),
        ]
    )
    quantized = [f"{base}_q8", f"{base}_scales", f"{base}_zero_points"]
    for k, node in enumerate(readers):
        index = list(model.graph.node).index(node)
        if node.op_type == "Gather":
            model.graph.node.remove(node)
            model.graph.node.insert(
                index, _gather(quantized, node.input[1], list(node.output), block, node.name)
            )
        else:
            tag = f"{base}_{k}"
            ids = node.input[0]
            new = [
                helper.make_node("Reshape", [ids, f"{base}_flat"], [f"{tag}_ids_flat"]),
                _gather(quantized, f"{tag}_ids_flat", [f"{tag}_rows"], block, f"{tag}_gather"),
                helper.make_node("Size", [ids], [f"{tag}_count"]),
                helper.make_node(
                    "Range", [f"{base}_zero", f"{tag}_count", f"{base}_one"], [f"{tag}_range"]
                ),
                helper.make_node("Shape", [ids], [f"{tag}_shape"]),
                helper.make_node("Reshape", [f"{tag}_range", f"{tag}_shape"], [f"{tag}_range2d"]),
                helper.make_node("Cast", [f"{tag}_range2d"], [f"{tag}_local_ids"], to=6),  # int32
            ]
            for offset, extra in enumerate(new):
                model.graph.node.insert(index + offset, extra)
            node.input[0] = f"{tag}_local_ids"  # row b*S+s of the gathered rows is token (b, s)
            node.input[2] = f"{tag}_rows"
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    return {
        "word_embeddings": {
            "op": "GatherBlockQuantized",
            "bits": BITS,
            "block_size": block,
            "rows": int(table.shape[0]),
            "fused": any(n.op_type == "EmbedLayerNormalization" for n in readers),
        }
    }


def _gather(quantized: list[str], ids: str, outputs: list[str], block: int, name: str) -> Any:
    from onnx import helper

    data, scales, zero_points = quantized
    return helper.make_node(
        "GatherBlockQuantized",
        [data, ids, scales, zero_points],
        outputs,
        name=f"{name}_q8",
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=block,
        bits=BITS,
    )
