"""Pure-numpy stages against plain-loop references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ctxembed.runtime.pooling import SMALL_UNITS, combine_layers, pool
from ctxembed.runtime.types import POOLINGS
from ctxembed.runtime.windows import plan_windows


def _loop_pool(hidden: np.ndarray, ranges: np.ndarray, method: str) -> np.ndarray:
    out = []
    for s, e in ranges.tolist():
        toks = [hidden[t] for t in range(s, e)]
        if method == "mean":
            out.append(sum(toks) / len(toks))
        elif method == "first":
            out.append(toks[0])
        elif method == "last":
            out.append(toks[-1])
        elif method == "first_last":
            out.append(np.concatenate([toks[0], toks[-1]]))
        else:
            out.append(np.max(np.stack(toks), axis=0))
    return np.stack(out)


@pytest.mark.parametrize("units", [25, SMALL_UNITS + 50])  # the index-list and array paths
@pytest.mark.parametrize("method", POOLINGS)
def test_pool_matches_loop_reference(method: str, units: int) -> None:
    rng = np.random.default_rng(units)
    hidden = rng.normal(size=(40, 16)).astype(np.float32)
    starts = rng.integers(0, 39, size=units)
    ends = np.minimum(starts + rng.integers(1, 6, size=units), 40)
    ranges = np.stack([starts, ends], axis=1)  # overlapping, unsorted, varied lengths
    np.testing.assert_allclose(
        pool(hidden, ranges, method), _loop_pool(hidden, ranges, method), rtol=1e-5, atol=1e-6
    )
    singles = np.stack([np.arange(units) % 40, np.arange(units) % 40 + 1], axis=1)
    np.testing.assert_allclose(
        pool(hidden, singles, method), _loop_pool(hidden, singles, method), rtol=1e-6
    )


def test_pool_empty_and_unknown() -> None:
    hidden = np.ones((3, 4), np.float32)
    assert pool(hidden, np.zeros((0, 2), np.int64), "first_last").shape == (0, 8)
    with pytest.raises(ValueError):
        pool(hidden, np.array([[0, 1]]), "median")


def test_combine_layers() -> None:
    states = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(combine_layers(states, "mean"), (states[0] + states[1]) / 2)
    np.testing.assert_array_equal(
        combine_layers(states, "concat"), np.concatenate([states[0], states[1]], axis=1)
    )


def _words(lengths: list[int]) -> np.ndarray:
    ends = np.cumsum(lengths)
    return np.stack([ends - np.asarray(lengths), ends], axis=1)


def test_short_text_is_one_window() -> None:
    plan = plan_windows(10, _words([3, 3, 4]), capacity=10, stride=5)
    assert plan.count == 1 and plan.windows.tolist() == [[0, 10]]
    assert (plan.token_window == 0).all()


@pytest.mark.parametrize("stride", [1, 7, 16, 30])
def test_windows_cover_everything_and_never_cut_words(stride: int) -> None:
    rng = np.random.default_rng(stride)
    lengths = rng.integers(1, 5, size=120).tolist()
    words = _words(lengths)
    n = int(words[-1, 1])
    plan = plan_windows(n, words, capacity=30, stride=stride)
    w = plan.windows
    assert w[0, 0] == 0 and w[-1, 1] == n
    assert ((w[:, 1] - w[:, 0]) <= 30).all()
    assert (w[1:, 0] <= w[:-1, 1]).all() and (w[1:, 0] > w[:-1, 0]).all()
    starts = set(words[:, 0].tolist()) | {n}
    assert set(w[:, 0].tolist()) <= starts and set(w[:, 1].tolist()) <= starts
    for s, e in words.tolist():
        win = plan.token_window[s:e]
        assert (win == win[0]).all(), "a word takes all its tokens from one window"
        ws, we = w[win[0]]
        assert ws <= s and e <= we
        # most central: no other window containing the word leaves it more context
        c = (s + e) / 2
        best = min(c - ws, we - c)
        for os_, oe in w.tolist():
            if os_ <= s and e <= oe:
                assert min(c - os_, oe - c) <= best + 1e-9


def test_word_longer_than_a_window_is_cut_per_token() -> None:
    words = _words([3, 50, 3])
    plan = plan_windows(56, words, capacity=20, stride=10)
    assert plan.windows[-1, 1] == 56
    for t, win in enumerate(plan.token_window.tolist()):
        s, e = plan.windows[win]
        assert s <= t < e


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_token_has_a_window_with_gaps_and_shared_tokens(seed: int) -> None:
    """Tokens in no word (whitespace pieces) and tokens two words share (SentencePiece's
    "▁bat.") still map to a window that holds them; words sharing a token stay together."""
    rng = np.random.default_rng(seed)
    ranges: list[tuple[int, int]] = []
    t = 0
    for _ in range(150):
        t += int(rng.integers(0, 3))  # 0: shares the previous word's last token; 2: a gap
        length = int(rng.integers(1, 4))
        start = max(0, t - 1) if ranges and rng.random() < 0.2 else t
        ranges.append((start, start + length))
        t = start + length
    words = np.asarray(ranges, dtype=np.int64)
    n = t + 3  # trailing whitespace pieces too
    plan = plan_windows(n, words, capacity=25, stride=12)
    assert plan.token_window.shape == (n,)
    for tok, win in enumerate(plan.token_window.tolist()):
        s, e = plan.windows[win]
        assert s <= tok < e
    for (s1, e1), (s2, e2) in itertools.pairwise(ranges):
        if s2 < e1:  # shared token: both words from one window
            assert len(set(plan.token_window[min(s1, s2) : max(e1, e2)].tolist())) == 1
