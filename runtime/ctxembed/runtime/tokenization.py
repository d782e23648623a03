"""Stage 1, tokenize: texts → token ids, code-point offsets and words.

Runs the model's own Rust tokenizer (``encode_batch`` for many texts, ``encode`` for a few).
Words of raw text follow one rule for every family (``segmentation.py``) and take the tokens that
overlap them; pre-split words are the caller's. Offsets are code points of the input, and
``text[start:end]`` is always the word.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from ctxembed.runtime.errors import ModelLoadError
from ctxembed.runtime.segmentation import split_words, word_splitter, word_token_ranges

SMALL_TEXT_TOKENS = 128  # up to this, plain Python beats numpy's per-call overhead
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
    word_tokens: np.ndarray  # (w, 2) tokens [start, end) overlapping each word (may share one)
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
        specials = tokenizer.get_added_tokens_decoder().values()
        self.word_splitter = word_splitter(tuple(t.content for t in specials if t.special))
        # Words repeat a lot; normalizing each once keeps select_words cheap.
        self.normalize = functools.lru_cache(maxsize=1 << 16)(self._normalize)
        # Pre-split words must tokenize as they do after a space in running text: byte-level
        # BPE without add_prefix_space would give "had" where running text has "Ġhad".
        self._split_tok = _with_prefix_space(tokenizer) or tokenizer
        # Byte-level BPE and SentencePiece tokens stand for the space before them, and their
        # offsets may start on it: only those need trimming for display.
        probe_text = "a b  c\td"
        self._tokens_hold_spaces = any(
            probe_text[s:e] != probe_text[s:e].lstrip()
            for s, e in self._tok.encode(probe_text, add_special_tokens=False).offsets
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
        # Words come from the text (one rule for every family), tokens from the model; each
        # word takes the tokens that overlap its characters.
        if len(enc) <= SMALL_TEXT_TOKENS:
            return self._from_small_encoding(text, enc)
        offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
        word_chars = split_words(text, self.word_splitter)
        word_tokens = word_token_ranges(word_chars, offsets)
        covered = word_tokens[:, 1] > word_tokens[:, 0]
        if not covered.all():  # only characters the normalizer drops: no vector, left out
            word_tokens, word_chars = word_tokens[covered], word_chars[covered]
        return self._tokenized(text, enc, word_tokens, word_chars, offsets)

    def _from_small_encoding(self, text: str, enc: Encoding) -> TokenizedText:
        """``_from_encoding`` for short texts (most requests) in one Python pass: a dozen numpy
        calls cost more than the work itself at this size. Same result."""
        offsets = enc.offsets
        n = len(offsets)
        bounds: list[int] = []  # token range and code-point span of each word, flat
        k = 0
        for match in self.word_splitter.finditer(text):
            start, end = match.span()
            while k < n and offsets[k][1] <= start:  # tokens that end before the word
                k += 1
            last = k
            while last < n and offsets[last][0] < end:
                last += 1
            if last > k:  # a word no token overlaps is left out
                bounds += (k, last, start, end)
        table = np.array(bounds, dtype=np.int64).reshape(-1, 4)
        return self._tokenized(text, enc, table[:, :2], table[:, 2:], None)

    def _tokenized(
        self,
        text: str,
        enc: Encoding,
        word_tokens: np.ndarray,
        word_chars: np.ndarray,
        offsets: np.ndarray | None,
    ) -> TokenizedText:
        return TokenizedText(
            text,
            len(enc),
            self._frame(enc.ids),
            word_tokens,
            word_chars,
            _arange(word_tokens.shape[0]),
            enc,
            len(self.prefix_ids),
            None if self._tokens_hold_spaces else offsets,  # else made and trimmed on demand
            self._tokens_hold_spaces,
        )

    def _from_pretokenized(self, words: Sequence[str], enc: Encoding) -> TokenizedText:
        # The tokenizer says which tokens are each word's (its offsets are not reliable here:
        # byte-level BPE with an added prefix space shifts them).
        word_ids = self._word_ids(enc)
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        begin = np.zeros_like(lengths)
        np.cumsum(lengths[:-1] + 1, out=begin[1:])
        # Offsets of pre-split input are relative to each word: shift them into the joined text.
        offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2) + begin[word_ids][:, None]
        word_tokens = _word_ranges(word_ids)
        self._skip_space_pieces(enc.tokens, word_tokens)
        present = word_ids[word_tokens[:, 0]]
        word_chars = np.empty_like(word_tokens)
        word_chars[:, 0] = begin[present]
        word_chars[:, 1] = begin[present] + lengths[present]
        joined = " ".join(words)
        if self._tokens_hold_spaces:
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

    def _skip_space_pieces(self, pieces: Sequence[str], word_tokens: np.ndarray) -> None:
        """Drop (in place) a word's leading piece that only stands for the space before it
        (SentencePiece's lone "▁"): in running text it overlaps no word, so no word has it."""
        if not self._tokens_hold_spaces:
            return
        for k, (s, e) in enumerate(word_tokens.tolist()):
            if e - s > 1 and not pieces[s].strip("▁Ġ"):
                word_tokens[k, 0] = s + 1


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


def _trim_token_starts(text: str, offsets: np.ndarray) -> None:
    """Token offsets (in place) without the leading whitespace a "▁" or "Ġ" token stands for."""
    for k, (s, e) in enumerate(offsets.tolist()):
        start = s
        while start < e and text[start].isspace():
            start += 1
        if start != s:
            offsets[k, 0] = start


@functools.lru_cache(maxsize=1024)
def _arange(n: int) -> np.ndarray:
    """0..n-1, shared read-only by every text with n words."""
    index = np.arange(n, dtype=np.int64)
    index.flags.writeable = False
    return index


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
