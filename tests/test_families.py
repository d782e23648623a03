"""Every supported family, end to end, on a tiny local model of it (``families.py``).

Each family is built and exported once per run (fp32, validated against PyTorch by the export),
then: exact code-point offsets on hard text, words and vectors equal to the PyTorch model's token
states pooled the same way, pre-split words tokenized as in running text, select_words and
select_spans, long texts in windows, and the model served over gRPC. Random weights: these check
plumbing and offsets, never accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from families import FAMILIES, MAX_TOKENS, Family, build_family

from ctxembed.client import Client
from ctxembed.runtime import CharSpan, TextInput, WordEmbedder
from ctxembed.runtime.segmentation import split_words
from testkit.servers import ThreadServer

pytestmark = pytest.mark.model

TRICKY = [
    "We had a picnic on the bank of the river.",
    "The Bank said the bank of the river is not a BANK.",
    "東京は日本の首都です。北京也是首都。",
    "Emoji 🙂 in 🎉 the 👩‍👩‍👧 middle",
    "Combining acce\u0301nts: cafe\u0301 and nai\u0308ve",
    "עברית וערבית: مرحبا بالعالم and English",
    "tabs\tand\nnewlines  and  double  spaces and\u00a0non-breaking\u2009thin",
    "  leading and trailing spaces  ",
    "hyphen-ated, punctuation!!! (brackets) [x] {y} co-operate's",
]

# Words must not depend on the tokenizer: CJK, emoji, combining marks, RTL, URLs, code, numbers.
HARD = [
    "東京は日本の首都です。北京也是首都。",
    "Emoji 🙂 in 🎉 the 👩‍👩‍👧 middle, and 🇫🇷 flags!",
    "Combining acce\u0301nts: cafe\u0301 and nai\u0308ve; Crème brûlée.",
    "עברית וערבית: مرحبا بالعالم، and English.",
    "See https://example.com/a/b?q=1&r=2#frag or mail bob@example.org.",
    "def f(x: int) -> list[str]: return [s.strip() for s in x.split(',')]  # ok",
    "Prices rose 3.5% to $1,234.56 (vs. 2.1% in Q3'24), i.e. ~+1.4pp.",
    "The cricket player oiled his new willow bat.",
]
LONG_TEXTS = [
    "The bank by the river  had   high fees,\n\nand the  money  was gone. " * 60,
    "A\tbank\u00a0\u00a0loan  was\t\tdenied;  the   clerk\u00a0smiled.\n" * 70,
]


class Exported(NamedTuple):
    family: Family
    source: Path
    embedder: WordEmbedder
    model: Any  # the PyTorch model
    hf_tokenizer: Any


@pytest.fixture(scope="session", params=FAMILIES, ids=[f.name for f in FAMILIES])
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exported]:
    from transformers import AutoModel, AutoTokenizer

    from ctxembed.export import ExportOptions, export_model

    family: Family = request.param
    root = tmp_path_factory.mktemp(family.name)
    source = build_family(family, root / "source")
    export_model(ExportOptions(model=str(source), out=root / "out", quantize="none"))
    with WordEmbedder.load(root / "out", provider="cpu", variant="fp32") as emb:
        yield Exported(
            family,
            source,
            emb,
            AutoModel.from_pretrained(source).eval(),
            AutoTokenizer.from_pretrained(source),
        )


def _reference(exported: Exported, framed_ids: np.ndarray) -> np.ndarray:
    """The PyTorch model's last hidden state for these ids (specials included)."""
    import torch

    ids = torch.tensor(framed_ids[None, :], dtype=torch.long)
    with torch.no_grad():
        out = exported.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return np.asarray(out.last_hidden_state[0].numpy())


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))


def test_export_validates_against_pytorch(exported: Exported) -> None:
    manifest = exported.embedder.manifest
    assert manifest.model_type == exported.family.model_type
    figures = manifest.variant("fp32").validation
    assert figures["passed"] and figures["token_cosine_min"] >= 0.9999
    assert figures["word_cosine_min"] >= 0.9999
    assert manifest.max_tokens == MAX_TOKENS
    assert manifest.tokenizer.lowercase == exported.family.lowercase
    facts = manifest.variant("fp32").optimization
    if exported.family.model_type == "mpnet":  # ORT leaves its attention (a position bias):
        assert facts["merged_matmuls"] == manifest.num_layers  # q, k, v merged per layer
        assert facts["fused_attention"] == manifest.num_layers  # and fused by ctxembed
    else:
        assert facts["fused_attention"] in (0, manifest.num_layers)  # all layers or none


@pytest.mark.parametrize("text", TRICKY)
def test_words_offsets_and_vectors_match_pytorch(exported: Exported, text: str) -> None:
    emb = exported.embedder
    [res] = emb.embed([text], include_tokens=True)
    prepared = emb.prepare([text]).texts[0]
    # the tokenizer's own ids, exactly as transformers frames them
    assert prepared.tokens.framed_ids.tolist() == exported.hf_tokenizer(text)["input_ids"]
    previous_end = 0
    for word in res.words:
        assert text[word.start : word.end] == word.text, (word, text)
        assert word.text and word.text == word.text.strip(), word  # no space in a word
        assert word.start >= previous_end
        previous_end = word.end
        for token in word.tokens:  # every token overlaps the word (it may span a neighbour)
            assert token.start < word.end and token.end > word.start, (token, word)
    hidden = _reference(exported, prepared.tokens.framed_ids)
    n_prefix = prepared.tokens.num_prefix
    expected = np.stack(
        [hidden[n_prefix + s : n_prefix + e].mean(0) for s, e in prepared.selection.tokens.tolist()]
    )
    assert _cosine(res.vectors, expected).min() >= 0.9999


