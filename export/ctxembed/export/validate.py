"""Step 6: compare every ONNX variant with the PyTorch model on a probe set."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxembed.export.errors import ExportError

# The selection set: what every variant is validated on, and what `--int8-scheme auto` chooses
# by. Distinct from the calibration texts (calibration_texts.py) and from the corpus lines the
# benchmarks report as held out. The "bank" senses, non-ASCII scripts (a third of the texts),
# multi-piece words, code, numbers and several lengths; the last text is longer than any
# supported model's window and is truncated to it.
PROBE_TEXTS: tuple[str, ...] = (
    "I live near the bank of America",
    "I sat by the river bank",
    "The bank approved my loan after a long interview.",
    "Hi",
    "Crème brûlée à Paris coûte 12 €, dit la naïve serveuse du café.",
    "東京は日本の首都です。北京和上海也是大城市。",
    "Привет, мир! Это проверка эмбеддингов.",
    "مرحبا بالعالم، هذه جملة عربية قصيرة",
    "Emoji 🙂 and tabs\tand non-breaking\u00a0spaces survive tokenization.",
    "Contextual embeddings disambiguate antidisestablishmentarianism and unbelievably long words.",
    "ONNX Runtime executes transformer encoders quickly; quantization trades a little accuracy "
    "for a lot of speed on CPUs without specialised instructions, which matters at the edge.",
    "The river bank flooded twice last spring, so the bank raised its insurance premiums.",
    "Der Fluss trat über die Ufer, und die Bank am Marktplatz blieb drei Tage geschlossen.",
    "El banco central subió los tipos de interés por cuarta vez este año.",
    "Η τράπεζα ανακοίνωσε νέα μέτρα για τα στεγαστικά δάνεια.",
    "서울의 봄은 짧지만 벚꽃이 피는 동안 강변 공원은 사람들로 가득하다.",
    "मौसम विभाग ने अगले दो दिनों में भारी बारिश की चेतावनी जारी की है।",
    "Ο κόσμος αλλάζει γρήγορα; Сегодня в Москве идёт снег, а завтра обещают оттепель.",
    "def tokenize(text: str) -> list[str]: return text.lower().split()  # naive baseline",
    "SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC;",
    "Error 503 at 2024-03-14T09:26:53Z: upstream timed out after 30000 ms (retry 3/5).",
    "Patients receiving 5 mg/kg twice daily showed a 23.7% reduction in systolic pressure.",
    "Her unbelievably meticulous, over-engineered microservice architecture never shipped.",
    "ok",
    "Why?",
    "The defendant's counsel objected, but the judge overruled the objection without comment.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "Can you book a table for four at eight o'clock tonight, preferably near the window?",
    "The orchestra tuned up, the lights dimmed, and a hush fell over the crowded auditorium.",
    "Kubernetes restarts a pod whose liveness probe fails three times in a row.",
    "🎉🎉 Congrats!!! 🥳 You did it — finally 🙌",
    "naïve café coöperation résumé façade jalapeño piñata Zoë Brontë",
    "The stock fell 4% after the CEO said supply-chain problems would persist into Q3.",
    "Mixing scripts: Tokyo 東京, Moscow Москва, Cairo القاهرة, Athens Αθήνα.",
    "A short sentence. Another one. And a third, with a comma, and a semicolon; done.",
    " ".join(["Word embeddings depend on their sentence, and long documents need windows."] * 60),
)


def selection_set(path: Path | None) -> tuple[tuple[str, ...], str]:
    """The texts every variant is validated on and the int8 scheme is chosen by, and how the
    manifest names them: the built-in probe texts, or a file's non-empty lines."""
    if path is None:
        return PROBE_TEXTS, "built-in probe texts (validate.PROBE_TEXTS)"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportError(f"--selection-texts {path}: cannot read it: {exc}") from None
    texts = tuple(t for t in data.decode("utf-8").splitlines() if t.strip())
    if not texts:
        raise ExportError(f"--selection-texts {path} holds no text (one per line)")
    return texts, f"{path.name} (sha256 {hashlib.sha256(data).hexdigest()[:12]})"


@dataclass(frozen=True)
class Thresholds:
    """Minimums a variant must reach (cosine similarity against PyTorch)."""

    token_min: float = 0.0
    word_mean: float = 0.0
    word_min: float = 0.0


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(token_min=0.9999, word_mean=0.9999, word_min=0.9999),
    "int8": Thresholds(word_mean=0.995, word_min=0.98),
    "fp16": Thresholds(word_mean=0.999, word_min=0.995),
}


@dataclass(frozen=True)
class Reference:
    """One probe text: model inputs, its words' token ranges, PyTorch output."""

    feed: dict[str, np.ndarray]
    word_tokens: np.ndarray  # (w, 2) [start, end) into the framed ids, as the runtime pools
    hidden: np.ndarray  # (tokens, dim) last layer

    @property
    def content(self) -> np.ndarray:
        """Indices of the tokens in some word (specials and whitespace pieces are in none)."""
        return np.unique(np.concatenate([np.arange(s, e) for s, e in self.word_tokens.tolist()]))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return np.asarray((a64 * b64).sum(-1) / np.maximum(den, 1e-12))


def word_means(hidden: np.ndarray, word_tokens: np.ndarray) -> np.ndarray:
    """Mean of each word's token vectors over its token range."""
    return np.stack([hidden[s:e].mean(0) for s, e in word_tokens.tolist()])


