"""The machine's matrix-multiply rate, measured through onnxruntime itself (fp32 and int8), and
its memory bandwidth: the two bounds of the int8 floor ``make bench`` prints.

A single MatMul of transformer-like shape (tokens × hidden × 4·hidden) in a one-node graph; the
int8 figure quantizes that graph the way the export does (dynamic, MatMulInteger).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _matmul_graph(path: Path, m: int, k: int, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.05, (k, n)).astype(np.float32), "W")
    node = helper.make_node("MatMul", ["X", "W"], ["Y"])
    graph = helper.make_graph(
        [node],
        "mm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def matmul_gflops(
    threads: int = 2, m: int = 512, k: int = 768, n: int = 3072, seconds: float = 1.0
) -> dict[str, float]:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ctxembed.export.optimize import detect_cpu_preset

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "mm.onnx", Path(tmp) / "mm_int8.onnx"
        _matmul_graph(fp32, m, k, n)
        # The export's choice for this CPU: signed weights only with VNNI (see optimize.py).
        signed = detect_cpu_preset() in ("avx512_vnni", "arm64")
        quantize_dynamic(
            fp32,
            int8,
            weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        x = np.random.default_rng(1).normal(size=(m, k)).astype(np.float32)
        for name, path in (("fp32", fp32), ("int8", int8)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for _ in range(3):
                session.run(None, {"X": x})
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                session.run(None, {"X": x})
                runs += 1
            elapsed = time.perf_counter() - start
            rates[f"{name}_gflops"] = 2.0 * m * k * n * runs / elapsed / 1e9
    return rates


def memory_gbps(megabytes: int = 256, copies: int = 5) -> float:
    """Memory bandwidth one core sees: a large array copied (read and written) several times."""
    src = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # pages touched before timing
    start = time.perf_counter()
    for _ in range(copies):
        np.copyto(dst, src)
    return 2 * src.nbytes * copies / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    print(matmul_gflops(), memory_gbps())
