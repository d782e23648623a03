"""The word rule (BERT's BasicTokenizer) and the word → token mapping, without a model."""

from __future__ import annotations

import random
import unicodedata

import numpy as np
import pytest
from tokenizers import Tokenizer

from ctxembed.runtime.segmentation import (
    WordSplitter,
    split_words,
    word_splitter,
    word_token_ranges,
)
from testkit.corpus import load_corpus


def _words(text: str, splitter: WordSplitter | None = None) -> list[str]:
    return [text[s:e] for s, e in split_words(text, splitter).tolist()]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "The cricket player oiled his new willow bat.",
            [*["The", "cricket", "player", "oiled", "his", "new", "willow", "bat"], "."],
        ),
        ("東京は日本の首都です。", ["東", "京", "は", "日", "本", "の", "首", "都", "です", "。"]),
        ("rose 3.5% to $1,234", ["rose", "3", ".", "5", "%", "to", "$", "1", ",", "234"]),
        ("a\u00a0b\u3000c\u2009d\te\nf", ["a", "b", "c", "d", "e", "f"]),
        ("zero\u200bwidth \u200bedge\u200b \x00", ["zero\u200bwidth", "edge"]),
        ("cafe\u0301 naïve 🙂x", ["cafe\u0301", "naïve", "🙂x"]),
        ("x\x1cy", ["x\x1cy"]),  # U+001C is a control character for BERT, not a separator
        ("«quoted» — dash… ¿qué?", ["«", "quoted", "»", "—", "dash", "…", "¿", "qué", "?"]),
    ],
)
def test_the_rule(text: str, words: list[str]) -> None:
    assert _words(text) == words


def test_special_tokens_are_words_of_their_own() -> None:
    splitter = word_splitter(("[SEP]", "<mask>"))
    assert _words("before [SEP] x[SEP]y <mask>.", splitter) == [
        "before", "[SEP]", "x", "[SEP]", "y", "<mask>", "."
    ]  # fmt: skip
    assert _words("before [SEP]") == ["before", "[", "SEP", "]"]


def test_ascii_fast_path_equals_the_full_rule() -> None:
    rng = random.Random(0)
    splitter = WordSplitter(("[CLS]",))
    for _ in range(2000):
        text = "".join(chr(rng.randrange(128)) for _ in range(rng.randrange(1, 30)))
        assert [m.span() for m in splitter._ascii.finditer(text)] == [
            m.span() for m in splitter._full.finditer(text)
        ], repr(text)


def test_shared_tokens_and_uncovered_words() -> None:
    # "▁bat." spans both words; "\x00" is covered by no token
    words = np.array([[0, 3], [3, 4], [5, 6], [7, 9]])
    tokens = np.array([[0, 4], [6, 7], [6, 9]])  # word 2 (5, 6) in none; [6, 7) ends at word 3
    assert word_token_ranges(words, tokens).tolist() == [[0, 1], [0, 1], [1, 1], [2, 3]]
    assert word_token_ranges(words, np.zeros((0, 2), dtype=np.int64)).tolist() == [[0, 0]] * 4


def _bert_own_words(tok: Tokenizer, text: str) -> list[tuple[int, int]]:
    """The tokenizer's word spans (word_ids), ends extended over the marks accents lose."""
    enc = tok.encode(text, add_special_tokens=False)
    spans: dict[int, tuple[int, int]] = {}
    for w, (s, e) in zip(enc.word_ids, enc.offsets, strict=True):
        a, b = spans.get(w, (s, e))
        spans[w] = (min(a, s), max(b, e))
    ordered = sorted(spans.values())
    out = []
    for i, (s, e) in enumerate(ordered):
        limit = ordered[i + 1][0] if i + 1 < len(ordered) else len(text)
        while e < limit and unicodedata.category(text[e]).startswith("M"):
            e += 1
        out.append((s, e))
    return out


def test_bert_words_stay_the_tokenizers_own() -> None:
    """Under the embedded BERT model, the rule's words (those with a token) are the words its
    tokenizer made before the rule existed, on the whole corpus and the hard cases."""
    from ctxembed.export.source import embedded_model_dir
    from ctxembed.runtime.tokenization import TextTokenizer

    tok = TextTokenizer.from_file(embedded_model_dir() / "tokenizer.json")
    texts = [
        *load_corpus(),
        "zero\u200bwidth and soft\u00adhyphen, a\x01. b\x00 \x00 c\ufffdd",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters and Ａｒｉａｌ fullwidth [SEP] x[CLS]",
    ]
    for text, tokenized in zip(texts, tok.tokenize_texts(texts), strict=True):
        assert [tuple(s) for s in tokenized.word_chars.tolist()] == _bert_own_words(
            tok._tok, text
        ), text


def test_short_and_long_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short texts take a plain-Python pass, long ones numpy: the same words and tokens."""
    from ctxembed.export.source import embedded_model_dir
    from ctxembed.runtime import tokenization
    from ctxembed.runtime.tokenization import TextTokenizer

    tok = TextTokenizer.from_file(embedded_model_dir() / "tokenizer.json")
    texts = [*load_corpus(500), "a\x00b \x00 c\ufffd, 東京 [SEP]x 🙂 cafe\u0301."]
    short = tok.tokenize_texts(texts)
    monkeypatch.setattr(tokenization, "SMALL_TEXT_TOKENS", -1)
    long = tok.tokenize_texts(texts)
    for a, b in zip(short, long, strict=True):
        assert a.word_tokens.tolist() == b.word_tokens.tolist(), a.text
        assert a.word_chars.tolist() == b.word_chars.tolist(), a.text
