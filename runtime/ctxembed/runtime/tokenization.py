"""Stage 1, tokenize: texts → token ids, code-point offsets and word boundaries.

Runs the model's own Rust tokenizer (``encode_batch`` for many texts, ``encode`` for a few).
Words are the tokenizer's pre-tokenizer words (``word_ids``); offsets are code points of the input.
Tokenizers that keep the space inside a token (SentencePiece's "▁", byte-level BPE's "Ġ") give
words whose spans start with that space, and whitespace-only words: their spans are trimmed to
the word itself and the whitespace-only ones dropped, so ``text[start:end]`` is always the word.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from ctxembed.runtime.errors import ModelLoadError

SMALL_TEXT_TOKENS = 128  # below this, plain Python beats numpy's per-call overhead
# Below this many texts, one ``encode`` per text beats ``encode_batch``: waking the Rust thread
# pool costs more than its parallelism gives back for a few short texts.
PARALLEL_MIN_TEXTS = 8


@dataclass  # not frozen: built for every text of every request, and a frozen init costs 2×
class TokenizedText:
    """One text after tokenization; token arrays cover content tokens only (no specials).

    Token offsets and strings are made on demand: only spans and ``include_tokens`` need them.
    """

    text: str  # the raw text, or the pre-split words joined by single spaces
    num_tokens: int  # n
    framed_ids: np.ndarray  # (n + specials,) int64: the ids wrapped in the model's specials
    word_tokens: np.ndarray  # (w, 2) token range [start, end) of each word
    word_chars: np.ndarray  # (w, 2) code-point span of each word
    word_index: np.ndarray  # (w,) position of the word (pre-split: index in the input list)
    encoding: Encoding  # the tokenizer's output
    num_prefix: int  # special tokens before the content in ``framed_ids``
    token_offsets: np.ndarray | None = None  # (n, 2) once computed (pre-split input: shifted)
    trim_tokens: bool = False  # token offsets may start with the space the token stands for

    @property
    def offsets(self) -> np.ndarray:
        """(n, 2) code points of each token into ``text`` (without a leading space)."""
        if self.token_offsets is None:
            offsets = np.array(self.encoding.offsets, dtype=np.int64).reshape(-1, 2)
            if self.trim_tokens:
                _trim_token_starts(self.text, offsets)
            self.token_offsets = offsets
        return self.token_offsets

    @property
    def ids(self) -> np.ndarray:
        """(n,) int64 ids of the content tokens (a view into ``framed_ids``)."""
        return self.framed_ids[self.num_prefix : self.num_prefix + self.num_tokens]

    @functools.cached_property
    def pieces(self) -> Sequence[str]:
        """(n,) token strings."""
        return self.encoding.tokens


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
        # Pre-split words must tokenize as they do after a space in running text: byte-level
        # BPE without add_prefix_space would give "had" where running text has "Ġhad".
        self._split_tok = _with_prefix_space(tokenizer) or tokenizer
        self._spaces_in_words = any(
            _has_space_edges(t, self._tok.encode(t, add_special_tokens=False))
            for t in ("a b", "  a\tb  c", " a")
        )

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

    # Specials are not asked of the tokenizer: ``forward`` wraps every window in them itself,
    # so every token of an encoding is content (a literal "[SEP]" in a text is a word, as
    # with the post-processor on), and the post-processor and the slicing are saved.
    def tokenize_texts(self, texts: Sequence[str]) -> list[TokenizedText]:
        if len(texts) < PARALLEL_MIN_TEXTS:
            encodings = [self._tok.encode(t, add_special_tokens=False) for t in texts]
        else:
            encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._from_encoding(t, e) for t, e in zip(texts, encodings)]

    def tokenize_words(self, word_lists: Sequence[Sequence[str]]) -> list[TokenizedText]:
        lists = [list(w) for w in word_lists]
        if len(lists) < PARALLEL_MIN_TEXTS:
            encodings = [
                self._split_tok.encode(w, is_pretokenized=True, add_special_tokens=False)
                for w in lists
            ]
        else:
            encodings = self._split_tok.encode_batch(
                lists, is_pretokenized=True, add_special_tokens=False
            )
        return [self._from_pretokenized(w, e) for w, e in zip(word_lists, encodings)]

    def _frame(self, ids: list[int]) -> np.ndarray:
        return np.array((*self.prefix_ids, *ids, *self.suffix_ids), dtype=np.int64)

    @staticmethod
    def _word_ids(enc: Encoding) -> np.ndarray:
        words = enc.word_ids
        if None in words:
            words = [-1 if w is None else w for w in words]
        return np.array(words, dtype=np.int64)

    def _from_encoding(self, text: str, enc: Encoding) -> TokenizedText:
        if len(enc) <= SMALL_TEXT_TOKENS:
            return self._from_small_encoding(text, enc)
        offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
        word_tokens = _word_ranges(self._word_ids(enc))
        word_chars = np.empty_like(word_tokens)
        word_chars[:, 0] = offsets[word_tokens[:, 0], 0]
        word_chars[:, 1] = offsets[word_tokens[:, 1] - 1, 1]
        if self._spaces_in_words:
            word_tokens, word_chars = _strip_spaces(text, word_tokens, word_chars)
            _trim_token_starts(text, offsets)
        if not text.isascii():
            _extend_over_marks(text, word_chars)
        index = np.arange(word_tokens.shape[0], dtype=np.int64)
        return TokenizedText(
            text,
            offsets.shape[0],
            self._frame(enc.ids),
            word_tokens,
            word_chars,
            index,
            enc,
            len(self.prefix_ids),
            offsets,
            self._spaces_in_words,
        )

    def _from_small_encoding(self, text: str, enc: Encoding) -> TokenizedText:
        """Short texts (most requests): one Python pass and two numpy calls instead of a
        dozen, which cost more than the work itself at this size (and more so right after an
        ONNX run has evicted the caches)."""
        offsets = enc.offsets
        words = enc.word_ids
        # token range, code-point span and index of each word, flat (numpy converts a flat
        # list twice as fast as a list of tuples)
        bounds: list[int] = []
        start = count = 0
        for k in range(1, len(words) + 1):
            if k == len(words) or words[k] != words[start]:
                bounds += (start, k, offsets[start][0], offsets[k - 1][1], count)
                start = k
                count += 1
        table = np.array(bounds, dtype=np.int64).reshape(-1, 5)
        word_tokens, word_chars, index = table[:, :2], table[:, 2:4], table[:, 4]
        if self._spaces_in_words:
            word_tokens, word_chars = _strip_spaces(text, word_tokens, word_chars)
            index = np.arange(word_tokens.shape[0], dtype=np.int64)
        if not text.isascii():
            _extend_over_marks(text, word_chars)
        return TokenizedText(
            text,
            len(words),
            self._frame(enc.ids),
            word_tokens,
            word_chars,
            index,
            enc,
            len(self.prefix_ids),
            None,
            self._spaces_in_words,
        )

    def _from_pretokenized(self, words: Sequence[str], enc: Encoding) -> TokenizedText:
        word_ids = self._word_ids(enc)
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        begin = np.zeros_like(lengths)
        np.cumsum(lengths[:-1] + 1, out=begin[1:])
        # Offsets of pre-split input are relative to each word: shift them into the joined text.
        offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2) + begin[word_ids][:, None]
        word_tokens = _word_ranges(word_ids)
        present = word_ids[word_tokens[:, 0]]
        word_chars = np.empty_like(word_tokens)
        word_chars[:, 0] = begin[present]
        word_chars[:, 1] = begin[present] + lengths[present]
        joined = " ".join(words)
        if self._spaces_in_words:
            _trim_token_starts(joined, offsets)
        return TokenizedText(
            joined,
            offsets.shape[0],
            self._frame(enc.ids),
            word_tokens,
            word_chars,
            present,
            enc,
            len(self.prefix_ids),
            offsets,
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


def _extend_over_marks(text: str, chars: np.ndarray) -> None:
    """Extend word ends (in place) over combining marks that normalization dropped (BERT's
    accent stripping), never into the next word (byte-level BPE makes a mark a word)."""
    spans = chars.tolist()
    for i, (_, end) in enumerate(spans):
        limit = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        while end < limit and unicodedata.category(text[end]).startswith("M"):
            end += 1
        chars[i, 1] = end


def _has_space_edges(text: str, enc: Encoding) -> bool:
    """Whether a word of ``enc`` is empty or starts or ends with whitespace."""
    words = _word_ranges(TextTokenizer._word_ids(enc))
    offsets = enc.offsets
    for s, e in words.tolist():
        span = text[offsets[s][0] : offsets[e - 1][1]]
        if not span or span != span.strip():
            return True
    return False


def _strip_spaces(
    text: str, word_tokens: np.ndarray, word_chars: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Word spans without leading or trailing whitespace; whitespace-only words dropped (their
    tokens stand for spaces, which belong to no word)."""
    keep, chars = [], []
    for k, (s, e) in enumerate(word_chars.tolist()):
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            keep.append(k)
            chars.append((s, e))
    spans = np.array(chars, dtype=np.int64).reshape(-1, 2)
    return word_tokens.take(keep, axis=0), spans


def _trim_token_starts(text: str, offsets: np.ndarray) -> None:
    """Token offsets (in place) without the leading whitespace a "▁" or "Ġ" token stands for."""
    for k, (s, e) in enumerate(offsets.tolist()):
        start = s
        while start < e and text[start].isspace():
            start += 1
        if start != s:
            offsets[k, 0] = start


def _with_prefix_space(tokenizer: Tokenizer) -> Tokenizer | None:
    """A copy whose byte-level pre-tokenizer adds a prefix space, or None if nothing changes."""
    spec = json.loads(tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    changed = False
    for part in [pre, *pre.get("pretokenizers", [])]:
        if part.get("type") == "ByteLevel" and not part.get("add_prefix_space"):
            part["add_prefix_space"] = True
            changed = True
    return Tokenizer.from_str(json.dumps(spec)) if changed else None
