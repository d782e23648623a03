"""The benchmark harness's arithmetic and report (not the timings themselves)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.report import markdown, plots
from benchmarks.run import Model, headline, roofline
from benchmarks.stats import (
    encoder_flops_per_token,
    median_spread,
    percentiles,
    ratio,
    roofline_fraction,
)


def test_percentiles_nearest_rank() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p = percentiles(samples)
    assert (p["p50_ms"], p["p90_ms"], p["p99_ms"]) == pytest.approx((50, 90, 99))
    assert p["mean_ms"] == pytest.approx(50.5) and p["n"] == 100
    assert percentiles([0.002])["p99_ms"] == pytest.approx(2)
    with pytest.raises(ValueError):
        percentiles([])


def test_median_spread_and_ratio() -> None:
    m = median_spread([10.0, 12.0, 11.0])
    assert (m["median"], m["min"], m["max"]) == (11.0, 10.0, 12.0)
    assert m["spread_pct"] == pytest.approx(100 * 1 / 11)
    assert ratio(6, 3) == 2 and math.isnan(ratio(1, 0))


def test_flops_formula_bert_base() -> None:
    # 12 layers · 2 · (4·768² + 2·768·3072 + 2·128·768) = 174.6 MFLOP per token at 128 tokens
    assert encoder_flops_per_token(768, 12, 3072, 128) == pytest.approx(174.59e6, rel=1e-3)
    assert roofline_fraction(1000, 1e6, 1e10) == pytest.approx(0.1)


def _sweep(*pairs: tuple[int, float]) -> list[dict[str, float]]:
    return [
        {
            "concurrency": c,
            "texts_per_s": t,
            "p50_ms": 1.0,
            "p90_ms": 2.0,
            "p99_ms": 3.0,
            "words_per_s": t * 10,
        }
        for c, t in pairs
    ]


def _result() -> dict[str, Any]:
    med = {"median": 10.0, "min": 9.0, "max": 11.0, "spread_pct": 10.0}
    engines = {
        "usual": {
            "latency_p50_ms": {**med, "median": 10.0},
            "texts_per_s": {**med, "median": 100.0},
        },
        "flair": {"latency_p50_ms": med, "texts_per_s": {**med, "median": 150.0}},
        "optimum": {"latency_p50_ms": med, "texts_per_s": {**med, "median": 300.0}},
        "ctxembed-fp32": {"error": "skipped"},
        "ctxembed-int8": {"latency_p50_ms": med, "texts_per_s": {**med, "median": 400.0}},
    }
    one = {
        "p50_ms": 2.0,
        "empty_rpc": {"p50_ms": 0.5},
        "bare_echo": {"p50_ms": 0.45},
        "python_floor": {"p50_ms": 1.6},
        "busy_echo": {"p50_ms": 2.5, "busy_ms": 1.5},
    }
    grpc = {
        "in_process_bank": {"p50_ms": 1.5},
        "bare_echo_32_clients_per_s": 4000.0,
        "default": {
            "one_client": one,
            "concurrency": _sweep((1, 200.0), (32, 600.0)),
            "startup_s": 0.4,
            "peak_rss_mb": 190.0,
            "stage_ms_per_request": {"queue": 1.0, "run": 1.5},
        },
    }
    return {"engines": engines, "grpc": grpc}


def test_headline_ratios() -> None:
    r = _result()
    h = headline(r["engines"], r["grpc"])
    assert h["usual_over_grpc_p50"] == pytest.approx(5.0)
    assert h["grpc32_over_flair"] == pytest.approx(4.0)
    assert h["grpc32_over_optimum"] == pytest.approx(2.0)
    assert h["grpc32_over_grpc1"] == pytest.approx(3.0)
    assert h["grpc_p50_minus_in_process_ms"] == pytest.approx(0.5)
    assert h["inproc_int8_over_usual_throughput"] == pytest.approx(4.0)


def test_int8_floor_is_the_tighter_bound(model_dir: Path) -> None:
    model = Model("m", model_dir, model_dir, True)
    engine = {"corpus": {"tokens": 200, "texts": 10, "embed_texts_per_s": 100.0}}
    engines = {"ctxembed-fp32": {"texts_per_s": {"median": 50.0}}}
    engines["ctxembed-int8"] = {"texts_per_s": {"median": 100.0}}
    flops = encoder_flops_per_token(384, 6, 1536, 20)
    fast_memory = roofline(
        model, engines, engine, {"int8_gflops": 100.0, "fp32_gflops": 50.0, "memory_gbps": 1e6}
    )
    compute = 100e9 / (flops * 20)
    assert fast_memory["int8_floor_texts_per_s"] == pytest.approx(compute)
    assert fast_memory["int8_share_of_int8_floor"] == pytest.approx(100.0 / compute)
    assert fast_memory["fp32_share_of_int8_floor"] == pytest.approx(50.0 / compute)
    slow_memory = roofline(
        model, engines, engine, {"int8_gflops": 100.0, "fp32_gflops": 50.0, "memory_gbps": 0.001}
    )
    weights = slow_memory["int8_weight_bytes"]
    assert slow_memory["int8_floor_texts_per_s"] == pytest.approx(32 * 1e6 / weights)


def test_report_renders(tmp_path: Path) -> None:
    r = _result()
    result = {
        "mode": "quick",
        "started": "now",
        "machine": {
            "cpu": "cpu",
            "logical_cpus": 2,
            "cpu_flags": ["avx2"],
            "python": "3.11",
            "versions": {"onnxruntime": "1"},
        },
        "matmul_peak": {"fp32_gflops": 100.0, "int8_gflops": 300.0},
        "import_torch_transformers_s": 2.0,
        "installed_size_mb": {"runtime_only": 100.0, "usual_recipe": 1000.0},
        "models": {
            "m": {
                "accuracy_claimed": True,
                "engines": r["engines"],
                "engine": {"error": "skipped"},
                "grpc": r["grpc"],
                "headline": headline(r["engines"], r["grpc"]),
                "roofline": {},
            }
        },
    }
    md = markdown(result)
    assert "**5.00×**" in md and "**4.00×**" in md and "not run: skipped" in md
    assert (
        "a bare grpc.aio echo server with no ctxembed code 0.45 ms: ctxembed's serving path"
        " beyond that echo **0.05 ms** (target ≤ 0.25)"
    ) in md
    assert "at most **5.13×** on this machine for any server" in md  # 10 / (1.5 + 0.45)
    assert "**6.25×** for the least a Python grpc.aio server does" in md  # 10 / 1.6
    assert "or **4.00×** with what this machine adds" in md  # 10 / 2.5
    assert "the echo computing 1.50 ms: p50 2.50 ms" in md
    written = plots(result, tmp_path, "quick")
    assert all(p.stat().st_size > 1000 for p in written)

    model: dict[str, Any] = result["models"]["m"]  # type: ignore[index]
    model["engine"] = {
        "bank": {
            "ratio_p50": 1.12,
            "embed": {"p50_ms": 0.84},
            "bare_session": {"p50_ms": 0.75},
            "stages_p50_ms": {"tokenize": 0.06, "run": 0.76, "pool": 0.02},
        },
        "corpus": {
            "embed_words_per_s": 9000.0,
            "bare_session_words_per_s": 6000.0,
            "embed_parallel_runs_words_per_s": 11000.0,
            "parallel_runs": 2,
        },
        "peak_rss_mb": 200.0,
        "onnx_ceiling_texts_per_s": {"1": 900.0, "8": 850.0},
        "after_idle_p50_ms": {"0": {"0": 0.8, "10": 5.2}, "3000": {"0": 0.8, "10": 1.9}},
    }
    md = markdown(result)
    assert "**1.120×** (0.840 vs 0.750 ms)" in md
    assert "with `parallel_runs=2` (opt-in, a second session): 11000 words/s" in md
    assert "stop at once: 0.80 ms after 0 ms idle, 5.20 ms after 10 ms idle" in md
    assert "3 ms: 0.80 ms after 0 ms idle, 1.90 ms after 10 ms idle" in md
    assert (
        "ceilings on this machine: ONNX runs alone with every core busy 900 at batch 1,"
        " 850 at batch 8 texts/s; a bare grpc.aio echo server 4000 requests/s to 32 clients"
    ) in md
    assert plots(result, tmp_path, "quick")
    model["roofline"] = {
        "flops_per_token": 170e6,
        "mean_tokens_per_text": 16.8,
        "fraction_of_int8_peak": 0.135,
        "fraction_of_fp32_peak": 0.68,
        "int8_floor_texts_per_s": 650.0,
        "int8_compute_floor_texts_per_s": 650.0,
        "int8_bandwidth_floor_texts_per_s": 2800.0,
        "int8_weight_bytes": 114 * 2**20,
        "fp32_share_of_int8_floor": 0.108,
        "int8_share_of_int8_floor": 0.2,
    }
    md = markdown(result)
    assert (
        "int8 floor, corpus in calls of 32: 650 texts/s (compute at the int8 matmul rate 650;"
        " the int8 file's 114 MiB read from memory once per call 2800); ctxembed fp32 reaches"
        " **10.8%** of it, int8 **20.0%**"
    ) in md


def test_gpu_script_dry_run_on_the_cpu(model_dir: Path, tmp_path: Path) -> None:
    """bench_gpu's whole measure path with --provider cpu, so the GPU run cannot rot unseen."""
    import json

    from benchmarks import bench_gpu
    from ctxembed.export.source import embedded_model_dir

    ref, out = tmp_path / "ref.npz", tmp_path / "gpu.json"
    bench_gpu.make_reference(embedded_model_dir(), model_dir, ref)
    args = ["--model-dir", str(model_dir), "--reference", str(ref), "--provider", "cpu"]
    flags = ["--reps", "3", "--texts", "8", "--paddings", "1.0", "--out", str(out)]
    assert bench_gpu.main(["measure", *args, *flags]) == 0
    result = json.loads(out.read_text())
    errors = {k: v for k, v in result.items() if isinstance(v, dict) and "error" in v}
    assert not errors
    assert result["word_cosine_plain"]["words"] > 2000
    assert result["word_cosine_plain"]["mean"] > 0.98  # the int8 variant on the CPU
    assert {"embed_plain", "bare_run_graphs"} <= set(result["bank_batch1"])
    assert result["calls_of_256_padding_1.0"]["max_padding"] == 1.0
    assert "fp32" in result["torch_eager"]
    assert "| bank batch 1 embed_plain" in bench_gpu.report([out])


