"""ctxembed's fused kernels: onnxruntime custom ops for chains of small operators.

The export (``fused_chains.py``) wraps each layer norm of a CPU graph and, in the ``outlier``
int8 scheme (docs/int8.md), each int8 product's quantizing and dequantizing chains as ONNX
functions of the ``ctxembed`` domain, whose bodies are onnxruntime's own operators. onnxruntime
inlines them, unless this library is registered: then each runs as one kernel of
``fused_ops.c`` (the int8 chains bit for bit, the layer norms to float rounding).
``ModelSession`` registers it on the CPU provider where it was built (at install, ``build.py``).
"""

from __future__ import annotations

from pathlib import Path

DOMAIN = "ctxembed"
# The functions the export writes and the library implements, by name.
OPS = (
    "RowQuantize",
    "RowQuantizeOutliers",
    "RowDequantize",
    "RowDequantizeAdd",
    "SkipLayerNorm",
    "SkipLayerNormBias",
)


def library() -> Path | None:
    """The built library, or None where the install had no C compiler."""
    from ctxembed.kernels.build import HERE, library_name  # not at import: `-m ...build` runs it

    path = HERE / library_name()
    return path if path.is_file() else None


def form(path: Path) -> str:
    """Which of the library's forms a session registering it runs here ("avx512", "avx2",
    "scalar"), as the library chooses it: from the CPU, or ``$CTXEMBED_KERNELS_ISA``."""
    import ctypes

    chosen = ctypes.CDLL(str(path)).ctxembed_kernels_form
    chosen.restype = ctypes.c_char_p
    return str(chosen().decode())
