"""Stage 1, tokenize: texts → token ids, code-point offsets and word boundaries.

Runs the model's own Rust tokenizer in one ``encode_batch`` call per kind of input. Words are the
tokenizer's pre-tokenizer words (``word_ids``); offsets are Unicode code points of the input.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from ctxembed.runtime.errors import ModelLoadError


@dataclass(frozen=True)
class TokenizedText:
    """One text after tokenization; token arrays cover content tokens only (no specials)."""

    text: str  # the raw text, or the pre-split words joined by single spaces
    ids: np.ndarray  # (n,) int64
    offsets: np.ndarray  # (n, 2) code points into ``text``
    pieces: Sequence[str]  # (n,) token strings
    word_tokens: np.ndarray  # (w, 2) token range [start, end) of each word
    word_chars: np.ndarray  # (w, 2) code-point span of each word
    word_index: np.ndarray  # (w,) position of the word (pre-split: index in the input list)

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])


class TextTokenizer:
    """The model's tokenizer with the special tokens it wraps every sequence in."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        probe = tokenizer.encode("a")
        mask = probe.special_tokens_mask
        first_content = mask.index(0)
        last_content = len(mask) - 1 - mask[::-1].index(0)
        self.prefix_ids: tuple[int, ...] = tuple(probe.ids[:first_content])
        self.suffix_ids: tuple[int, ...] = tuple(probe.ids[last_content + 1 :])
        self._normalizer = tokenizer.normalizer

    @classmethod
    def from_file(cls, path: Path) -> TextTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # the Rust side raises plain Exception
            raise ModelLoadError(f"{path} is not a valid tokenizer.json: {exc}") from None

    @property
    def num_special(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)

    def normalize(self, text: str) -> str:
        """The text as the model sees it (lowercased, accents stripped... per the model)."""
        return self._normalizer.normalize_str(text) if self._normalizer is not None else text

    def tokenize_texts(self, texts: Sequence[str]) -> list[TokenizedText]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=True)
        return [_from_encoding(t, e) for t, e in zip(texts, encodings, strict=False)]

    def tokenize_words(self, word_lists: Sequence[Sequence[str]]) -> list[TokenizedText]:
        encodings = self._tok.encode_batch(
            [list(w) for w in word_lists], is_pretokenized=True, add_special_tokens=True
        )
        return [_from_pretokenized(w, e) for w, e in zip(word_lists, encodings, strict=False)]

    def token_id(self, piece: str) -> int | None:
        return self._tok.token_to_id(piece)


def _content(enc: Encoding) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """ids, offsets, word ids and pieces of the non-special tokens."""
    keep = np.flatnonzero(np.asarray(enc.special_tokens_mask, dtype=np.int8) == 0)
    ids = np.asarray(enc.ids, dtype=np.int64)[keep]
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)[keep]
    word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)[keep]
    tokens = enc.tokens
    pieces = [tokens[i] for i in keep.tolist()]
    return ids, offsets, word_ids, pieces


def _word_starts(word_ids: np.ndarray) -> np.ndarray:
    """Token index where each word begins (words are runs of equal word ids)."""
    if word_ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, word_ids[1:] != word_ids[:-1]])


def _extend_over_marks(text: str, ends: np.ndarray) -> np.ndarray:
    """Extend word ends over combining marks that normalization dropped (e.g. "cafe\\u0301")."""
    out = ends.copy()
    n = len(text)
    for i, end in enumerate(ends.tolist()):
        while end < n and unicodedata.category(text[end]).startswith("M"):
            end += 1
        out[i] = end
    return out


def _from_encoding(text: str, enc: Encoding) -> TokenizedText:
    ids, offsets, word_ids, pieces = _content(enc)
    starts = _word_starts(word_ids)
    ends = np.r_[starts[1:], ids.shape[0]].astype(np.int64)
    word_tokens = np.stack([starts, ends], axis=1) if starts.size else np.zeros((0, 2), np.int64)
    char_start = offsets[starts, 0] if starts.size else np.zeros(0, np.int64)
    char_end = offsets[ends - 1, 1] if starts.size else np.zeros(0, np.int64)
    if not text.isascii():
        char_end = _extend_over_marks(text, char_end)
    word_chars = np.stack([char_start, char_end], axis=1)
    return TokenizedText(
        text, ids, offsets, pieces, word_tokens, word_chars, np.arange(starts.size, dtype=np.int64)
    )


def _from_pretokenized(words: Sequence[str], enc: Encoding) -> TokenizedText:
    ids, offsets, word_ids, pieces = _content(enc)
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    word_begin = np.r_[0, np.cumsum(lengths + 1)[:-1]] if len(words) else lengths
    # Offsets of pre-split input are relative to each word: shift them into the joined text.
    offsets = offsets + word_begin[word_ids][:, None] if ids.size else offsets
    starts = _word_starts(word_ids)
    ends = np.r_[starts[1:], ids.shape[0]].astype(np.int64)
    present = word_ids[starts] if starts.size else np.zeros(0, np.int64)
    word_chars = np.stack([word_begin[present], word_begin[present] + lengths[present]], axis=1)
    word_tokens = np.stack([starts, ends], axis=1) if starts.size else np.zeros((0, 2), np.int64)
    return TokenizedText(" ".join(words), ids, offsets, pieces, word_tokens, word_chars, present)
