"""Per-word vectors against transformers + PyTorch (word_ids, mean pooling)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ctxembed.runtime import TextInput, WordEmbedder
from ctxembed.runtime.types import LayerCombine

TEXTS = [
    "I live near the bank of America",
    "I sat by the river bank",
    "Contextual embeddings disambiguate antidisestablishmentarianism.",
    "Crème brûlée à Paris coûte 12 €, dit la naïve serveuse.",
    "東京は日本の首都です。",
    "Привет, мир! Это проверка.",
    "ONNX Runtime runs transformer encoders quickly on commodity CPUs, even without a GPU.",
]


def _reference(
    ref: tuple[Any, Any], text: str, layers: list[int] | None = None, combine: str = "mean"
) -> np.ndarray:
    import torch

    model, tokenizer = ref
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    if layers is None:
        hidden = out.last_hidden_state[0].numpy()
    else:
        states = [out.hidden_states[i][0].numpy() for i in layers]
        hidden = np.mean(states, axis=0) if combine == "mean" else np.concatenate(states, -1)
    word_ids = enc.word_ids(0)
    ids = sorted({w for w in word_ids if w is not None})
    return np.stack(
        [hidden[[i for i, w in enumerate(word_ids) if w == wid]].mean(0) for wid in ids]
    )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_fp32_matches_pytorch(fp32_embedder: WordEmbedder, reference: tuple[Any, Any]) -> None:
    for text, res in zip(TEXTS, fp32_embedder.embed(TEXTS)):
        expected = _reference(reference, text)
        assert res.vectors.shape == expected.shape, text
        assert _cosines(res.vectors, expected).min() >= 0.9999, text


def test_int8_meets_the_goal_on_held_out_texts(
    embedder: WordEmbedder, reference: tuple[Any, Any]
) -> None:
    """The int8 goal (word cosine vs PyTorch mean >= 0.995, worst >= 0.98) on held-out texts:
    150 corpus lines, a third non-ASCII, used neither for calibration nor for choosing the
    scheme (see benchmarks/bench_int8.py)."""
    from testkit.fidelity import GOAL, held_out

    assert embedder.session.variant.name == "int8"
    texts = held_out()
    cos = np.concatenate(
        [
            _cosines(res.vectors, _reference(reference, text))
            for text, res in zip(texts, embedder.embed(texts), strict=True)
        ]
    )
    assert cos.mean() >= GOAL["word_mean"] and cos.min() >= GOAL["word_min"], (
        cos.mean(),
        cos.min(),
    )


@pytest.mark.parametrize(("layers", "combine"), [([-1, -2], "mean"), ([0, 3, 6], "concat")])
def test_layer_combination_matches_reference(
    fp32_embedder: WordEmbedder,
    reference: tuple[Any, Any],
    layers: list[int],
    combine: LayerCombine,
) -> None:
    abs_layers = [i % 7 for i in layers]
    for text in TEXTS[:3]:
        [res] = fp32_embedder.embed([text], layers=layers, layer_combine=combine)
        expected = _reference(reference, text, abs_layers, combine)
        assert _cosines(res.vectors, expected).min() >= 0.9999


@pytest.mark.parametrize("fixture", ["embedder", "fp32_embedder"])
def test_bank_senses(fixture: str, request: pytest.FixtureRequest) -> None:
    emb: WordEmbedder = request.getfixturevalue(fixture)
    texts = [
        "I deposited my salary at the bank this morning",
        "The bank approved my mortgage and loan application",
        "We sat on the grassy bank of the river and fished",
    ]
    vecs = [
        r.vectors[0]
        for r in emb.embed(
            [TextInput(text=t, select_words=["bank"]) for t in texts], normalize=True
        )
    ]
    money_money, money_river = float(vecs[0] @ vecs[1]), float(vecs[0] @ vecs[2])
    assert money_money > money_river
