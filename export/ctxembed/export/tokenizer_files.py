"""Step 4: the fast tokenizer, with padding and truncation cleared (the runtime decides both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctxembed.export.errors import ExportError
from ctxembed.runtime.manifest import TokenizerInfo

TOKENIZER_FILE = "tokenizer.json"


def _lowercases(normalizer: Any) -> bool:
    """Whether a tokenizer.json normalizer (possibly a Sequence) lowercases."""
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Lowercase" or normalizer.get("lowercase") is True:
        return True
    return any(_lowercases(n) for n in normalizer.get("normalizers", []))


def write_tokenizer(
    location: str, revision: str | None, out_dir: Path
) -> tuple[TokenizerInfo, int]:
    """Write ``tokenizer.json``; return its facts and the tokenizer's ``model_max_length``."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(location, use_fast=True, revision=revision)
    if not hf.is_fast:
        raise ExportError(
            f"{location} has no fast (Rust) tokenizer; ctxembed needs one for offsets"
        )
    tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(out_dir / TOKENIZER_FILE))
    spec = json.loads(tokenizer.to_str())
    specials = {k: str(v) for k, v in hf.special_tokens_map.items() if isinstance(v, str)}
    info = TokenizerInfo(
        file=TOKENIZER_FILE,
        lowercase=_lowercases(spec.get("normalizer")),
        special_tokens=specials,
        pad_token_id=int(hf.pad_token_id if hf.pad_token_id is not None else 0),
    )
    return info, int(hf.model_max_length)
