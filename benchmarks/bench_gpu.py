"""The CUDA path, measured: prepared on the CPU machine, run on a lent GPU machine.

On the CPU machine (torch, the export extra), once per model:

    python -m benchmarks.bench_gpu reference --source SRC --model-dir DIR --out ref.npz

writes the PyTorch fp32 word vectors of the texts below (the bank sentence and 150 held-out
corpus lines), pooled per word on ctxembed's own tokens, so that the GPU machine needs no
weights to validate against. DIR is a `ctxembed export --target cuda` folder (fp16 variant).

On the GPU machine (onnxruntime-gpu in place of onnxruntime; `benchmarks/gpu_run.sh` is the
whole device run):

    python -m benchmarks.bench_gpu measure --model-dir DIR --reference ref.npz \\
        [--server] --out results.json

prints and writes, section by section (a failed section records its error and the rest run):
the card; the fp16 variant's word cosine against the fp32 reference, plain and with CUDA graphs;
`embed` latency of the bank sentence at batch 1 (tokenize, run, pool; and the bare run), plain
CUDA and CUDA graphs, in interleaved rounds; corpus throughput in calls of 32 and 256 at the
default max_padding and at ``--paddings``, with the fraction of the card's fp16 matrix rate;
PyTorch eager fp32 and fp16 on the same card from the config with random weights (timing only);
with ``--server``, `ctxembed serve` on the card without and with ``--cuda-graphs`` (one client
p50, 32 clients, time per stage). ``--provider cpu`` runs the same steps on the CPU: a dry run
of the script itself.

    python -m benchmarks.bench_gpu report results.json ... > benchmarks/results/gpu.md
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_int8 import BANK
from benchmarks.engines import time_calls
from benchmarks.stats import encoder_flops_per_token, percentiles, ratio
from testkit.corpus import load_corpus
from testkit.fidelity import held_out


def _texts() -> list[str]:
    return [BANK, *held_out()]


def make_reference(source: Path, model_dir: Path, out: Path) -> None:
    from ctxembed.runtime import WordEmbedder
    from testkit.fidelity import references

    emb = WordEmbedder.load(model_dir, "cpu", variant="fp32")
    texts = _texts()
    vectors = references(source, emb, texts)
    arrays: dict[str, Any] = {str(i): v for i, v in enumerate(vectors)}
    np.savez_compressed(out, texts=np.array(texts, dtype=object), **arrays)
    print(f"wrote {out}: {len(texts)} texts")


def _cosines(emb: Any, reference: Path) -> dict[str, float]:
    data = np.load(reference, allow_pickle=True)
    cosines = []
    for i, text in enumerate(str(t) for t in data["texts"]):
        got = emb.embed([text])[0].vectors.astype(np.float32)
        ref = data[str(i)]
        den = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
        cosines.append((got * ref).sum(1) / den)
    c = np.concatenate(cosines)
    return {"mean": float(c.mean()), "worst": float(c.min()), "words": int(c.size)}


def _rounds(fns: dict[str, Callable[[], object]], reps: int, rounds: int = 3) -> dict[str, Any]:
    """p50 and p90 of each function's median round, in interleaved rounds."""
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            measured[name].append(percentiles(time_calls(fn, reps, warmup=20)))
    result = {}
    for name, runs in measured.items():
        ordered = sorted(runs, key=lambda r: r["p50_ms"])
        median = ordered[len(ordered) // 2]
        result[name] = {
            "p50_ms": median["p50_ms"],
            "p90_ms": median["p90_ms"],
            "rounds_p50_ms": [r["p50_ms"] for r in runs],
        }
    return result


def _throughput(emb: Any, texts: Sequence[str], batch: int) -> dict[str, float]:
    """Best of two timed passes after a warm one: the first sight of each run shape costs
    kernel selection and memory growth, which a serving process pays once."""
    prepared = emb.prepare(list(texts))
    tokens = sum(t.tokens.num_tokens + emb.tokenizer.num_special for t in prepared.texts)
    best, words = float("inf"), 0
    for attempt in range(3):
        start, words = time.perf_counter(), 0
        for i in range(0, len(texts), batch):
            words += sum(len(r.words) for r in emb.embed(list(texts[i : i + batch])))
        if attempt:
            best = min(best, time.perf_counter() - start)
    return {
        "max_padding": emb.max_padding,
        "texts_per_s": len(texts) / best,
        "words_per_s": words / best,
        "tokens_per_s": tokens / best,
        "mean_tokens_per_text": tokens / len(texts),
    }


def _fp16_matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    """The card's practical fp16 matrix rate (cuBLAS through torch): the roofline's roof."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2.0 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _torch_eager(config_dir: Path, device: str, reps: int) -> dict[str, Any]:
    """PyTorch eager from the config with random weights: timing only."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModel.from_config(config).eval().to(device)
    ids = torch.randint(1000, 2000, (1, 9), device=device)  # the bank sentence's 9 tokens
    out: dict[str, Any] = {"transformers": __import__("transformers").__version__}
    dtypes = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if device == "cuda" else [])
    for name, dtype in dtypes:
        m = model.to(dtype)

        def run(m: Any = m) -> None:
            with torch.inference_mode():
                m(input_ids=ids, attention_mask=torch.ones_like(ids))
            if device == "cuda":
                torch.cuda.synchronize()

        out[name] = percentiles(time_calls(run, reps, warmup=20))
    return out


