"""The CUDA path, measured: prepared on the CPU machine, run on a lent GPU machine.

On the CPU machine (torch, the export extra), once per model:

    python -m benchmarks.bench_gpu reference --source SRC --model-dir DIR --out ref.npz

writes the PyTorch fp32 word vectors of the texts below (held-out corpus lines and the bank
sentence), pooled per word on ctxembed's own tokens, so the GPU machine needs no transformers
model to validate against. DIR is a `ctxembed export --target cuda` folder (fp16 variant).

On the GPU machine (with onnxruntime-gpu installed in place of onnxruntime):

    python -m benchmarks.bench_gpu measure --model-dir DIR --reference ref.npz \\
        [--provider cuda] [--torch-config config.json] --out results.json

prints and writes: the card, the fp16 variant's word cosine against the fp32 reference (mean,
worst), `embed` latency of the bank sentence (batch 1, p50/p90), corpus throughput in calls of 32
and 256 (texts/s, words/s), PyTorch eager on the same card from the config with random weights
(timing only; fp32 and fp16), and `ctxembed serve` on the card (one client p50, 32 clients
texts/s). `--provider cpu` runs the same steps on the CPU: a dry run of the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_int8 import BANK, held_out
from benchmarks.corpus import load_corpus
from benchmarks.engines import time_calls
from benchmarks.stats import percentiles


def _texts() -> list[str]:
    return [BANK, *held_out()]


def make_reference(source: Path, model_dir: Path, out: Path) -> None:
    from benchmarks.bench_int8 import references
    from ctxembed.runtime import WordEmbedder

    emb = WordEmbedder.load(model_dir, "cpu", variant="fp32")
    texts = _texts()
    vectors = references(source, emb, texts)
    arrays: dict[str, Any] = {str(i): v for i, v in enumerate(vectors)}
    np.savez_compressed(out, texts=np.array(texts, dtype=object), **arrays)
    print(f"wrote {out}: {len(texts)} texts")


def _time(fn: Any, reps: int) -> dict[str, float]:
    return percentiles(time_calls(fn, reps, warmup=20))


def _throughput(emb: Any, texts: Sequence[str], batch: int) -> dict[str, float]:
    emb.embed(list(texts[:batch]))
    start, words = time.perf_counter(), 0
    for i in range(0, len(texts), batch):
        words += sum(len(r.words) for r in emb.embed(list(texts[i : i + batch])))
    seconds = time.perf_counter() - start
    return {"texts_per_s": len(texts) / seconds, "words_per_s": words / seconds}


def _torch_eager(config_path: Path, device: str, reps: int) -> dict[str, Any]:
    """PyTorch eager from the config with random weights: timing only."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(config_path.parent)
    model = AutoModel.from_config(config).eval().to(device)
    ids = torch.randint(1000, 2000, (1, 9), device=device)  # the bank sentence's 9 tokens
    out: dict[str, Any] = {}
    dtypes = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if device == "cuda" else [])
    for name, dtype in dtypes:
        m = model.to(dtype)

        def run(m: Any = m) -> None:
            with torch.inference_mode():
                m(input_ids=ids, attention_mask=torch.ones_like(ids))
            if device == "cuda":
                torch.cuda.synchronize()

        out[name] = _time(run, reps)
    return out


def _server(model_dir: Path, provider: str, reps: int) -> dict[str, Any]:
    from benchmarks import bench_grpc

    server, startup = bench_grpc.start_server(model_dir, ["--provider", provider])
    try:
        single = bench_grpc.one_client(server.address, reps)
        load = bench_grpc.load(server.address, 32, 5.0, 512)
    finally:
        bench_grpc.stop(server)
    return {"startup_s": startup, "one_client_p50_ms": single["p50_ms"], "clients_32": load}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    from ctxembed.runtime import WordEmbedder

    if args.provider == "cuda":
        try:
            import torch  # loads the CUDA and cuDNN libraries onnxruntime-gpu uses

            card = torch.cuda.get_device_name(0)
        except Exception as exc:  # no torch, or no card: say so in the result
            card = f"unknown ({exc})"
    else:
        card = "cpu (dry run)"
    emb = WordEmbedder.load(args.model_dir, args.provider)
    data = np.load(args.reference, allow_pickle=True)
    texts = [str(t) for t in data["texts"]]
    cosines = []
    for i, text in enumerate(texts):
        got = emb.embed([text])[0].vectors.astype(np.float32)
        ref = data[str(i)]
        cosines.append(
            (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        )
    cos = np.concatenate(cosines)
    corpus = load_corpus(args.texts)
    result: dict[str, Any] = {
        "card": card,
        "onnxruntime": ort.__version__,
        "provider": emb.session.provider,
        "variant": emb.session.variant.name,
        "word_cosine_vs_fp32": {"mean": float(cos.mean()), "worst": float(cos.min())},
        "bank_embed": _time(lambda: emb.embed([BANK]), args.reps),
        "calls_of_32": _throughput(emb, corpus, 32),
        "calls_of_256": _throughput(emb, corpus, 256),
    }
    if args.torch_config is not None:
        result["torch_eager_random_weights"] = _torch_eager(
            args.torch_config, "cuda" if args.provider == "cuda" else "cpu", args.reps
        )
    emb.close()
    result["server"] = _server(args.model_dir, args.provider, args.reps)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--source", type=Path, required=True)
    r.add_argument("--model-dir", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model-dir", type=Path, required=True)
    m.add_argument("--reference", type=Path, required=True)
    m.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    m.add_argument("--torch-config", type=Path, default=None, help="a config.json for eager")
    m.add_argument("--texts", type=int, default=1024)
    m.add_argument("--reps", type=int, default=300)
    m.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "reference":
        make_reference(args.source, args.model_dir, args.out)
        return 0
    result = measure(args)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
