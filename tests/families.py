"""Tiny models of every supported family, built locally: random weights, a tokenizer of the
family's kind (WordPiece, byte-level BPE, Unigram/SentencePiece) trained on the repo's corpus.

Random weights test plumbing, offsets and export fidelity, never accuracy. Each folder looks like
what ``save_pretrained`` writes for the real family: ``config.json``, ``model.safetensors`` and a
fast tokenizer (``tokenizer.json`` with the family's normalizer, pre-tokenizer and
post-processor, as the real checkpoints ship them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.corpus import load_corpus

SIZE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "initializer_range": 0.2,  # larger than default: differences between graphs show
}
MAX_TOKENS = 128
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@dataclass(frozen=True)
class Family:
    name: str  # test id
    model_type: str
    tokenizer_kind: str  # WordPiece | byte-level BPE | Unigram
    build_tokenizer: Callable[[], Any]  # -> tokenizers.Tokenizer
    config: Callable[[int], Any]  # vocab size -> transformers config
    specials: dict[str, str]  # PreTrainedTokenizerFast special-token arguments
    lowercase: bool = False


def _corpus() -> list[str]:
    return load_corpus(2000)


def _wordpiece(lowercase: bool, cls: str = "[CLS]", sep: str = "[SEP]") -> Callable[[], Any]:
    def build() -> Any:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from tokenizers.trainers import WordPieceTrainer

        specials = BERT_SPECIALS if cls == "[CLS]" else ROBERTA_SPECIALS
        unk = "[UNK]" if cls == "[CLS]" else "<unk>"
        tok = Tokenizer(models.WordPiece(unk_token=unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(
            _corpus(), WordPieceTrainer(vocab_size=3000, special_tokens=specials)
        )
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
        return tok

    return build


def _byte_level_bpe(add_prefix_space: bool) -> Callable[[], Any]:
    def build() -> Any:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from tokenizers.trainers import BpeTrainer

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        tok.decoder = decoders.ByteLevel()
        trainer = BpeTrainer(
            vocab_size=3000,
            special_tokens=ROBERTA_SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(_corpus(), trainer)
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")),
            ("<s>", tok.token_to_id("<s>")),
            trim_offsets=True,
            add_prefix_space=add_prefix_space,
        )
        return tok

    return build


def _unigram(specials: list[str], cls: str, sep: str, lowercase: bool) -> Callable[[], Any]:
    """SentencePiece-style: Metaspace pre-tokenizer (the space is part of the "▁" token)."""

    def build() -> Any:
        from tokenizers import (
            Regex,
            Tokenizer,
            decoders,
            models,
            normalizers,
            pre_tokenizers,
            processors,
        )
        from tokenizers.trainers import UnigramTrainer

        tok = Tokenizer(models.Unigram())
        steps = [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        tok.normalizer = normalizers.Sequence(
            [*steps, normalizers.Lowercase()] if lowercase else steps
        )
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        unk = "<unk>" if "<unk>" in specials else "[UNK]"
        trainer = UnigramTrainer(vocab_size=3000, special_tokens=specials, unk_token=unk)
        tok.train_from_iterator(_corpus(), trainer)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} {sep} $B {sep}",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
        return tok

    return build


def _config(cls_name: str, **extra: Any) -> Callable[[int], Any]:
    def build(vocab: int) -> Any:
        import transformers

        return getattr(transformers, cls_name)(vocab_size=vocab, **SIZE, **extra)

    return build


def _distilbert_config(vocab: int) -> Any:
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=vocab,
        dim=SIZE["hidden_size"],
        n_layers=SIZE["num_hidden_layers"],
        n_heads=SIZE["num_attention_heads"],
        hidden_dim=SIZE["intermediate_size"],
        initializer_range=SIZE["initializer_range"],
        max_position_embeddings=MAX_TOKENS,
    )


BERT_TOKENS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "unk_token": "[UNK]", "mask_token": "[MASK]"}  # fmt: skip
ROBERTA_TOKENS = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
                  "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                  "mask_token": "<mask>"}  # fmt: skip
SENTENCEPIECE = _unigram(ROBERTA_SPECIALS, "<s>", "</s>", False)  # XLM-R's and CamemBERT's kind
ROBERTA_POSITIONS = {"max_position_embeddings": MAX_TOKENS + 2, "pad_token_id": 1}

FAMILIES = [
    Family("bert-uncased", "bert", "WordPiece", _wordpiece(True),
           _config("BertConfig", max_position_embeddings=MAX_TOKENS), BERT_TOKENS, True),
    Family("bert-cased", "bert", "WordPiece", _wordpiece(False),
           _config("BertConfig", max_position_embeddings=MAX_TOKENS), BERT_TOKENS),
    Family("distilbert", "distilbert", "WordPiece", _wordpiece(True), _distilbert_config,
           BERT_TOKENS, True),
    Family("electra", "electra", "WordPiece", _wordpiece(True),
           _config("ElectraConfig", embedding_size=32, max_position_embeddings=MAX_TOKENS),
           BERT_TOKENS, True),
    Family("mpnet", "mpnet", "WordPiece", _wordpiece(True, "<s>", "</s>"),
           _config("MPNetConfig", **ROBERTA_POSITIONS), ROBERTA_TOKENS, True),
    Family("roberta", "roberta", "byte-level BPE", _byte_level_bpe(False),
           _config("RobertaConfig", **ROBERTA_POSITIONS), ROBERTA_TOKENS),
    Family("roberta-prefix-space", "roberta", "byte-level BPE", _byte_level_bpe(True),
           _config("RobertaConfig", **ROBERTA_POSITIONS), ROBERTA_TOKENS),
    Family("xlm-roberta", "xlm-roberta", "Unigram", SENTENCEPIECE,
           _config("XLMRobertaConfig", **ROBERTA_POSITIONS), ROBERTA_TOKENS),
    Family("camembert", "camembert", "Unigram", SENTENCEPIECE,
           _config("CamembertConfig", **ROBERTA_POSITIONS), ROBERTA_TOKENS),
    Family("albert", "albert", "Unigram", _unigram(BERT_SPECIALS, "[CLS]", "[SEP]", True),
           _config("AlbertConfig", embedding_size=16, max_position_embeddings=MAX_TOKENS),
           BERT_TOKENS, True),
]  # fmt: skip


def build_family(family: Family, folder: Path) -> Path:
    """Write a tiny random-weight model of ``family`` with its trained tokenizer into ``folder``."""
    import torch
    from transformers import AutoModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = family.build_tokenizer()
    config = family.config(tok.get_vocab_size())
    AutoModel.from_config(config).eval().save_pretrained(folder)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_TOKENS, **family.specials
    )
    fast.save_pretrained(folder)
    return folder
