"""Stage 3, pool: token states + token ranges → one vector per word (or span), vectorized."""

from __future__ import annotations

import numpy as np

from ctxembed.runtime.types import POOLINGS


def _gather(hidden: np.ndarray, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w, longest, D) token states per range, padded by repeating the range's last token."""
    lengths = ranges[:, 1] - ranges[:, 0]
    steps = np.arange(int(lengths.max()))[None, :]
    index = np.minimum(ranges[:, :1] + steps, ranges[:, 1:] - 1)
    return hidden[index], steps < lengths[:, None]


def pool(hidden: np.ndarray, ranges: np.ndarray, method: str) -> np.ndarray:
    """Pool ``hidden`` (n, D) over each token range [start, end) of ``ranges`` (w, 2).

    Ranges must be non-empty. ``first_last`` concatenates, so its width is 2·D.
    """
    if method not in POOLINGS:
        raise ValueError(f"unknown pooling {method!r}")
    dim = hidden.shape[-1] * (2 if method == "first_last" else 1)
    if ranges.shape[0] == 0:
        return np.zeros((0, dim), dtype=hidden.dtype)
    if method == "first":
        return hidden[ranges[:, 0]]
    if method == "last":
        return hidden[ranges[:, 1] - 1]
    if method == "first_last":
        return np.concatenate([hidden[ranges[:, 0]], hidden[ranges[:, 1] - 1]], axis=-1)
    lengths = ranges[:, 1] - ranges[:, 0]
    if lengths.max() == 1:  # single-token words: nothing to reduce
        return hidden[ranges[:, 0]]
    gathered, valid = _gather(hidden, ranges)
    if method == "max":
        return gathered.max(axis=1)  # padding repeats a real token, so max is unaffected
    total = (gathered * valid[:, :, None]).sum(axis=1, dtype=np.float32)
    return (total / valid.sum(axis=1, keepdims=True)).astype(hidden.dtype, copy=False)


def combine_layers(states: np.ndarray, how: str) -> np.ndarray:
    """(layers, n, D) → (n, D) by mean, or (n, layers·D) by concatenation."""
    if states.shape[0] == 1:
        return states[0]
    if how == "mean":
        return states.mean(axis=0)
    return np.concatenate(list(states), axis=-1)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
