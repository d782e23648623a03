"""One engine per process: bank-sentence latency and corpus throughput, printed as JSON.

    python -m benchmarks.engines ENGINE --model-dir DIR --source DIR [--texts N] [--reps N]

Engines: ctxembed-int8, ctxembed-fp32 (WordEmbedder in-process), usual (transformers + PyTorch
eager, one text at a time, the word looked up through word_ids), optimum
(ORTModelForFeatureExtraction on the same ONNX file, batches of 32, pooling by hand), flair
(TransformerWordEmbeddings, mean sub-token pooling, last layer). Each runs in its own process so
that torch's and onnxruntime's thread pools never share one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.stats import percentiles
from testkit.corpus import load_corpus

BANK = "I live near the bank of America"
BATCH = 32
THREADS = 2


def time_calls(fn: Callable[[], object], reps: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def throughput(
    fn: Callable[[Sequence[str]], object], texts: Sequence[str], batch: int, repeats: int = 2
) -> float:
    """Best texts/s over ``repeats`` passes of the texts in calls of ``batch``."""
    fn(texts[:batch])  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            fn(texts[i : i + batch])
        best = max(best, len(texts) / (time.perf_counter() - start))
    return best


def word_vectors_by_hand(hidden: np.ndarray, word_ids: Sequence[int | None]) -> np.ndarray:
    """What a user writes by hand: mean of each word's sub-word vectors via word_ids."""
    ids = sorted({w for w in word_ids if w is not None})
    return np.stack(
        [hidden[[i for i, w in enumerate(word_ids) if w == wid]].mean(0) for wid in ids]
    )


def run_ctxembed(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    from ctxembed.runtime import TextInput, WordEmbedder

    emb = WordEmbedder.load(args.model_dir, provider="cpu", variant=variant, threads=THREADS)
    texts = load_corpus(args.texts)
    bank = [TextInput(text=BANK, select_words=["bank"])]
    lat = time_calls(lambda: emb.embed(bank), args.reps)
    tps = throughput(lambda b: emb.embed(list(b)), texts, BATCH)
    return {"latency": percentiles(lat), "texts_per_s": tps}


def run_usual(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(args.source)
    model = AutoModel.from_pretrained(args.source).eval()

    def one(text: str, word: str | None = None) -> np.ndarray:
        enc = tok(text, return_tensors="pt", truncation=True)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state[0].numpy()
        vectors = word_vectors_by_hand(hidden, enc.word_ids(0))
        return vectors[4] if word else vectors

    texts = load_corpus(args.texts)
    lat = time_calls(lambda: one(BANK, "bank"), args.reps)
    tps = throughput(lambda b: [one(t) for t in b], texts, 1, repeats=1)
    return {"latency": percentiles(lat), "texts_per_s": tps}


def run_optimum(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    model = ORTModelForFeatureExtraction.from_pretrained(
        args.model_dir,
        file_name=args.file_name,
        session_options=options,
        provider="CPUExecutionProvider",
    )
    tok = AutoTokenizer.from_pretrained(args.model_dir)

    def batch(texts: Sequence[str]) -> list[np.ndarray]:
        enc = tok(list(texts), return_tensors="np", padding=True, truncation=True)
        hidden = model(**enc).last_hidden_state
        hidden = hidden.numpy() if hasattr(hidden, "numpy") else np.asarray(hidden)
        return [word_vectors_by_hand(hidden[i], enc.word_ids(i)) for i in range(len(texts))]

    texts = load_corpus(args.texts)
    lat = time_calls(lambda: batch([BANK])[0][4], args.reps)
    tps = throughput(batch, texts, BATCH)
    return {"latency": percentiles(lat), "texts_per_s": tps}


def run_flair(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import torch
        from flair.data import Sentence
        from flair.embeddings import TransformerWordEmbeddings
    except ImportError as exc:
        return {"error": f"flair is not installed ({exc}); `pip install 'ctxembed[bench]'`"}
    torch.set_num_threads(THREADS)
    emb = TransformerWordEmbeddings(
        args.source,
        layers="-1",
        subtoken_pooling="mean",
        fine_tune=False,
        allow_long_sentences=True,
    )

    def embed(texts: Sequence[str]) -> None:
        sentences = [Sentence(t) for t in texts]
        emb.embed(sentences)
        for s in sentences:
            for token in s:
                token.embedding.numpy()

    texts = load_corpus(args.texts)
    lat = time_calls(lambda: embed([BANK]), args.reps)
    by_batch = {str(b): throughput(embed, texts, b, repeats=1) for b in (1, 8, 32)}
    return {
        "latency": percentiles(lat),
        "texts_per_s": max(by_batch.values()),
        "texts_per_s_by_batch": by_batch,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument(
        "engine", choices=("ctxembed-int8", "ctxembed-fp32", "usual", "optimum", "flair")
    )
    p.add_argument("--model-dir", required=True, help="ctxembed model folder")
    p.add_argument("--source", required=True, help="the PyTorch model folder it came from")
    p.add_argument("--file-name", default="model_int8.onnx", help="ONNX file for optimum")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args(argv)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "ctxembed-int8": lambda: run_ctxembed(args, "int8"),
        "ctxembed-fp32": lambda: run_ctxembed(args, "fp32"),
        "usual": lambda: run_usual(args),
        "optimum": lambda: run_optimum(args),
        "flair": lambda: run_flair(args),
    }
    result = runners[args.engine]()
    result["texts"] = args.texts
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
