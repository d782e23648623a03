"""Word segmentation: one rule for every model family, so words never depend on the tokenizer.

The rule is BERT's BasicTokenizer (what BERT-family tokenizers do before WordPiece):

- whitespace separates words (Rust's ``char::is_whitespace``, as the tokenizers library uses);
- every punctuation character (Unicode category P*, and all ASCII punctuation such as ``$+<=>^`|~``)
  is a word of its own;
- every CJK ideograph is a word of its own;
- characters BERT's text cleaning drops (controls, formats, private-use code points, U+FFFD)
  are not part of a word's edges, though they may sit inside one (unassigned code points, which
  BERT drops too, are left in: testing for them makes every text 3x slower to split);
- the model's special tokens typed in a text (``[SEP]``, ``<mask>``) are words of their own, as
  BasicTokenizer's ``never_split`` keeps them.

Under a BERT model these are the tokenizer's own words (uncased BERT strips a combining mark that
starts a word; here it stays in the word); under SentencePiece or byte-level BPE models too, so
``"bat."`` is the words ``bat`` and ``.``. Each word is then pooled from the
model tokens that overlap its characters (``word_token_ranges``).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Literal, get_args

import numpy as np

WordSegmentation = Literal["bert"]
WORD_SEGMENTATIONS: tuple[WordSegmentation, ...] = get_args(WordSegmentation)
DEFAULT_SEGMENTATION: WordSegmentation = "bert"

# Rust's char::is_whitespace (Unicode White_Space). Python's str.isspace adds U+001C..U+001F,
# which BERT treats as control characters (dropped inside a word, never a separator).
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# BERT's _is_chinese_char: the CJK Unified Ideographs blocks and their compatibility blocks.
_CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff"
    "\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
    "\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f"
)
_ASCII_PUNCT = re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _ranges(codes: list[int]) -> str:
    """A regex character-class body for these code points (sorted), as ranges."""
    parts: list[str] = []
    start = prev = codes[0]
    for c in [*codes[1:], -1]:
        if c != prev + 1:
            last = "" if prev == start else "-" + re.escape(chr(prev))
            parts.append(re.escape(chr(start)) + last)
            start = c
        prev = c
    return "".join(parts)


# The same classes limited to ASCII: most texts are ASCII, and a small class matches 4x faster.
_ASCII_CLASSES = (
    "\t\n\x0b\x0c\r " + _ASCII_PUNCT,
    "\t\n\x0b\x0c\r " + _ASCII_PUNCT + "\x00-\x08\x0e-\x1f\x7f",
    _ASCII_PUNCT,
)


@functools.cache
def _classes() -> tuple[str, str, str]:
    """Separator, edge and isolated classes from this Python's Unicode tables (about 0.3 s)."""
    punct, dropped = [], []
    for code in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(code))
        if cat[0] == "P":
            punct.append(code)
        elif cat in ("Cc", "Cf", "Co", "Cs") or code == 0xFFFD:
            dropped.append(code)
    sep = _WHITESPACE + _ASCII_PUNCT + _ranges(punct) + _CJK
    edge = sep + _ranges(dropped)  # may not start or end a word
    isolated = _ASCII_PUNCT + _ranges(punct) + _CJK
    return sep, edge, isolated


def _compile(keep: str, classes: tuple[str, str, str]) -> re.Pattern[str]:
    sep, edge, isolated = classes
    return re.compile(f"{keep}[^{edge}](?:[^{sep}]*[^{edge}])?|[{isolated}]")


class WordSplitter:
    """The rule for one model (its special tokens match first); ``split_words`` applies it."""

    def __init__(self, specials: tuple[str, ...] = ()) -> None:
        keep = "".join(f"{re.escape(t)}|" for t in sorted(specials, key=len, reverse=True) if t)
        self._ascii = _compile(keep, _ASCII_CLASSES)
        self._full = _compile(keep, _classes())

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return (self._ascii if text.isascii() else self._full).finditer(text)


@functools.cache
def word_splitter(specials: tuple[str, ...] = ()) -> WordSplitter:
    return WordSplitter(specials)


def split_words(text: str, splitter: WordSplitter | None = None) -> np.ndarray:
    """(w, 2) code-point spans [start, end) of the words of ``text``, in order."""
    spans = [m.span() for m in (splitter or word_splitter()).finditer(text)]
    return np.array(spans, dtype=np.int64).reshape(-1, 2)


def word_token_ranges(word_chars: np.ndarray, token_offsets: np.ndarray) -> np.ndarray:
    """(w, 2) range [first, last) of the tokens that overlap each word's characters.

    Tokens are in text order; a token that spans two words (SentencePiece's ``▁bat.``) belongs to
    both. A word no token overlaps (only characters the model's normalizer drops) gets an empty
    range. Leading whitespace in a token's offsets never matters: whitespace is in no word.
    """
    if token_offsets.shape[0] == 0:
        return np.zeros_like(word_chars)
    # Offsets are monotone for every tokenizer we know; the running maximum keeps the binary
    # searches valid even if one is not.
    starts = np.maximum.accumulate(token_offsets[:, 0])
    ends = np.maximum.accumulate(token_offsets[:, 1])
    first = np.searchsorted(ends, word_chars[:, 0], side="right")  # first token ending after start
    last = np.searchsorted(starts, word_chars[:, 1], side="left")  # tokens starting before end
    return np.stack([first, np.maximum(first, last)], axis=1).astype(np.int64)
