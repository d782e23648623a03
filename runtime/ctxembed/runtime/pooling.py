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


SMALL_UNITS = 64  # up to this many units, index lists beat numpy's per-call overhead


def pool(hidden: np.ndarray, ranges: np.ndarray, method: str) -> np.ndarray:
    """Pool ``hidden`` (n, D) over each token range [start, end) of ``ranges`` (w, 2).

    Ranges must be non-empty. ``first_last`` concatenates, so its width is 2·D.
    """
    if method not in POOLINGS:
        raise ValueError(f"unknown pooling {method!r}")
    if ranges.shape[0] == 0:
        dim = hidden.shape[-1] * (2 if method == "first_last" else 1)
        return np.zeros((0, dim), dtype=hidden.dtype)
    if ranges.shape[0] <= SMALL_UNITS:
        # Few units (most requests): one take() with a plain list costs less than the
        # array arithmetic below, whose fixed per-call overhead dominates at this size.
        spans = ranges.tolist()
        single = all(e - s == 1 for s, e in spans)
        if method == "first" or (single and method != "first_last"):
            return hidden.take([s for s, _ in spans], axis=0)
        if method == "last":
            return hidden.take([e - 1 for _, e in spans], axis=0)
    starts, lasts = ranges[:, 0], ranges[:, 1] - 1
    if method == "first":
        return hidden[starts]
    if method == "last":
        return hidden[lasts]
    if method == "first_last":
        return np.concatenate([hidden[starts], hidden[lasts]], axis=-1)
    lengths = ranges[:, 1] - ranges[:, 0]
    if lengths.max() == 1:  # single-token words: nothing to reduce
        return hidden[starts]
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
