"""``ctxembed export``: BERT-family model → optimized, quantized, validated ONNX model folder.

Needs the ``export`` extra (optimum, transformers, torch). The runtime never imports this package.
"""

from ctxembed.export.errors import ExportError
from ctxembed.export.pipeline import ExportOptions, export_model

__all__ = ["ExportError", "ExportOptions", "export_model"]