def test_scale_report_renders() -> None:
    from benchmarks.bench_scale import markdown as scale_markdown

    server = {"texts_per_s": 600.0, "rounds_texts_per_s": [590.0, 610.0], "p50_ms": 50.0}
    result = {
        "machine": "test cpu, 2 vCPUs",
        "rounds": 2,
        "texts": 10,
        "replicas": {
            "1 server (defaults)": {**server, "errors": 0, "calls_per_server": [100]},
            "3 replicas (one core each)": {**server, "errors": 0, "calls_per_server": [1, 2, 3]},
        },
        "bulk": {"in process": {"words_per_s": 9.0, "rounds_words_per_s": [8.0, 10.0], "words": 5}},
    }
    text = scale_markdown(result)
    assert "| 3 replicas (one core each) | 600 | 590, 610 | 50.0 | 0 | [1, 2, 3] |" in text
    assert "| in process | 9 | 8, 10 | 5 |" in text


def test_serving_path_report_renders() -> None:
    from benchmarks.serving_path import LEVELS
    from benchmarks.serving_path import markdown as serving_markdown

    result = {
        "started": "now",
        "model_dir": "m",
        "rounds": 6,
        "reps": 150,
        "seconds": 3.0,
        "machine": {
            "cpu": "cpu",
            "cpu_flags": ["avx2"],
            "logical_cpus": 2,
            "versions": {"grpcio": "1"},
        },
        "result": {
            "p50_ms": {
                "in_process": 1.0,
                "echo": 0.4,
                "inline": 1.8,
                "no-inline": 2.0,
                "python floor": 1.7,
            },
            "beyond_echo_ms": {"inline": 0.4, "no-inline": 0.6, "python floor": 0.3},
            "texts_per_s": {
                "inline": {str(c): 110.0 for c in LEVELS},
                "no-inline": {str(c): 100.0 for c in LEVELS},
            },
        },
    }
    text = serving_markdown(result)
    assert "| gRPC, inline | 1.800 | **0.400** (missed) |" in text
    assert "| gRPC, no-inline | 2.000 | **0.600** (missed) |" in text
    assert "| 32 | 110.0 | 100.0 | 1.10 |" in text
    assert "| gRPC, the Python floor (`benchmarks.floor_server`) | 1.700 | 0.300 |" in text
    assert "serve (inline) adds 0.100 ms on top of it" in text
    assert "sits below that floor" in text
    assert "busy for the in-process p50" not in text  # saved before the busy echo existed
    figures: dict[str, Any] = result["result"]  # type: ignore[assignment]
    figures["p50_ms"]["busy echo"] = 1.52
    figures["beyond_echo_ms"]["busy echo"] = 0.12
    text = serving_markdown(result)
    assert "| the echo, its handler busy for the in-process p50 | 1.520 | 0.120 |" in text
    assert "Of the floor, 0.120 ms is paid by the bare echo" in text
    assert "The other 0.180 ms is the floor's own" in text
    assert "C++" not in text  # saved before the native echo existed
    figures["native"] = {"echo": "built", "front": "no shared libpython"}
    assert "No C++ front in this run: no shared libpython." in serving_markdown(result)
    figures["native"]["front"] = "built"
    figures["p50_ms"] |= {"native echo": 0.2, "native busy echo": 1.3, "native front": 1.6}
    figures["beyond_echo_ms"] |= {"native busy echo": -0.1, "native front": 0.2}
    text = serving_markdown(result)
    assert "| the C++ echo, busy for the in-process p50 | 1.300 | -0.100 |" in text
    assert "stayed under 0.350 ms." in text
    assert "behind a C++ transport (`benchmarks/native/front.cc`) | 1.600 | 0.200 |" in text
    assert "meets it: 0.200 ms beyond the echo, against the Python floor's 0.300." in text
    assert "No C++" not in text


