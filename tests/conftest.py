"""Shared fixtures: the embedded model exported once per test session, and a tiny local model.

Tests that use an exported or PyTorch model get the ``model`` marker automatically, so that
``make test-fast`` (``-m "not model and not slow"``) runs the rest in seconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctxembed.runtime import WordEmbedder

MODEL_FIXTURES = {
    "model_dir",
    "embedder",
    "fp32_embedder",
    "reference",
    "tiny_source",
    "outlier_export",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 exported with every layer: fp32 and int8 variants (int8 embedding table,
    as `make export` makes it). The scheme is named rather than searched: ``auto`` would build and
    reject ``smooth`` first (6 s of every run); its search is tested on its own in test_export."""
    from ctxembed.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2"
    export_model(ExportOptions(out=out, layers="all", int8_embeddings=True, int8_scheme="outlier"))
    return out


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> WordEmbedder:
    return WordEmbedder.load(model_dir, provider="cpu")


@pytest.fixture(scope="session")
def fp32_embedder(model_dir: Path) -> WordEmbedder:
    return WordEmbedder.load(model_dir, provider="cpu", variant="fp32")


@pytest.fixture(scope="session")
def reference() -> tuple[Any, Any]:
    """The PyTorch model and tokenizer the export started from."""
    from transformers import AutoModel, AutoTokenizer

    from ctxembed.export.source import embedded_model_dir

    path = embedded_model_dir()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small BERT with random weights in a local folder: the non-default export path."""
    import torch
    from transformers import BertConfig, BertModel

    from ctxembed.export.source import embedded_model_dir

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    config = BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        initializer_range=0.2,
    )  # larger weights: int8 error is visible
    BertModel(config).eval().save_pretrained(folder)
    src = embedded_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    yield folder


@pytest.fixture(scope="session")
def outlier_export(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with the ``outlier`` int8 scheme (lenient thresholds)."""
    from ctxembed.cli import main

    out = tmp_path_factory.mktemp("outlier") / "tiny"
    args = ["export", "--model", str(tiny_source), "--out", str(out), "--int8-scheme", "outlier"]
    assert main([*args, "--int8-word-mean", "0.9", "--int8-word-min", "0.5"]) == 0
    return out
