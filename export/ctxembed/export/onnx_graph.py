"""Step 2: export the PyTorch model to ONNX through optimum (transformers library mode)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from ctxembed.export.errors import ExportError
from ctxembed.export.source import ModelSource

TASK = "feature-extraction"


def _config_with_hidden_states(source: ModelSource) -> Any:
    """optimum's ONNX config for this model type, with every hidden state as an extra output."""
    from optimum.exporters.tasks import TasksManager

    constructor = TasksManager.get_exporter_config_constructor(
        exporter="onnx",
        model_type=source.config.model_type,
        task=TASK,
        library_name="transformers",
    )
    base = constructor(source.config)
    num_states = num_layers(source.config) + 1  # embeddings output + one per layer

    class WithHiddenStates(type(base)):  # type: ignore[misc]
        @property
        def outputs(self) -> dict[str, dict[int, str]]:
            outputs = dict(super().outputs)
            for i in range(num_states):
                outputs[f"hidden_states.{i}"] = {0: "batch_size", 1: "sequence_length"}
            return outputs

    return WithHiddenStates(source.config, task=TASK)


def num_layers(config: Any) -> int:
    for attr in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(getattr(config, attr, None), int):
            return int(getattr(config, attr))
    raise ExportError(f"cannot tell the number of layers of a {config.model_type!r} model")


def export_onnx(source: ModelSource, out_dir: Path, all_layers: bool, quiet: bool = True) -> Path:
    """Export into ``out_dir``; returns the path of ``model.onnx``."""
    from optimum.exporters.onnx import main_export

    kwargs: dict[str, Any] = {}
    if all_layers:
        kwargs["custom_onnx_configs"] = {"model": _config_with_hidden_states(source)}
        kwargs["model_kwargs"] = {"output_hidden_states": True}
    sink = io.StringIO()
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    # optimum and torch.onnx are chatty; keep their output unless the export fails.
    level = logging.getLogger().level
    try:
        if quiet:
            logging.getLogger().setLevel(logging.ERROR)
            logging.getLogger("optimum").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            main_export(
                source.location,
                output=out_dir,
                task=TASK,
                library_name="transformers",
                revision=source.revision or "main",
                do_validation=False,  # we validate every variant ourselves, more strictly
                **kwargs,
            )
    except Exception as exc:  # optimum raises many types; report one line with its log
        tail = "\n".join(sink.getvalue().strip().splitlines()[-5:])
        raise ExportError(f"optimum could not export {source.description}: {exc}\n{tail}") from exc
    finally:
        logging.getLogger().setLevel(level)
    model = out_dir / "model.onnx"
    if not model.is_file():
        raise ExportError(f"optimum wrote no model.onnx into {out_dir}")
    return model
