"""Stage 1, tokenize: texts → token ids, code-point offsets and word boundaries.

Runs the model's own Rust tokenizer in one ``encode_batch`` call per kind of input. Words are the
tokenizer's pre-tokenizer words (``word_ids``); offsets are Unicode code points of the input.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from ctxembed.runtime.errors import ModelLoadError

SMALL_TEXT_TOKENS = 128  # below this, plain Python beats numpy's per-call overhead


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
        # Words repeat a lot; normalizing each once keeps select_words cheap.
        self.normalize = functools.lru_cache(maxsize=1 << 16)(self._normalize)

    @classmethod
    def from_file(cls, path: Path) -> TextTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # the Rust side raises plain Exception
            raise ModelLoadError(f"{path} is not a valid tokenizer.json: {exc}") from None

    @property
    def num_special(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)

    def _normalize(self, text: str) -> str:
        """The text as the model sees it (lowercased, accents stripped... per the model)."""
        return self._normalizer.normalize_str(text) if self._normalizer is not None else text

    def tokenize_texts(self, texts: Sequence[str]) -> list[TokenizedText]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=True)
        return [self._from_encoding(t, e) for t, e in zip(texts, encodings)]

    def tokenize_words(self, word_lists: Sequence[Sequence[str]]) -> list[TokenizedText]:
        encodings = self._tok.encode_batch(
            [list(w) for w in word_lists], is_pretokenized=True, add_special_tokens=True
        )
        return [self._from_pretokenized(w, e) for w, e in zip(word_lists, encodings)]

    def _content(self, enc: Encoding) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """ids, offsets, word ids and pieces of the non-special tokens."""
        mask = enc.special_tokens_mask
        lo, hi = len(self.prefix_ids), len(mask) - len(self.suffix_ids)
        if self._usual_layout(mask):
            # The usual layout, specials only around the text: plain slices, no fancy indexing.
            ids = np.array(enc.ids[lo:hi], dtype=np.int64)
            offsets = np.array(enc.offsets[lo:hi], dtype=np.int64).reshape(-1, 2)
            words = enc.word_ids[lo:hi]
            if None in words:
                words = [-1 if w is None else w for w in words]
            word_ids = np.array(words, dtype=np.int64)
            return ids, offsets, word_ids, enc.tokens[lo:hi]
        keep = np.flatnonzero(np.asarray(mask, dtype=np.int8) == 0)
        ids = np.asarray(enc.ids, dtype=np.int64)[keep]
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)[keep]
        word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)[keep]
        tokens = enc.tokens
        return ids, offsets, word_ids, [tokens[i] for i in keep.tolist()]

    def _usual_layout(self, mask: list[int]) -> bool:
        """Special tokens only around the text (not inside it, as a literal "[SEP]" would be)."""
        lo, hi = len(self.prefix_ids), len(mask) - len(self.suffix_ids)
        return sum(mask) == self.num_special and all(mask[:lo]) and all(mask[hi:])

    def _from_encoding(self, text: str, enc: Encoding) -> TokenizedText:
        mask = enc.special_tokens_mask
        if len(mask) <= SMALL_TEXT_TOKENS and self._usual_layout(mask):
            return self._from_small_encoding(text, enc, len(mask))
        ids, offsets, word_ids, pieces = self._content(enc)
        word_tokens = _word_ranges(word_ids)
        word_chars = np.empty_like(word_tokens)
        word_chars[:, 0] = offsets[word_tokens[:, 0], 0]
        word_chars[:, 1] = offsets[word_tokens[:, 1] - 1, 1]
        if not text.isascii():
            _extend_over_marks(text, word_chars[:, 1])
        index = np.arange(word_tokens.shape[0], dtype=np.int64)
        return TokenizedText(text, ids, offsets, pieces, word_tokens, word_chars, index)

    def _from_small_encoding(self, text: str, enc: Encoding, total: int) -> TokenizedText:
        """Short texts (most requests): one Python pass instead of a dozen small numpy calls,
        which cost more than the work itself at this size."""
        lo, hi = len(self.prefix_ids), total - len(self.suffix_ids)
        offsets = enc.offsets[lo:hi]
        words = enc.word_ids[lo:hi]
        ranges: list[tuple[int, int]] = []
        chars: list[tuple[int, int]] = []
        start = 0
        for k in range(1, len(words) + 1):
            if k == len(words) or words[k] != words[start]:
                ranges.append((start, k))
                chars.append((offsets[start][0], offsets[k - 1][1]))
                start = k
        word_chars = np.array(chars, dtype=np.int64).reshape(-1, 2)
        if not text.isascii():
            _extend_over_marks(text, word_chars[:, 1])
        return TokenizedText(
            text,
            np.array(enc.ids[lo:hi], dtype=np.int64),
            np.array(offsets, dtype=np.int64).reshape(-1, 2),
            enc.tokens[lo:hi],
            np.array(ranges, dtype=np.int64).reshape(-1, 2),
            word_chars,
            np.arange(len(ranges), dtype=np.int64),
        )

    def _from_pretokenized(self, words: Sequence[str], enc: Encoding) -> TokenizedText:
        ids, offsets, word_ids, pieces = self._content(enc)
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        begin = np.zeros_like(lengths)
        np.cumsum(lengths[:-1] + 1, out=begin[1:])
        # Offsets of pre-split input are relative to each word: shift them into the joined text.
        offsets = offsets + begin[word_ids][:, None]
        word_tokens = _word_ranges(word_ids)
        present = word_ids[word_tokens[:, 0]]
        word_chars = np.empty_like(word_tokens)
        word_chars[:, 0] = begin[present]
        word_chars[:, 1] = begin[present] + lengths[present]
        return TokenizedText(
            " ".join(words), ids, offsets, pieces, word_tokens, word_chars, present
        )


def _word_ranges(word_ids: np.ndarray) -> np.ndarray:
    """(w, 2) token range of each word; words are runs of equal word ids."""
    n = word_ids.shape[0]
    change = np.empty(n, dtype=bool)
    if n:
        change[0] = True
        np.not_equal(word_ids[1:], word_ids[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    ranges = np.empty((starts.shape[0], 2), dtype=np.int64)
    ranges[:, 0] = starts
    ranges[:-1, 1] = starts[1:]
    if starts.shape[0]:
        ranges[-1, 1] = n
    return ranges


def _extend_over_marks(text: str, ends: np.ndarray) -> None:
    """Extend word ends (in place) over combining marks that normalization dropped."""
    n = len(text)
    for i, end in enumerate(ends.tolist()):
        while end < n and unicodedata.category(text[end]).startswith("M"):
            end += 1
        ends[i] = end
