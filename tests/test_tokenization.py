"""Words and offsets: code points of the input, for every script."""

from __future__ import annotations

import pytest

from ctxembed.runtime import WordEmbedder

TRICKY = [
    "I live near the bank of America",
    "東京は日本の首都です。北京和上海",
    "Emoji 🙂🎉 and 👩‍👩‍👧 families",
    "café and cafe\u0301 with combining accents, naïve résumé",
    "مرحبا بالعالم والبنك",
    "שלום עולם",
    "non\u00a0breaking\u00a0spaces\tand tabs\nand newlines",
    "don't stop—the co-operative's \"quotes\" (and) [brackets]",
    "zero\u200bwidth and soft\u00adhyphen",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters and Ａｒｉａｌ fullwidth",
]


@pytest.mark.parametrize("text", TRICKY)
def test_word_offsets_are_code_points(embedder: WordEmbedder, text: str) -> None:
    [res] = embedder.embed([text], include_tokens=True)
    assert res.words, text
    assert res.vectors.shape == (len(res.words), 384)
    for i, w in enumerate(res.words):
        assert text[w.start : w.end] == w.text
        assert w.index == i
        assert w.tokens and all(w.start <= t.start <= t.end <= w.end for t in w.tokens)
    starts = [w.start for w in res.words]
    assert starts == sorted(starts)


def test_combining_accent_stays_in_the_word(embedder: WordEmbedder) -> None:
    text = "cafe\u0301 ok"
    [res] = embedder.embed([text])
    assert res.words[0].text == "cafe\u0301"


def test_presplit_offsets_refer_to_joined_words(embedder: WordEmbedder) -> None:
    words = ["New", "York", "embeddings", "東京", "🙂"]
    [res] = embedder.embed([words], include_tokens=True)
    joined = " ".join(words)
    assert [w.text for w in res.words] == words
    assert [w.index for w in res.words] == list(range(5))
    for w in res.words:
        assert joined[w.start : w.end] == w.text
    assert len(res.words[2].tokens) == 4  # em ##bed ##ding ##s
    assert res.words[2].tokens[0].piece == "em"


def test_literal_special_token_is_a_word(embedder: WordEmbedder) -> None:
    # The model's specials wrap each window (added by forward, not in the text's tokens); a
    # literal "[SEP]" typed in a text is one of its words, with its own vector.
    text = "before [SEP] after [CLS]"
    [res] = embedder.embed([text], include_tokens=True)
    assert [w.text for w in res.words] == ["before", "[SEP]", "after", "[CLS]"]
    assert [t.piece for t in res.words[1].tokens] == ["[SEP]"]
    assert text[res.words[3].start : res.words[3].end] == "[CLS]"
    [alone] = embedder.embed(["before"])
    assert alone.num_tokens == 1  # specials are not counted as the text's tokens
