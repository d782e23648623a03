"""Sliding windows over texts longer than the model's maximum number of tokens.

Windows start and end on word boundaries, overlap by ``capacity - stride`` tokens, and every word
takes its vectors from the window where it sits most central (most context on both sides). Words
that share a token (SentencePiece's ``▁bat.`` is in ``bat`` and ``.``) are placed together, and
tokens in no word (whitespace pieces) take their own most central window, so every token has one.
A text that fits in one window gets exactly one window: the single-pass result.
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
    groups = _groups(word_tokens)
    windows = _cut(n_tokens, groups[:, 0], capacity, stride)
    return WindowPlan(windows, _assign(n_tokens, groups, windows))


def _groups(word_tokens: np.ndarray) -> np.ndarray:
    """(g, 2) token ranges of words merged where they share tokens; words in text order."""
    ranges = word_tokens[word_tokens[:, 1] > word_tokens[:, 0]]
    if ranges.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ends = np.maximum.accumulate(ranges[:, 1])
    new = np.empty(ranges.shape[0], dtype=bool)
    new[0] = True
    np.greater_equal(ranges[1:, 0], ends[:-1], out=new[1:])
    first = np.flatnonzero(new)
    last = np.append(first[1:], ranges.shape[0]) - 1
    return np.stack([ranges[first, 0], ends[last]], axis=1)


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


def _assign(n: int, groups: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The window each token takes its state from: per token the most central window, then
    per word group (all its tokens together) the window where the group is most central."""
    token_window = _central_per_token(n, windows)
    if groups.shape[0] == 0:
        return token_window
    ws, we = windows[:, 0], windows[:, 1]
    a, b = groups[:, 0], groups[:, 1]
    center = (a + b) / 2.0
    # Windows are sorted by start and by end: those holding [a, b) are a contiguous run.
    lo = np.searchsorted(we, b, side="left")  # first window ending at or after b
    hi = np.searchsorted(ws, a, side="right")  # windows before hi start at or before a
    best = np.full(a.shape[0], -1, dtype=np.int64)
    best_score = np.full(a.shape[0], -np.inf)
    for step in range(int(np.max(hi - lo, initial=0))):
        k = lo + step
        inside = k < hi
        kc = np.minimum(k, ws.shape[0] - 1)
        score = np.where(inside, np.minimum(center - ws[kc], we[kc] - center), -np.inf)
        better = score > best_score  # strict: ties go to the earlier window
        best[better], best_score[better] = kc[better], score[better]
    whole = best >= 0  # groups longer than a window keep their per-token windows
    a, b, best = a[whole], b[whole], best[whole]
    lengths = b - a
    positions = np.arange(int(lengths.sum())) + np.repeat(a - np.cumsum(lengths) + lengths, lengths)
    token_window[positions] = np.repeat(best, lengths)
    return token_window


def _central_per_token(n: int, windows: np.ndarray) -> np.ndarray:
    """For each token, the window with most context on both sides (windows cover 0..n)."""
    best = np.full(n, -np.inf)
    token_window = np.zeros(n, dtype=np.int64)
    middle = np.arange(n) + 0.5
    for k, (s, e) in enumerate(windows.tolist()):
        score = np.minimum(middle[s:e] - s, e - middle[s:e])
        better = score > best[s:e]
        best[s:e][better] = score[better]
        token_window[s:e][better] = k
    return token_window