def _server(
    model_dir: Path,
    provider: str,
    graphs: bool,
    reps: int,
    workers: int = 1,
    channels: int = 1,
    processes: int = 1,
) -> dict[str, Any]:
    """One client's bank p50, then 32 clients over ``channels`` connections (the kernel spreads
    --workers connections, not calls) from ``processes`` load processes (one tops out near
    1,300 calls/s)."""
    from benchmarks import bench_grpc

    flags = ["--provider", provider] + (["--cuda-graphs"] if graphs else [])
    flags += ["--workers", str(workers)] if workers > 1 else []
    server, startup = bench_grpc.start_server(model_dir, flags)
    try:
        single = bench_grpc.one_client(server.address, reps)
        load = bench_grpc.load(server.address, 32, 5.0, 1024, channels, processes)
    finally:
        stats = bench_grpc.stop(server)
    return {
        "flags": flags,
        "channels": channels,
        "load_processes": processes,
        "startup_s": startup,
        "one_client_p50_ms": single["p50_ms"],
        "clients_32": load,
        "stage_ms_per_request": bench_grpc.stage_split(stats),
        "exit_code": stats.get("exit_code"),
    }


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _section(
    result: dict[str, Any], name: str, out: Path, fn: Callable[[], Any], keep: bool = True
) -> Any:
    """Run one section; record its result (or only its time) or its error, and write what is
    known so far."""
    start = time.perf_counter()
    try:
        value = fn()
        result[name] = value if keep else {"seconds": time.perf_counter() - start}
    except Exception as exc:  # a failed section must not cost the rest of a scarce GPU run
        traceback.print_exc()
        value, result[name] = None, {"error": f"{type(exc).__name__}: {exc}"}
    print(f"[{name}] {time.perf_counter() - start:.1f} s: {json.dumps(result[name])[:400]}")
    out.write_text(json.dumps(result, indent=1) + "\n")
    return value


