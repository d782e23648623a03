"""Sliding windows over texts longer than the model's maximum number of tokens.

Windows start and end on word boundaries, overlap by ``capacity - stride`` tokens, and every word
takes its vectors from the window where it sits most central (most context on both sides). A text
that fits in one window gets exactly one window: the single-pass result.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowPlan:
    windows: np.ndarray  # (k, 2) content-token ranges [start, end)
    token_window: np.ndarray  # (n,) index of the window each token takes its vector from

    @property
    def count(self) -> int:
        return int(self.windows.shape[0])


def plan_windows(n_tokens: int, word_tokens: np.ndarray, capacity: int, stride: int) -> WindowPlan:
    if capacity < 1 or not 1 <= stride <= capacity:
        raise ValueError(f"need 1 <= stride ({stride}) <= capacity ({capacity})")
    if n_tokens <= capacity:
        return _single_window(n_tokens)
    starts = word_tokens[:, 0] if word_tokens.size else np.zeros(0, dtype=np.int64)
    windows = _cut(n_tokens, starts, capacity, stride)
    return WindowPlan(windows, _assign(n_tokens, word_tokens, windows))


@functools.lru_cache(maxsize=1024)
def _single_window(n_tokens: int) -> WindowPlan:
    """Shared by every text of that length (most texts fit one window), so read-only."""
    windows = np.array([[0, n_tokens]], dtype=np.int64)
    token_window = np.zeros(n_tokens, dtype=np.int64)
    windows.flags.writeable = token_window.flags.writeable = False
    return WindowPlan(windows, token_window)


def _boundary_at_or_before(starts: np.ndarray, pos: int, lower: int) -> int | None:
    """The last word start in (lower, pos], if any."""
    i = int(np.searchsorted(starts, pos, side="right")) - 1
    if i >= 0 and starts[i] > lower:
        return int(starts[i])
    return None


def _cut(n: int, starts: np.ndarray, capacity: int, stride: int) -> np.ndarray:
    windows: list[tuple[int, int]] = []
    s = 0
    while True:
        if s + capacity >= n:
            windows.append((s, n))
            break
        # End on a word start so that no word is cut; a word longer than a window must be cut.
        e = _boundary_at_or_before(starts, s + capacity, s) or s + capacity
        windows.append((s, e))
        nxt = _boundary_at_or_before(starts, min(s + stride, e), s)
        if nxt is None:  # stride shorter than the word at s: start at the next word instead
            after = starts[starts > s]
            nxt = int(after[0]) if after.size and after[0] <= e else e
        s = nxt
    return np.asarray(windows, dtype=np.int64)


def _assign(n: int, word_tokens: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Most central window per word (all its tokens together); per token for cut words."""
    ws, we = windows[:, 0][None, :], windows[:, 1][None, :]
    a, b = word_tokens[:, 0][:, None], word_tokens[:, 1][:, None]
    center = (a + b) / 2.0
    score = np.where((ws <= a) & (b <= we), np.minimum(center - ws, we - center), -np.inf)
    best_word = score.argmax(axis=1)
    token_window = np.repeat(best_word, word_tokens[:, 1] - word_tokens[:, 0])
    cut = np.flatnonzero(np.isneginf(score.max(axis=1)))
    if cut.size:  # words longer than a window: each token on its own
        t = np.arange(n)[:, None]
        tok_score = np.where((ws <= t) & (t < we), np.minimum(t + 0.5 - ws, we - t - 0.5), -np.inf)
        per_token = tok_score.argmax(axis=1)
        for w in cut.tolist():
            lo, hi = int(word_tokens[w, 0]), int(word_tokens[w, 1])
            token_window[lo:hi] = per_token[lo:hi]
    return token_window.astype(np.int64)