def test_presplit_words_tokenize_as_in_running_text(exported: Exported) -> None:
    words = ["We", "had", "a", "picnic", "on", "the", "bank", "of", "the", "river"]
    [split] = exported.embedder.embed([words], include_tokens=True)
    [running] = exported.embedder.embed([" ".join(words)], include_tokens=True)
    assert [w.text for w in split.words] == words
    joined = " ".join(words)
    for s, r in zip(split.words, running.words, strict=True):
        assert (s.start, s.end) == (r.start, r.end) and joined[s.start : s.end] == s.text
    # every word after the first gets the tokens it has after a space in running text
    assert [[t.id for t in w.tokens] for w in split.words[1:]] == [
        [t.id for t in w.tokens] for w in running.words[1:]
    ]


def test_words_are_the_same_under_every_family(exported: Exported) -> None:
    """One segmentation for all: the hard texts give the rule's words and offsets whatever the
    tokenizer (a model without tokens for a word would drop it; these have a token for all)."""
    for text in HARD:
        [res] = exported.embedder.embed([text])
        expected = [(text[s:e], s, e) for s, e in split_words(text).tolist()]
        assert [(w.text, w.start, w.end) for w in res.words] == expected, text


def test_select_words_finds_the_word_before_punctuation(exported: Exported) -> None:
    text = "The cricket player oiled his new willow bat."
    [res] = exported.embedder.embed([TextInput(text=text, select_words=["bat"])])
    assert [(w.text, w.start) for w in res.words] == [("bat", text.index("bat."))]
    [full] = exported.embedder.embed([text], include_tokens=True)
    assert [w.text for w in full.words][-2:] == ["bat", "."]
    np.testing.assert_array_equal(res.vectors[0], full.vectors[-2])
    # a token over both ("▁bat." in a SentencePiece vocabulary) is listed under both
    bat, stop = full.words[-2], full.words[-1]
    assert bat.tokens and stop.tokens
    shared = [t for t in bat.tokens if t.end > bat.end]
    assert shared == [t for t in stop.tokens if t.start < stop.start]


@pytest.mark.parametrize("text", LONG_TEXTS, ids=["runs-of-spaces", "tabs-and-nbsp"])
def test_long_texts_with_whitespace_runs(exported: Exported, text: str) -> None:
    """Every token takes its state from a window, whatever words cover it: the same text gives
    bit-identical vectors twice, alone and in a batch, equal to PyTorch run on each window."""
    emb = exported.embedder
    [first] = emb.embed([text])
    [again] = emb.embed([text])
    assert first.num_windows > 1
    np.testing.assert_array_equal(first.vectors, again.vectors)
    batch = emb.embed([TRICKY[0], text, TRICKY[6], text[: len(text) // 3]])
    np.testing.assert_array_equal(batch[1].vectors, first.vectors)
    # reference: PyTorch on each of the plan's windows, each word from its most central window
    prepared = emb.prepare([text]).texts[0]
    tokens = prepared.tokens
    ids = tokens.ids
    prefix = tokens.framed_ids[: tokens.num_prefix]
    suffix = tokens.framed_ids[tokens.num_prefix + tokens.num_tokens :]
    windows = prepared.plan.windows.tolist()
    states = [
        _reference(exported, np.concatenate([prefix, ids[s:e], suffix]))[len(prefix) :]
        for s, e in windows
    ]
    expected = []
    for a, b in prepared.selection.tokens.tolist():
        fits = [(min((a + b) / 2 - s, e - (a + b) / 2), -k) for k, (s, e) in enumerate(windows)
                if s <= a and b <= e]  # fmt: skip
        k = -max(fits)[1]
        s = windows[k][0]
        expected.append(states[k][a - s : b - s].mean(0))
    assert _cosine(first.vectors, np.stack(expected)).min() >= 0.9999


def test_select_words_and_spans(exported: Exported) -> None:
    emb = exported.embedder
    text = "The Bank said the bank of the river is not a BANK. At all"
    [res] = emb.embed([TextInput(text=text, select_words=["bank"])])
    expected = ["Bank", "bank", "BANK"] if exported.family.lowercase else ["bank"]
    assert [w.text for w in res.words] == expected
    [full] = emb.embed([text])
    for word, vector in zip(res.words, res.vectors, strict=True):
        [same] = [i for i, w in enumerate(full.words) if w.start == word.start]
        np.testing.assert_allclose(vector, full.vectors[same], rtol=1e-5, atol=1e-6)
    span = CharSpan(text.index("bank of the river"), text.index(" is not"))
    [spans] = emb.embed([TextInput(text=text, select_spans=[span])])
    assert spans.words[0].text == "bank of the river"


def test_long_text_in_windows(exported: Exported) -> None:
    words = ["river", "bank", "money", "picnic", "interest", "rates"] * 60
    text = " ".join(words)
    [res] = exported.embedder.embed([text])
    assert res.num_windows > 1 and res.num_tokens > MAX_TOKENS
    assert [w.text for w in res.words] == words
    assert all(text[w.start : w.end] == w.text for w in res.words)


def test_served_over_grpc(exported: Exported) -> None:
    server = ThreadServer(exported.embedder)
    try:
        with Client(server.address) as client:
            info = client.info()
            [remote] = client.embed([TRICKY[0]])
    finally:
        server.stop()
    assert info.model_type == exported.family.model_type
    assert info.word_segmentation == "bert"
    [local] = exported.embedder.embed([TRICKY[0]])
    assert remote.words == local.words
    np.testing.assert_allclose(remote.vectors, local.vectors, rtol=1e-5, atol=1e-6)