def _card(provider: str) -> dict[str, Any]:
    import onnxruntime as ort

    facts: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }
    if provider == "cuda":
        import torch  # loads the CUDA and cuDNN libraries onnxruntime-gpu uses

        facts.update(
            card=torch.cuda.get_device_name(0),
            torch=torch.__version__,
            cuda=torch.version.cuda,
            fp16_matmul_tflops=_fp16_matmul_tflops(),
        )
    else:
        facts["card"] = "cpu (dry run)"
    return facts


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from ctxembed.runtime import WordEmbedder
    from ctxembed.runtime.settings import DEFAULT_GRAPH_LENGTHS

    out: Path = args.out
    result: dict[str, Any] = {"model_dir": str(args.model_dir)}
    card = _section(result, "card", out, lambda: _card(args.provider)) or {}
    plain = _section(
        result,
        "load_plain",
        out,
        lambda: WordEmbedder.load(args.model_dir, args.provider),
        keep=False,
    )
    warnings = _Warnings()
    logging.getLogger("ctxembed").addHandler(warnings)
    graphs = _section(
        result,
        "load_graphs",
        out,
        lambda: WordEmbedder.load(
            args.model_dir, args.provider, cuda_graph_lengths=DEFAULT_GRAPH_LENGTHS
        ),
        keep=False,
    )
    result["engines"] = {
        name: {
            "provider": emb.session.provider,
            "variant": emb.session.variant.name,
            "graph_lengths": list(emb.session.graph_lengths),
        }
        for name, emb in (("plain", plain), ("graphs", graphs))
        if emb is not None
    }
    result["engines"]["warnings"] = warnings.messages
    if plain is not None:
        _section(result, "word_cosine_plain", out, lambda: _cosines(plain, args.reference))
    if graphs is not None:
        _section(result, "word_cosine_graphs", out, lambda: _cosines(graphs, args.reference))
    fns: dict[str, Callable[[], object]] = {}
    for label, emb in (("plain", plain), ("graphs", graphs)):
        if emb is None:
            continue
        ids = emb.prepare([BANK]).texts[0].tokens.framed_ids[None, :]
        output = emb.session.session.get_outputs()[0].name
        result["bank_tokens"] = int(ids.shape[1])

        def embed(emb: Any = emb) -> object:
            return emb.embed([BANK])

        def bare(emb: Any = emb, ids: np.ndarray = ids, output: str = output) -> object:
            return emb.session.run(ids, np.ones_like(ids), [output])

        fns[f"embed_{label}"], fns[f"bare_run_{label}"] = embed, bare
    _section(result, "bank_batch1", out, lambda: _rounds(fns, args.reps))
    corpus = load_corpus(args.texts)
    engine = graphs or plain
    if engine is not None:
        default_padding = engine.max_padding
        for padding in sorted({default_padding, *args.paddings}):
            for batch in (32, 256):

                def calls(batch: int = batch, padding: float = padding) -> dict[str, float]:
                    engine.max_padding = padding
                    return _throughput(engine, corpus, batch)

                suffix = "" if padding == default_padding else f"_padding_{padding}"
                _section(result, f"calls_of_{batch}{suffix}", out, calls)
        engine.max_padding = default_padding
    config = json.loads((args.model_dir / "config.json").read_text())
    at_256 = [v for k, v in result.items() if k.startswith("calls_of_256") and "tokens_per_s" in v]
    if card.get("fp16_matmul_tflops") and at_256:
        fastest = max(at_256, key=lambda v: v["tokens_per_s"])
        per_token = encoder_flops_per_token(
            config["hidden_size"],
            config["num_hidden_layers"],
            config["intermediate_size"],
            round(fastest["mean_tokens_per_text"]),
        )
        achieved = fastest["tokens_per_s"] * per_token / 1e12
        result["roofline"] = {
            "max_padding": fastest["max_padding"],
            "flops_per_token": per_token,
            "achieved_tflops": achieved,
            "fraction_of_fp16_matmul": ratio(achieved, card["fp16_matmul_tflops"]),
        }
    device = "cuda" if args.provider == "cuda" else "cpu"
    eager = _section(
        result, "torch_eager", out, lambda: _torch_eager(args.model_dir, device, args.reps)
    )
    bank = result.get("bank_batch1")
    if eager and isinstance(bank, dict) and bank.get("embed_graphs" if graphs else "embed_plain"):
        best = min(bank[k]["p50_ms"] for k in ("embed_plain", "embed_graphs") if k in bank)
        fastest_eager = min(eager[k]["p50_ms"] for k in ("fp32", "fp16") if k in eager)
        result["speedup_vs_torch_eager"] = ratio(fastest_eager, best)
    for emb in (plain, graphs):
        if emb is not None:
            emb.close()
    if args.server:
        for graphs_on in (False, True) if args.provider == "cuda" else (False,):

            def serve(graphs_on: bool = graphs_on) -> dict[str, Any]:
                return _server(args.model_dir, args.provider, graphs_on, args.reps)

            _section(result, "server_graphs" if graphs_on else "server", out, serve)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report(paths: Sequence[Path]) -> str:
    """Markdown of one or more ``measure`` results."""
    lines = ["# The CUDA path on a GPU (benchmarks/bench_gpu.py)", ""]
    for path in paths:
        r = json.loads(path.read_text())
        card = r.get("card", {})
        lines += [
            f"## {Path(r['model_dir']).name}",
            "",
            f"Card: {card.get('card')}; onnxruntime {card.get('onnxruntime')},"
            f" torch {card.get('torch')} (CUDA {card.get('cuda')}); fp16 matrix rate through"
            f" cuBLAS {_fmt(card.get('fp16_matmul_tflops'), 0)} TFLOP/s.",
            f"Engines: {json.dumps(r.get('engines'))}",
            "",
            "| figure | value |",
            "| --- | --- |",
        ]
        for key in ("word_cosine_plain", "word_cosine_graphs"):
            c = r.get(key)
            if not isinstance(c, dict) or "mean" not in c:
                continue
            lines.append(
                f"| {key} (mean / worst, {c.get('words')} words) |"
                f" {_fmt(c.get('mean'), 6)} / {_fmt(c.get('worst'), 6)} |"
            )
        for name, v in (r.get("bank_batch1") or {}).items():
            if isinstance(v, dict):
                rounds = ", ".join(f"{x:.3f}" for x in v["rounds_p50_ms"])
                lines.append(
                    f"| bank batch 1 {name} p50 ms ({r.get('bank_tokens')} tokens; rounds) |"
                    f" {v['p50_ms']:.3f} ({rounds}) |"
                )
        eager = r.get("torch_eager") or {}
        for k in ("fp32", "fp16"):
            if isinstance(eager.get(k), dict):
                lines.append(
                    f"| torch eager {k} p50 ms (random weights) | {eager[k]['p50_ms']:.3f} |"
                )
        if "speedup_vs_torch_eager" in r:
            lines.append(
                f"| speed-up vs faster torch eager | {_fmt(r['speedup_vs_torch_eager'], 1)}x |"
            )
        for key in sorted(k for k in r if k.startswith("calls_of_")):
            t = r[key]
            if "texts_per_s" in t:
                lines.append(
                    f"| {key.replace('_', ' ')} (max_padding {t.get('max_padding')}): texts/s,"
                    f" words/s | {_fmt(t['texts_per_s'], 0)}, {_fmt(t['words_per_s'], 0)} |"
                )
        roof = r.get("roofline")
        if roof:
            lines.append(
                f"| fastest calls of 256 (max_padding {roof.get('max_padding')}): TFLOP/s,"
                " fraction of fp16 matrix rate |"
                f" {_fmt(roof.get('achieved_tflops'), 1)},"
                f" {_fmt(roof.get('fraction_of_fp16_matmul'))} |"
            )
        for key in sorted(k for k in r if k.startswith("server")):
            server = r.get(key) or {}
            if "one_client_p50_ms" in server:
                load = server["clients_32"]
                lines.append(
                    f"| serve {' '.join(server['flags'])}: one client p50 ms; 32 clients"
                    f" ({server.get('channels', 1)} connections,"
                    f" {server.get('load_processes', 1)} load processes)"
                    f" texts/s | {server['one_client_p50_ms']:.3f};"
                    f" {_fmt(load.get('texts_per_s'), 0)} |"
                )
        errors = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
        if errors:
            lines += ["", f"Errors: {json.dumps(errors)}"]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--source", type=Path, required=True)
    r.add_argument("--model-dir", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model-dir", type=Path, required=True)
    m.add_argument("--reference", type=Path, required=True)
    m.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    m.add_argument("--server", action="store_true", help="also measure `ctxembed serve`")
    m.add_argument("--texts", type=int, default=1024)
    m.add_argument("--reps", type=int, default=300)
    m.add_argument(
        "--paddings",
        type=lambda v: [float(x) for x in v.split(",") if x],
        default=[0.1, 4.0],
        help="max_padding values measured beside the default (comma-separated)",
    )
    m.add_argument("--out", type=Path, required=True)
    w = sub.add_parser("workers", help="`serve --cuda-graphs` at several --workers counts")
    w.add_argument("--model-dir", type=Path, required=True)
    w.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    w.add_argument("--counts", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    w.add_argument("--reps", type=int, default=300)
    w.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("results", type=Path, nargs="+")
    args = p.parse_args(argv)
    if args.command == "reference":
        make_reference(args.source, args.model_dir, args.out)
    elif args.command == "workers":
        result: dict[str, Any] = {"model_dir": str(args.model_dir)}
        _section(result, "card", args.out, lambda: _card(args.provider))
        for n in args.counts:

            def serve(n: int = n) -> dict[str, Any]:
                graphs = args.provider == "cuda"
                return _server(
                    args.model_dir, args.provider, graphs, args.reps, n, channels=8, processes=4
                )

            _section(result, f"server_graphs_workers_{n}", args.out, serve)
    elif args.command == "report":
        print(report(args.results))
    else:
        measure(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
