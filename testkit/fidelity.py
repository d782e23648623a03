"""Fidelity against PyTorch on held-out text: what the int8 benchmark and the tests both measure.

The held-out lines were used neither for calibration, nor for choosing a scheme, nor while the
schemes were designed (see ``benchmarks/bench_int8.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from testkit.corpus import load_corpus

# The int8 goal: per-word cosine mean and worst against PyTorch fp32; speed against dynamic int8.
GOAL = {"word_mean": 0.995, "word_min": 0.98, "speed_ratio": 0.85}


def held_out(count: int = 150, start: int = 4000) -> list[str]:
    """``count`` corpus lines from ``start``: two thirds ASCII, one third not, in corpus order."""
    lines = load_corpus(start=start)
    other = [t for t in lines if not t.isascii()][: count // 3]
    plain = [t for t in lines if t.isascii()][: count - len(other)]
    return plain + other


def references(source: Path, embedder: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """PyTorch fp32 word vectors: its last hidden state on ctxembed's own token ids, pooled
    over each word's tokens (the tokenizer itself is tested against transformers elsewhere)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source).eval()
    out = []
    for text in texts:
        prepared = embedder.prepare([text]).texts[0]
        ids = torch.tensor(prepared.tokens.framed_ids[None, :], dtype=torch.long)
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        states = hidden.last_hidden_state[0].numpy()
        p = prepared.tokens.num_prefix
        out.append(np.stack([states[p + s : p + e].mean(0) for s, e in prepared.selection.tokens]))
    return out


def accuracy(embedder: Any, texts: Sequence[str], refs: Sequence[np.ndarray]) -> dict[str, float]:
    cosines = []
    for text, ref in zip(texts, refs, strict=True):
        vectors = embedder.embed([text])[0].vectors
        den = np.linalg.norm(vectors, axis=1) * np.linalg.norm(ref, axis=1)
        cosines.append((vectors * ref).sum(1) / den)
    c = np.concatenate(cosines)
    return {"word_mean": float(c.mean()), "word_min": float(c.min()), "words": int(c.size)}
