"""The model folder's ``manifest.json``: the only thing the runtime reads about a model.

``ctxembed export`` writes it; :func:`load_manifest` reads and checks it. Keeping both directions
here means the format is defined once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctxembed.runtime.errors import ModelLoadError
from ctxembed.runtime.segmentation import DEFAULT_SEGMENTATION, WORD_SEGMENTATIONS

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "ctxembed-model"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Variant:
    """One ONNX graph of the model (fp32, int8 for CPU, fp16 for CUDA)."""

    name: str
    file: str
    precision: str  # fp32 | int8 | fp16
    target: str  # cpu | cuda
    sha256: str
    size_bytes: int
    optimization: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def dynamic_activation_scales(self) -> bool:
        """int8 whose activation scales are computed per run over the whole batch, so a row's
        result depends on the rows batched with it (exports before calibration, or
        ``--int8-scheme dynamic``). Calibrated and block-wise activations do not."""
        if self.precision != "int8":
            return False
        return (self.quantization or {}).get("activations", "dynamic") == "dynamic"


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    lowercase: bool
    special_tokens: dict[str, str]
    pad_token_id: int


@dataclass(frozen=True)
class Manifest:
    name: str
    source: dict[str, Any]
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    max_tokens: int
    graph_inputs: list[str]
    # Graph output name per hidden-state index 0..num_layers (0 = embeddings); only the last
    # layer is present for `--layers last` exports.
    layer_outputs: dict[int, str]
    variants: list[Variant]
    tokenizer: TokenizerInfo
    tools: dict[str, str]
    created: str
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    # How raw text is split into words (segmentation.py); folders from before it had none.
    word_segmentation: str = DEFAULT_SEGMENTATION

    @property
    def layers_available(self) -> list[int]:
        return sorted(self.layer_outputs)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_json(self) -> str:
        data = asdict(self)
        data["layer_outputs"] = {str(k): v for k, v in self.layer_outputs.items()}
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            name=data["name"],
            source=dict(data["source"]),
            architecture=data["architecture"],
            model_type=data["model_type"],
            hidden_size=int(data["hidden_size"]),
            num_layers=int(data["num_layers"]),
            max_tokens=int(data["max_tokens"]),
            graph_inputs=list(data["graph_inputs"]),
            layer_outputs={int(k): str(v) for k, v in data["layer_outputs"].items()},
            variants=[Variant(**v) for v in data["variants"]],
            tokenizer=TokenizerInfo(**data["tokenizer"]),
            tools=dict(data["tools"]),
            created=data["created"],
            format=data["format"],
            format_version=int(data["format_version"]),
            word_segmentation=str(data.get("word_segmentation", DEFAULT_SEGMENTATION)),
        )


def load_manifest(model_dir: Path) -> Manifest:
    """Read and check ``model_dir/manifest.json``; every failure is one clear ModelLoadError."""
    path = model_dir / MANIFEST_NAME
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist (run `ctxembed export`)")
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} is not a ctxembed model folder: {MANIFEST_NAME} missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is corrupt: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelLoadError(f"{path} is not a ctxembed manifest (format != {FORMAT_NAME!r})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format_version {version!r}; this ctxembed reads version {FORMAT_VERSION}:"
            " re-export the model with this version of ctxembed"
        )
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is corrupt: missing or bad field {exc}") from None
    if manifest.word_segmentation not in WORD_SEGMENTATIONS:
        raise ModelLoadError(
            f"{path}: word_segmentation {manifest.word_segmentation!r} is not one of"
            f" {list(WORD_SEGMENTATIONS)}: upgrade ctxembed or re-export the model"
        )
    for v in manifest.variants:
        if not (model_dir / v.file).is_file():
            raise ModelLoadError(
                f"{model_dir} is incomplete: variant {v.name!r} file {v.file} missing"
            )
    if not (model_dir / manifest.tokenizer.file).is_file():
        raise ModelLoadError(f"{model_dir} is incomplete: {manifest.tokenizer.file} missing")
    return manifest
