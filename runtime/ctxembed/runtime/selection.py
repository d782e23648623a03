"""Which words a text returns: all its words, the selected words, or the selected spans."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.tokenization import TokenizedText
from ctxembed.runtime.types import CharSpan


@dataclass(frozen=True)
class Selection:
    """The words (or spans) one text returns: token ranges, code-point spans and indices, one
    row each."""

    tokens: np.ndarray  # (u, 2)
    chars: np.ndarray  # (u, 2)
    index: np.ndarray  # (u,)


def all_words(tok: TokenizedText) -> Selection:
    return Selection(tok.word_tokens, tok.word_chars, tok.word_index)


def select_words(
    tok: TokenizedText, wanted: Sequence[str], normalize: Callable[[str], str]
) -> Selection:
    """Every occurrence of the wanted words, compared after the model's normalization."""
    targets = {normalize(w).strip() for w in wanted}
    text = tok.text
    spans = tok.word_chars.tolist()
    keep = [i for i, (s, e) in enumerate(spans) if normalize(text[s:e]) in targets]
    # take() with a plain list: cheaper than building an index array for the few rows kept.
    return Selection(
        tok.word_tokens.take(keep, axis=0),
        tok.word_chars.take(keep, axis=0),
        tok.word_index.take(keep, axis=0),
    )


def select_spans(tok: TokenizedText, spans: Sequence[CharSpan], field: str) -> Selection:
    """One unit per span over the tokens it overlaps; a span over no token is an error."""
    ranges = np.zeros((len(spans), 2), dtype=np.int64)
    for k, span in enumerate(spans):
        overlap = np.flatnonzero((tok.offsets[:, 0] < span.end) & (tok.offsets[:, 1] > span.start))
        if overlap.size == 0:
            raise InvalidInput(
                f"{field}.select_spans[{k}]",
                f"[{span.start}, {span.end}) covers no token of the text",
            )
        ranges[k] = (overlap[0], overlap[-1] + 1)
    chars = np.asarray([(s.start, s.end) for s in spans], dtype=np.int64).reshape(-1, 2)
    return Selection(ranges, chars, np.arange(len(spans), dtype=np.int64))
