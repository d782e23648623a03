"""``ctxembed export``: manifest, hashes, validation, atomic writes, local folders, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxembed.cli import main
from ctxembed.export.int8_schemes import AUTO_ORDER
from ctxembed.export.validate import FUSED, PROBE_TEXTS, STANDARD, shipped_kernels, worse_of
from ctxembed.runtime import WordEmbedder
from ctxembed.runtime.cpu import kernel_flags
from ctxembed.runtime.manifest import load_manifest


def test_manifest_describes_the_folder(model_dir: Path) -> None:
    manifest = load_manifest(model_dir)
    raw = json.loads((model_dir / "manifest.json").read_text())
    assert raw["format"] == "ctxembed-model" and raw["format_version"] == 1
    assert manifest.architecture == "BertModel"
    assert (manifest.hidden_size, manifest.num_layers, manifest.max_tokens) == (384, 6, 512)
    assert manifest.layers_available == list(range(7))
    assert manifest.tokenizer.lowercase is True
    assert manifest.tokenizer.special_tokens["cls_token"] == "[CLS]"
    assert {"optimum", "onnxruntime", "transformers", "torch"} <= set(manifest.tools)
    assert [v.name for v in manifest.variants] == ["fp32", "int8"]
    int8 = manifest.variant("int8")
    assert int8.quantization is not None and int8.quantization["preset"] in (
        "avx2",
        "avx512",
        "avx512_vnni",
        "arm64",
    )
    assert int8.optimization["fusions"].get("Attention", 0) == 6
    # named, not searched (conftest.py; auto's record: test_auto_scheme_*, test_fallback.py)
    q = int8.quantization
    assert q["scheme"] == "outlier" and "auto" not in q
    assert q["activations"] in ("calibrated", "blockwise") and not int8.dynamic_activation_scales
    if q.get("blockwise_nodes"):
        assert q["min_onnxruntime"] == "1.22" and q["blockwise"]["bits"] == 8
    for v in manifest.variants:
        data = (model_dir / v.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == v.sha256
        assert len(data) == v.size_bytes
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    assert tok["padding"] is None and tok["truncation"] is None
    assert not list(model_dir.parent.glob(".*tmp*")), "temporary folder left behind"
    # --int8-embeddings: the table is 8-bit blocks per row, the int8 file a quarter of fp32's
    table = int8.quantization["word_embeddings"]
    assert table["op"] == "GatherBlockQuantized" and table["fused"] and table["rows"] == 30522
    assert int8.size_bytes <= 25 * 2**20 < manifest.variant("fp32").size_bytes / 3
    # where each variant was validated (a folder exported here also runs on other CPUs)
    assert all(
        (v.validation or {}).get("machine") in ("x86_64", "aarch64") for v in manifest.variants
    )
    assert all(v.validation["cpu_flags"] == kernel_flags() for v in manifest.variants)


def test_validation_figures_meet_thresholds(model_dir: Path) -> None:
    manifest = load_manifest(model_dir)
    fp32 = manifest.variant("fp32").validation
    int8 = manifest.variant("int8").validation
    assert fp32["passed"] and int8["passed"]
    assert fp32["token_cosine_min"] >= 0.9999 and fp32["word_cosine_min"] >= 0.9999
    assert int8["word_cosine_mean"] >= 0.995 and int8["word_cosine_min"] >= 0.98
    assert int8["texts"] == len(PROBE_TEXTS) and int8["words"] > 300


def test_cpu_variants_validated_as_served(model_dir: Path) -> None:
    """Servers run a CPU graph's functions as the fused kernels where the install built them,
    as onnxruntime's operators elsewhere: the export validates both and keeps the worse."""
    if shipped_kernels() is None:
        pytest.skip("the fused kernels were not built here (no C compiler)")
    manifest = load_manifest(model_dir)
    for name in ("fp32", "int8"):
        figures = manifest.variant(name).validation
        runs = figures["runs"]
        assert set(runs) == {STANDARD, FUSED} and all(r["passed"] for r in runs.values())
        for key in ("word_cosine_mean", "word_cosine_min", "token_cosine_min"):
            assert figures[key] == min(r[key] for r in runs.values())
        # the two differ (layer norms rounded apart), so both really ran
        assert runs[STANDARD]["max_abs_diff"] != runs[FUSED]["max_abs_diff"]


