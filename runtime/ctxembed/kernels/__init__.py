"""ctxembed's fused int8 kernels: onnxruntime custom ops for the ``outlier`` graph's chains.

The ``outlier`` int8 scheme (docs/int8.md) wraps each int8 product's quantizing chain and its
dequantizing chain as ONNX functions of the ``ctxembed`` domain, whose bodies are the standard
operators. onnxruntime inlines them, unless this library is registered: then each chain runs as
one kernel of ``row_int8.c``, with the same results bit for bit. ``ModelSession`` registers it on
the CPU provider where it was built (at install, ``build.py``).
"""

from __future__ import annotations

from pathlib import Path

DOMAIN = "ctxembed"
# The functions the export writes and the library implements, by name.
OPS = ("RowQuantize", "RowQuantizeOutliers", "RowDequantize", "RowDequantizeAdd")


def library() -> Path | None:
    """The built library, or None where the install had no C compiler."""
    from ctxembed.kernels.build import HERE, library_name  # not at import: `-m ...build` runs it

    path = HERE / library_name()
    return path if path.is_file() else None