def _native(name: str) -> Path:
    """benchmarks/native/NAME.cc built, where grpc++ can be built here; otherwise the reason
    names what is missing (serving_path then prints it and goes on)."""
    from benchmarks import native

    binary = native.build(name)
    if isinstance(binary, str):
        assert "apt-get install" in binary or "libpython" in binary or "compile" in binary
        pytest.skip(binary)
    return binary


def test_the_native_echo_answers_as_the_python_one() -> None:
    import time

    import grpc

    from benchmarks import echo_server, native

    with (
        native.serve(_native("echo")) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        echo = channel.unary_unary(echo_server.METHOD, None, None)
        assert echo(b"abc") == b"abc" and echo(b"") == b""
        start = time.perf_counter()
        assert echo(echo_server.busy_request(0.05)) == b""
        assert time.perf_counter() - start >= 0.05
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/bench.Echo/Other", None, None)(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_busy_echo_computes_for_as_long_as_asked() -> None:
    """serving_path's busy echo: a round trip around that much server work, no ctxembed code."""
    import time

    import grpc

    from benchmarks import echo_server
    from benchmarks.bench_grpc import _echo_server

    with _echo_server() as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(echo_server.METHOD, None, None)
        assert echo(b"abc") == b"abc"
        start = time.perf_counter()
        assert echo(echo_server.busy_request(0.05)) == b""
        assert time.perf_counter() - start >= 0.05


def test_the_floor_server_answers_as_the_engine(model_dir: Path, embedder: Any) -> None:
    """benchmarks.floor_server (serving_path's lower bound) does the real work of a call."""

    from benchmarks.bench_grpc import port_server
    from ctxembed.client import Client
    from ctxembed.runtime import TextInput

    bank = [TextInput(text="I sat by the river bank", select_words=["bank"])]
    with (
        port_server("benchmarks.floor_server", str(model_dir)) as port,
        Client(f"127.0.0.1:{port}") as client,
    ):
        [served] = client.embed(bank)
    [local] = embedder.embed(bank)
    assert [w.text for w in served.words] == ["bank"]
    np.testing.assert_allclose(served.vectors, local.vectors, rtol=1e-5, atol=1e-6)


def test_the_native_front_answers_as_the_engine(model_dir: Path, embedder: Any) -> None:
    """benchmarks/native/front.cc: the floor's work behind a C++ transport, the same answers;
    an error in the embedded handler is the call's error, not the server's end."""
    import grpc

    from benchmarks import native
    from ctxembed.client import Client
    from ctxembed.runtime import TextInput

    bank = [TextInput(text="I sat by the river bank", select_words=["bank"])]
    with (
        native.serve(_native("front"), str(model_dir)) as port,
        Client(f"127.0.0.1:{port}") as client,
    ):
        [served] = client.embed(bank)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            embed = channel.unary_unary("/ctxembed.v1.WordEmbedder/Embed", None, None)
            with pytest.raises(grpc.RpcError) as info:
                embed(b"\xff\xff")  # not an EmbedRequest
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [again] = client.embed(bank)
    [local] = embedder.embed(bank)
    assert [w.text for w in served.words] == ["bank"]
    np.testing.assert_allclose(served.vectors, local.vectors, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served.vectors, again.vectors)


def test_one_client_sets_the_floor_and_a_busy_echo_beside_ctxembed(model_dir: Path) -> None:
    """make bench's default setting: ctxembed, the Python floor and an echo computing for the
    given time, in interleaved rounds (the served bound for target 3 reads all three)."""
    from benchmarks.bench_grpc import one_client, start_server, stop

    server, _ = start_server(model_dir, [])
    try:
        result = one_client(server.address, 8, model_dir, busy_s=0.02)
    finally:
        stop(server)
    assert result["busy_echo"]["busy_ms"] == pytest.approx(20.0)
    assert result["busy_echo"]["p50_ms"] >= 20.0
    assert 0 < result["python_floor"]["p50_ms"] < 20.0 and 0 < result["p50_ms"] < 20.0


def test_a_cached_export_chosen_from_another_auto_order_is_rebuilt(
    model_dir: Path, tmp_path: Path
) -> None:
    """make bench reuses its MPNet export only while an export today would make the same."""
    import json

    from benchmarks.run import _has_scheme
    from ctxembed.export.int8_schemes import AUTO_ORDER

    assert _has_scheme(model_dir)  # a named scheme: no order to compare
    data = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    for item in model_dir.iterdir():
        if item.name != "manifest.json":
            (tmp_path / item.name).symlink_to(item)
    [int8] = [v for v in data["variants"] if v["name"] == "int8"]

    def has_scheme_with(order: list[str]) -> bool:
        int8["quantization"]["auto"] = {"order": order}
        (tmp_path / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
        return _has_scheme(tmp_path)

    assert has_scheme_with(list(AUTO_ORDER))
    assert not has_scheme_with(["smooth", "blockwise"])
    # the same order, but fused before MatMuls that share an input were merged
    del int8["optimization"]["merged_matmuls"]
    assert not has_scheme_with(list(AUTO_ORDER))


def test_report_prints_int8_over_fp32() -> None:
    from benchmarks.report import _int8_over_fp32

    med = {"median": 10.0, "min": 9.0, "max": 11.0, "spread_pct": 10.0}
    engines = {
        "ctxembed-fp32": {"latency_p50_ms": {**med, "median": 22.0}, "texts_per_s": med},
        "ctxembed-int8": {
            "latency_p50_ms": {**med, "median": 10.0},
            "texts_per_s": {**med, "median": 19.0},
        },
    }
    [line] = _int8_over_fp32(engines)
    assert "bank p50 **2.20×**, corpus texts/s **1.90×**" in line
    assert _int8_over_fp32({"ctxembed-fp32": {"error": "skipped"}}) == []


def test_int8_report_names_the_shipped_default_and_its_ratio_to_fp32() -> None:
    from benchmarks.bench_int8 import markdown as int8_markdown

    def row(p50: float, tps: float, **quantization: Any) -> dict[str, Any]:
        return {
            "word_mean": 0.999,
            "word_min": 0.99,
            "bank_p50_ms": p50,
            "bank_speed_ratio": 1.0,
            "texts_per_s": tps,
            "texts_speed_ratio": 1.0,
            "meets_accuracy": True,
            "meets_speed": False,
            "quantization": quantization,
        }

    schemes = {
        "fp32": row(20.0, 60.0),
        "default": row(8.0, 120.0, scheme="outlier", fp32_fallback=["/l4/down/MatMul"]),
    }
    result = {
        "started": "now",
        "rounds": 3,
        "machine": {"cpu": "cpu", "cpu_flags": ["avx2"], "versions": {"onnxruntime": "1"}},
        "models": {"mpnet": {"schemes": schemes}},
    }
    text = int8_markdown(result)
    assert "| default: outlier + 1 fp32 | 0.9990 | 0.9900 | 8.00 |" in text
    assert (
        "default: outlier + 1 fp32: int8 ÷ fp32 bank p50 **2.50×**, corpus texts/s **2.00×**"
        in text
    )
    schemes["default"]["quantization"] = {"scheme": "outlier", "blockwise_fallback": ["/l4"]}
    assert "| default: outlier + 1 blockwise | 0.9990 |" in int8_markdown(result)


@pytest.mark.slow
def test_make_bench_runs_through_in_smoke_mode(model_dir: Path, tmp_path: Path) -> None:
    """Every step of benchmarks.run once on a few texts (~1 minute): a harness that breaks
    half-way through a 12-minute `make bench` shows here. Engines not installed are reported."""
    import json

    from benchmarks.run import main as bench_main

    args = ["--smoke", "--skip-base", "--model-dir", str(model_dir), "--results", str(tmp_path)]
    assert bench_main(args) == 0
    result = json.loads((tmp_path / "smoke.json").read_text(encoding="utf-8"))
    model = result["models"]["all-MiniLM-L6-v2"]
    assert model["engines"]["ctxembed-int8"]["texts_per_s"]["median"] > 0
    assert model["roofline"]  # read from the engine figures (a name once shadowed them)
    one = model["grpc"]["default"]["one_client"]
    assert one["busy_echo"]["busy_ms"] == pytest.approx(model["grpc"]["in_process_bank"]["p50_ms"])
    md = (tmp_path / "smoke.md").read_text(encoding="utf-8")
    assert "## all-MiniLM-L6-v2" in md and "for the least a Python grpc.aio server does" in md
    assert len(list(tmp_path.glob("smoke-*.png"))) == 3


def test_the_kernels_benchmark_times_both_ways_and_skips_other_graphs(
    outlier_export: Path, model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from benchmarks.fused_kernels import measure
    from ctxembed.kernels import library
    from ctxembed.runtime.manifest import load_manifest

    if library() is None:
        pytest.skip("the kernels are not built here")
    result = measure(outlier_export, rounds=1, reps=3, texts=8)
    assert result["products"] > 0 and result["layer_norms"] > 0
    assert result["worst_word_cosine"] > 0.9999 and result["max_abs_diff"] < 1e-2
    assert (
        set(result["bank_p50_ms"])
        == set(result["corpus_texts_per_s"])
        == {
            "kernels",
            "standard",
        }
    )
    assert result["bank_saving_ms"] == pytest.approx(
        result["bank_p50_ms"]["standard"] - result["bank_p50_ms"]["kernels"]
    )
    other = tmp_path / "no-functions"  # a folder exported before: nothing to time
    shutil.copytree(model_dir, other)
    manifest = load_manifest(other)
    for variant in manifest.variants:
        variant.optimization.pop("fused_chains", None)
    (other / "manifest.json").write_text(manifest.to_json())
    assert measure(other, rounds=1, reps=3, texts=8) == {"products": 0, "layer_norms": 0}


def test_report_prints_the_kernels_on_and_off() -> None:
    from benchmarks.report import _fused_kernels

    model: dict[str, Any] = {}
    assert _fused_kernels(model) == []
    model["fused_kernels"] = {
        "products": 47,
        "layer_norms": 25,
        "nodes": [1206, 813],
        "identical": True,
        "worst_word_cosine": 1.0,
        "max_abs_diff": 0.0,
        "bank_p50_ms": {"standard": 9.0, "kernels": 8.0},
        "corpus_texts_per_s": {"standard": 110.0, "kernels": 137.5},
        "bank_saving_ms": 1.0,
        "corpus_speedup": 1.25,
    }
    [line] = _fused_kernels(model)
    assert (
        "the 47 int8 products' per-row chains and 25 layer norms as one kernel each,"
        " 1206 → 813 nodes"
    ) in line
    assert "bit for bit the same vectors" in line
    assert "bank 9.00 → 8.00 ms in process, corpus 110.0 → 137.5 texts/s (**1.25×**)" in line
    model["fused_kernels"] |= {"identical": False, "worst_word_cosine": 0.9999991}
    model["fused_kernels"] |= {"max_abs_diff": 2.4e-6, "products": 0}
    [line] = _fused_kernels(model)
    assert "(`benchmarks.fused_kernels`: 25 layer norms as one kernel each" in line
    assert "worst word cosine 0.999999, largest difference 2.4e-06" in line
    model["fused_kernels"] = {"products": 47, "nodes": [1206, 813], "error": "not built"}
    assert _fused_kernels(model) == ["- fused kernels: not timed: not built"]


def test_int8_scheme_folders_carry_the_chains_the_export_ships(
    outlier_export: Path, tmp_path: Path
) -> None:
    """bench-int8 times each scheme as the export ships it: chains wrapped for the kernels."""
    import shutil

    from benchmarks.bench_int8 import scheme_folder
    from ctxembed.runtime import WordEmbedder
    from ctxembed.runtime.manifest import load_manifest

    fp32 = tmp_path / "fp32"
    shutil.copytree(outlier_export, fp32)
    manifest = load_manifest(fp32)
    (fp32 / "model_int8.onnx").unlink()  # what bench_int8's fp32-only export holds
    (fp32 / "manifest.json").write_text(
        manifest.__class__(**{**vars(manifest), "variants": [manifest.variant("fp32")]}).to_json()
    )
    folder = scheme_folder(fp32, "outlier")
    facts = load_manifest(folder).variant("int8").optimization["fused_chains"]
    assert facts["products"] > 0  # its layer norms came wrapped from the fp32 graph
    with WordEmbedder.load(folder, "cpu") as emb:
        assert emb.embed(["the river bank"])[0].vectors.shape == (3, 64)