def test_a_variant_failing_one_way_fails() -> None:
    def figures(word_min: float) -> dict[str, object]:
        failures = [f"word_cosine_min {word_min:.6f} < 0.98"] if word_min < 0.98 else []
        return {
            "texts": 3,
            "word_cosine_mean": 0.999,
            "word_cosine_min": word_min,
            "token_cosine_min": 0.99,
            "max_abs_diff": 0.1,
            "passed": not failures,
            "failures": failures,
        }

    worse = worse_of({STANDARD: figures(0.985), FUSED: figures(0.975)})
    assert not worse["passed"] and worse["word_cosine_min"] == 0.975
    assert worse["failures"] == ["word_cosine_min 0.975000 < 0.98 (fused_kernels)"]
    assert worse_of({STANDARD: figures(0.985)}) == figures(0.985)  # one way: as it was


def test_local_folder_export_and_force(
    tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny"
    assert main(["export", "--model", str(tiny_source), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[6/6] Validating" in printed and str(out) in printed
    manifest = load_manifest(out)
    assert manifest.hidden_size == 64 and manifest.num_layers == 2
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's owner-only folder
    assert all(f.stat().st_mode & 0o666 == 0o666 & ~mask for f in out.iterdir())
    assert manifest.max_tokens == 128
    quantization = manifest.variant("int8").quantization or {}
    assert quantization["selection"] == {
        "set": "built-in probe texts (validate.PROBE_TEXTS)",
        "texts": 36,
    }
    assert "word_embeddings" not in quantization  # the table stays fp32 unless asked
    first = manifest.created

    assert main(["export", "--model", str(tiny_source), "--out", str(out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert load_manifest(out).created == first  # untouched

    assert (
        main(
            [
                "export",
                "--model",
                str(tiny_source),
                "--out",
                str(out),
                "--force",
                "--quantize",
                "none",
            ]
        )
        == 0
    )
    assert [v.name for v in load_manifest(out).variants] == ["fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_selection_texts_choose_and_validate(tiny_source: Path, tmp_path: Path) -> None:
    """--selection-texts: every variant is validated (and the int8 scheme chosen) on that set,
    and the manifest names it."""
    texts = tmp_path / "selection.txt"
    texts.write_text("The river bank flooded.\n\nI paid at the bank.\nDrei Wörter hier.\n")
    out = tmp_path / "tiny"
    assert main(["export", "--model", str(tiny_source), "--out", str(out),
                 "--selection-texts", str(texts)]) == 0  # fmt: skip
    int8 = load_manifest(out).variant("int8")
    assert (int8.quantization or {})["selection"]["texts"] == 3
    assert (int8.quantization or {})["selection"]["set"].startswith("selection.txt (sha256 ")
    assert int8.validation["texts"] == 3
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    args = ["export", "--model", str(tiny_source), "--out", str(tmp_path / "x")]
    assert main([*args, "--selection-texts", str(empty)]) == 1


def test_int8_activation_ranges_calibrated_or_dynamic(tiny_source: Path, tmp_path: Path) -> None:
    import onnx

    from ctxembed.export.calibration_texts import CALIBRATION_TEXTS

    ops = {}
    for mode in ("calibrated", "dynamic"):
        out = tmp_path / mode
        args = ["export", "--model", str(tiny_source), "--out", str(out)]
        assert main([*args, "--int8-activations", mode]) == 0
        int8 = load_manifest(out).variant("int8")
        assert int8.quantization is not None and int8.quantization["activations"] == mode
        assert int8.dynamic_activation_scales is (mode == "dynamic")
        graph = onnx.load(str(out / int8.file)).graph
        ops[mode] = [n.op_type for n in graph.node]
        with WordEmbedder.load(out, provider="cpu") as emb:
            assert emb.isolate_rows is (mode == "dynamic")  # dynamic int8 rows run alone
    calibrated = load_manifest(tmp_path / "calibrated").variant("int8")
    int8_quantization = calibrated.quantization or {}
    assert int8_quantization["calibration_texts"] == len(CALIBRATION_TEXTS)
    # every run-time range estimate became a constant-range QuantizeLinear
    assert "DynamicQuantizeLinear" not in ops["calibrated"]
    assert (
        ops["calibrated"].count("QuantizeLinear")
        == ops["dynamic"].count("DynamicQuantizeLinear")
        == int8_quantization["calibrated_tensors"]
    )


def test_calibrated_scale_matches_onnx_dynamic_quantize() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ctxembed.export.calibrate import ActivationRange

    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [
            helper.make_tensor_value_info("q", TensorProto.UINT8, [None]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("zero", TensorProto.UINT8, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for x in (rng.normal(0.3, 2.0, 500), rng.uniform(0.5, 3.0, 50), -rng.uniform(1, 9, 50)):
        x = x.astype(np.float32)
        _, scale, zero = session.run(None, {"x": x})
        ours = ActivationRange(float(x.min()), float(x.max())).scale_and_zero_point()
        assert ours[0] == pytest.approx(float(scale), rel=1e-6) and ours[1] == int(zero)


def test_failing_validation_writes_nothing(
    tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    code = main(
        ["export", "--model", str(tiny_source), "--out", str(out), "--int8-word-mean", "0.9999"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "validation failed; nothing was written" in err
    assert "int8" in err and "FAIL" in err and "word_cosine_mean" in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unsupported_family_lists_supported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import GPT2Config

    folder = tmp_path / "gpt"
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(folder)
    assert main(["export", "--model", str(folder), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "'gpt2'" in err and "bert, camembert, distilbert" in err
    assert "Traceback" not in err


def test_unknown_hub_id_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctxembed.cli",
            "export",
            "--model",
            "nobody/no-such-model-xyz",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines and "nobody/no-such-model-xyz" in lines[0] and "Hub" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cuda_target_writes_validated_fp16(tiny_source: Path, tmp_path: Path) -> None:
    from ctxembed.runtime import WordEmbedder

    out = tmp_path / "fp16"
    assert main(["export", "--model", str(tiny_source), "--out", str(out), "--target", "cuda"]) == 0
    manifest = load_manifest(out)
    fp16 = manifest.variant("fp16")
    assert (fp16.precision, fp16.target, fp16.file) == ("fp16", "cuda", "model_fp16.onnx")
    assert fp16.validation["passed"] and fp16.validation["word_cosine_min"] >= 0.99
    assert fp16.validation["provider"] in ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert fp16.size_bytes < manifest.variant("fp32").size_bytes * 0.6
    [res] = WordEmbedder.load(out, provider="cpu", variant="fp16").embed(["half precision"])
    assert res.vectors.shape == (2, 64)


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("/proc/x", "--out /proc/x: cannot write in /proc"),
        ("/etc/hostname/model", "--out /etc/hostname/model: cannot write in /etc/hostname"),
        ("/etc/hostname", "--out /etc/hostname is a file, not a folder"),
    ],
)
def test_unwritable_output_fails_first_in_one_line(out: str, message: str) -> None:
    if not (Path("/proc/self").is_dir() and Path("/etc/hostname").is_file()):
        pytest.skip("needs a Linux /proc and /etc/hostname")
    proc = subprocess.run(
        [sys.executable, "-m", "ctxembed.cli", "export", "--out", out],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "[1/6]" not in proc.stdout  # checked before any work


def test_export_refuses_to_replace_its_source(
    tiny_source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for out in (tiny_source, tiny_source.parent):
        code = main(["export", "--model", str(tiny_source), "--out", str(out), "--force"])
        assert code == 1
        assert "is or contains the model being exported" in capsys.readouterr().err
    assert (tiny_source / "config.json").is_file()


@pytest.mark.parametrize("scheme", ["smooth", "smooth-blockwise-ffn", "blockwise"])
def test_int8_schemes_batch_exactly_as_alone(
    tiny_source: Path, tmp_path: Path, scheme: str
) -> None:
    import onnx

    out = tmp_path / scheme
    args = ["export", "--model", str(tiny_source), "--out", str(out), "--int8-scheme", scheme]
    assert main([*args, "--int8-word-mean", "0.9", "--int8-word-min", "0.5"]) == 0
    int8 = load_manifest(out).variant("int8")
    q = int8.quantization or {}
    assert q["scheme"] == scheme and not int8.dynamic_activation_scales
    ops = [n.op_type for n in onnx.load(str(out / int8.file)).graph.node]
    assert ("MatMulNBits" in ops) is (scheme != "smooth")
    assert ("Mul" in ops and q["smoothing"]["tensors"] > 0) if scheme.startswith("smooth") else True
    texts = ["short", "a somewhat longer text about the river bank", "bank " * 40]
    with WordEmbedder.load(out, provider="cpu") as emb:
        assert not emb.isolate_rows
        batched = emb.embed(texts)
        for text, res in zip(texts, batched, strict=True):
            np.testing.assert_array_equal(res.vectors, emb.embed([text])[0].vectors)


def test_auto_scheme_takes_the_first_that_passes(tiny_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "easy"
    args = ["export", "--model", str(tiny_source), "--quantize", "int8"]
    assert main([*args, "--out", str(out), "--int8-word-mean", "0", "--int8-word-min", "0"]) == 0
    q = load_manifest(out).variant("int8").quantization or {}
    assert q["scheme"] == AUTO_ORDER[0] and list(q["auto"]["tried"]) == [AUTO_ORDER[0]]


def test_auto_scheme_none_passing_lists_what_was_tried(
    tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "impossible"
    args = ["export", "--model", str(tiny_source), "--out", str(out), "--int8-word-min", "1.01"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "int8 schemes tried:" in err and all(scheme in err for scheme in AUTO_ORDER)
    assert "--quantize none" in err and not out.exists()


def test_int8_activations_is_shorthand_for_the_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--int8-activations", "dynamic", "--int8-scheme", "blockwise"])
    assert info.value.code == 2
    assert "shorthand for --int8-scheme" in capsys.readouterr().err


def test_smoothing_keeps_the_fp32_function(model_dir: Path, tmp_path: Path) -> None:
    """Smoothing only moves scale from activations into weights: fp32 outputs stay the same."""
    import onnxruntime as ort

    from ctxembed.export.calibrate import calibration_feeds
    from ctxembed.export.smooth import smooth_graph

    manifest = load_manifest(model_dir)
    feeds = calibration_feeds(model_dir / "tokenizer.json", manifest.graph_inputs, 512)
    facts = smooth_graph(model_dir / "model.onnx", tmp_path / "smooth.onnx", feeds[:8])
    assert facts["smoothing"]["tensors"] == 24  # 6 layers: attention, out, up, down inputs
    plain = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    smooth = ort.InferenceSession(str(tmp_path / "smooth.onnx"), providers=["CPUExecutionProvider"])
    for feed in feeds[-5:]:
        a = plain.run(["last_hidden_state"], feed)[0]
        b = smooth.run(["last_hidden_state"], feed)[0]
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_variants_keeps_only_what_a_deployment_serves(tiny_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8-only"
    args = ["export", "--model", str(tiny_source), "--out", str(out)]
    assert main([*args, "--variants", "int8"]) == 0
    manifest = load_manifest(out)
    assert [v.name for v in manifest.variants] == ["int8"]
    assert not (out / "model.onnx").exists() and (out / "model_int8.onnx").is_file()
    assert manifest.variant("int8").validation["passed"]  # validated like any variant
    with WordEmbedder.load(out, provider="cpu") as emb:
        assert emb.embed(["river bank"])[0].vectors.shape == (2, 64)
    other = ["export", "--model", str(tiny_source), "--out", str(tmp_path / "x")]
    assert main([*other, "--variants", "fp16"]) == 1  # a CPU export builds no fp16
