"""all-mpnet-base-v2, real base-size weights (make test-slow: a 470 MB download, two exports).

fp32 exports, validates against PyTorch, serves through `ctxembed serve` and gives the model's
own words; the default int8 export picks a scheme that holds on held-out texts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxembed.client import Client
from ctxembed.runtime import TextInput, WordEmbedder
from testkit.servers import ProcessServer

pytestmark = [pytest.mark.slow, pytest.mark.model]

TEXTS = [
    "I live near the bank of America",
    "We had a picnic on the bank of the river.",
    "Contextual embeddings from a base-size encoder, exported to ONNX.",
    "東京は日本の首都です。 Emoji 🙂 and cafe\u0301 nai\u0308ve",
]


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from ctxembed.export import ExportOptions, export_model
    from testkit.mpnet import default_cache, fetch

    source = fetch(default_cache())
    out = tmp_path_factory.mktemp("mpnet") / "all-mpnet-base-v2"
    export_model(ExportOptions(model=str(source), out=out, quantize="none"))
    return source, out


def test_fp32_export_describes_a_base_size_model(mpnet: tuple[Path, Path]) -> None:
    _, out = mpnet
    with WordEmbedder.load(out, provider="cpu") as emb:
        info = emb.info()
    assert (info.model_type, info.dimension, info.num_layers) == ("mpnet", 768, 12)
    assert info.max_tokens_per_window == 512  # 514 positions, numbered from padding_idx + 1
    assert info.precision == "fp32"
    figures = emb.manifest.variant("fp32").validation
    assert figures["token_cosine_min"] >= 0.9999 and figures["word_cosine_min"] >= 0.9999


def test_words_equal_pytorch_and_senses_separate(mpnet: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    source, out = mpnet
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    emb = WordEmbedder.load(out, provider="cpu")
    for text, res in zip(TEXTS, emb.embed(TEXTS), strict=True):
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].numpy()
        word_ids = enc.word_ids(0)  # WordPiece: the tokenizer's words are the served words
        expected = np.stack(
            [
                hidden[[i for i, w in enumerate(word_ids) if w == k]].mean(0)
                for k in sorted({w for w in word_ids if w is not None})
            ]
        )
        assert res.vectors.shape == expected.shape
        cos = (res.vectors * expected).sum(1) / (
            np.linalg.norm(res.vectors, axis=1) * np.linalg.norm(expected, axis=1)
        )
        assert cos.min() >= 0.9999
        assert all(text[w.start : w.end] == w.text for w in res.words)
    cash, rates, river = (
        emb.embed([TextInput(text=t, select_words=["bank"])])[0].vectors[0]
        for t in (
            "She withdrew cash from the bank",
            "The bank raised its interest rates",
            "We had a picnic on the bank of the river",
        )
    )
    assert float(cash @ rates) > float(cash @ river)  # real weights: the money senses are closer


def test_serves_through_the_command(mpnet: tuple[Path, Path]) -> None:
    _, out = mpnet
    server = ProcessServer(out)
    try:
        with Client(server.address) as client:
            info = client.info()
            remote = client.embed(TEXTS)
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    assert "serving all-mpnet-base-v2 (fp32," in log  # int8 absent: fp32 is served
    assert info.model_type == "mpnet" and info.dimension == 768
    local = WordEmbedder.load(out, provider="cpu").embed(TEXTS)
    for r, loc in zip(remote, local, strict=True):
        assert r.words == loc.words
        np.testing.assert_allclose(r.vectors, loc.vectors, rtol=1e-4, atol=1e-4)


def test_int8_holds_on_held_out_texts(mpnet: tuple[Path, Path], tmp_path: Path) -> None:
    """`ctxembed export` (int8 by default) picks a scheme that meets the goal on held-out
    texts: word cosine vs PyTorch mean >= 0.995, worst >= 0.98 (benchmarks/bench_int8.py)."""
    from ctxembed.export.int8_schemes import AUTO_ORDER
    from testkit.fidelity import GOAL, accuracy, held_out, references

    source, _ = mpnet
    out = tmp_path / "int8"
    proc = subprocess.run(
        [sys.executable, "-m", "ctxembed.cli", "export", "--model", str(source), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    emb = WordEmbedder.load(out, provider="cpu")
    quantization = emb.session.variant.quantization or {}
    assert emb.session.variant.name == "int8" and quantization["scheme"] in AUTO_ORDER
    texts = held_out()
    figures = accuracy(emb, texts, references(source, emb, texts))
    assert figures["word_mean"] >= GOAL["word_mean"] and figures["word_min"] >= GOAL["word_min"]