def served_word_tokens(text: str, encoding: Any, specials: Sequence[str]) -> np.ndarray:
    """(w, 2) ranges in the framed ids of the words the server returns for ``text``: the
    runtime's segmentation over the tokenizer's offsets (words past a truncation are left out)."""
    from ctxembed.runtime.segmentation import split_words, word_splitter, word_token_ranges

    mask = np.asarray(encoding["special_tokens_mask"][0], dtype=bool)
    content = np.flatnonzero(~mask)
    offsets = np.asarray(encoding["offset_mapping"][0], dtype=np.int64).reshape(-1, 2)[content]
    ranges = word_token_ranges(split_words(text, word_splitter(tuple(specials))), offsets)
    ranges = ranges[ranges[:, 1] > ranges[:, 0]]
    return ranges + int(content[0]) if content.size else ranges


def build_references(
    model_location: str,
    max_tokens: int,
    graph_inputs: Sequence[str],
    texts: Sequence[str] = PROBE_TEXTS,
) -> list[Reference]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_location, use_fast=True)
    model = AutoModel.from_pretrained(model_location).eval()
    refs = []
    for text in texts:
        enc = tokenizer(
            text,
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        with torch.no_grad():
            out = model(**{k: v for k, v in enc.items() if k in graph_inputs})
        feed = {k: v.numpy().astype(np.int64) for k, v in enc.items() if k in graph_inputs}
        words = served_word_tokens(text, enc, tokenizer.all_special_tokens)
        refs.append(Reference(feed, words, out.last_hidden_state[0].numpy()))
    return refs


def run_reference(session: Any, ref: Reference) -> np.ndarray:
    """The variant's last hidden state for a reference's feed (one text)."""
    return np.asarray(session.run(["last_hidden_state"], ref.feed)[0][0], dtype=np.float32)


def word_cosines(out: np.ndarray, ref: Reference) -> np.ndarray:
    """Each word's cosine between the variant's mean vector and the reference's."""
    return _cosine(word_means(out, ref.word_tokens), word_means(ref.hidden, ref.word_tokens))


def worst_words(session: Any, refs: Sequence[Reference]) -> np.ndarray:
    """Each reference text's worst word cosine under the variant."""
    return np.array([float(word_cosines(run_reference(session, ref), ref).min()) for ref in refs])


def compare_variant(
    session: Any,
    refs: Sequence[Reference],
    thresholds: Thresholds,
    on_text: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Figures of one variant (a ready onnxruntime session) against the references."""
    tok_cos, word_cos, max_abs = [], [], 0.0
    for ref in refs:
        out = run_reference(session, ref)
        real = ref.content
        tok_cos.append(_cosine(out[real], ref.hidden[real]))
        word_cos.append(word_cosines(out, ref))
        max_abs = max(max_abs, float(np.abs(out[real] - ref.hidden[real]).max()))
        on_text()
    toks, words = np.concatenate(tok_cos), np.concatenate(word_cos)
    raw = {
        "token_cosine_min": float(toks.min()),
        "token_cosine_mean": float(toks.mean()),
        "word_cosine_min": float(words.min()),
        "word_cosine_mean": float(words.mean()),
        "max_abs_diff": max_abs,
    }
    limits = {
        "token_cosine_min": thresholds.token_min,
        "word_cosine_mean": thresholds.word_mean,
        "word_cosine_min": thresholds.word_min,
    }
    # Compare unrounded figures; the manifest keeps 6 decimals.
    failures = [f"{k} {raw[k]:.6f} < {v}" for k, v in limits.items() if raw[k] < v]
    return {
        "texts": len(refs),
        "tokens": int(toks.size),
        "words": int(words.size),
        **{k: round(v, 6) for k, v in raw.items()},
        "thresholds": limits,
        "passed": not failures,
        "failures": failures,
    }


def load_session(path: Path, providers: Sequence[str], kernels: Path | None = None) -> Any:
    """An onnxruntime session over ``path``; with ``kernels`` (ctxembed's fused kernels
    registered) the graph's ``ctxembed`` functions run as those kernels, as a server runs them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if kernels is not None:
        options.register_custom_ops_library(str(kernels))
    return ort.InferenceSession(str(path), options, providers=list(providers))


# How a server may run a CPU graph: its functions as ctxembed's fused kernels (the default where
# the install built them) or as onnxruntime's own operators (no C compiler, --no-fused-kernels).
# The two round the layer norms differently, which moves the flip-prone words by ~0.003.
STANDARD, FUSED = "standard_operators", "fused_kernels"


def shipped_kernels() -> Path | None:
    """ctxembed's fused kernels where this install built them and onnxruntime loads them."""
    from ctxembed.runtime.session import fused_kernels_library

    return fused_kernels_library()


def worse_of(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One variant's figures over the ways it was run (``compare_variant``'s, by way): each the
    worse of them, passing only where every way passed; each way's own figures under "runs"."""
    first = next(iter(runs.values()))
    if len(runs) == 1:
        return first
    worst = {k: min(r[k] for r in runs.values()) for k in first if k.endswith(("_min", "_mean"))}
    failures = [f"{f} ({way})" for way, r in runs.items() for f in r["failures"]]
    kept = ("word_cosine_mean", "word_cosine_min", "token_cosine_min", "max_abs_diff", "passed")
    return {
        **first,
        **worst,
        "max_abs_diff": max(r["max_abs_diff"] for r in runs.values()),
        "passed": all(r["passed"] for r in runs.values()),
        "failures": failures,
        "runs": {way: {k: r[k] for k in kept} for way, r in runs.items()},
    }
