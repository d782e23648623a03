"""WordEmbedder: API, selection, long texts, batching, errors, load failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctxembed.runtime import (
    CharSpan,
    EngineSettings,
    InvalidInput,
    Limits,
    ModelLoadError,
    ProviderUnavailable,
    TextInput,
    WordEmbedder,
)
from ctxembed.runtime.manifest import load_manifest
from testkit.corpus import load_corpus

BANK = "I live near the bank of America"


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_bank_example(embedder: WordEmbedder) -> None:
    [res] = embedder.embed([BANK])
    assert [w.text for w in res.words] == ["I", "live", "near", "the", "bank", "of", "America"]
    assert (res.words[4].start, res.words[4].end) == (16, 20)
    assert res.vectors.shape == (7, 384) and res.vectors.dtype == np.float32
    assert res.num_tokens == 7 and res.num_windows == 1


def test_select_words_every_occurrence_case_insensitive(embedder: WordEmbedder) -> None:
    text = "The Bank said the bank of the river is not a BANK."
    [res] = embedder.embed([TextInput(text=text, select_words=["bank"])])
    assert [w.text for w in res.words] == ["Bank", "bank", "BANK"]
    assert [w.index for w in res.words] == [1, 4, 11]
    [none] = embedder.embed([TextInput(text=text, select_words=["zebra"])])
    assert none.words == () and none.vectors.shape == (0, 384)
    assert none.num_windows == 0  # nothing to compute: the model did not run
    [blank] = embedder.embed([" \t\n "])
    assert (blank.words, blank.num_tokens, blank.num_windows) == ((), 0, 0)


def test_select_multi_piece_word(embedder: WordEmbedder) -> None:
    [res] = embedder.embed(
        [TextInput(text="Contextual embeddings help.", select_words=["Embeddings"])],
        include_tokens=True,
    )
    [word] = res.words
    assert word.text == "embeddings" and len(word.tokens) == 4
    [full] = embedder.embed(["Contextual embeddings help."])
    np.testing.assert_allclose(res.vectors[0], full.vectors[1], rtol=1e-6)


def test_select_spans(embedder: WordEmbedder) -> None:
    spans = [CharSpan(16, 31), CharSpan(17, 19)]
    [res] = embedder.embed([TextInput(text=BANK, select_spans=spans)], include_tokens=True)
    assert [w.text for w in res.words] == ["bank of America", "an"]
    assert len(res.words[0].tokens) == 3 and [t.piece for t in res.words[1].tokens] == ["bank"]
    [full] = embedder.embed([BANK])
    np.testing.assert_allclose(res.vectors[0], full.vectors[4:7].mean(0), rtol=1e-5, atol=1e-6)


def test_options(embedder: WordEmbedder) -> None:
    [mean] = embedder.embed([BANK])
    [half] = embedder.embed([BANK], dtype="float16", normalize=True)
    assert half.vectors.dtype == np.float16
    np.testing.assert_allclose(
        np.linalg.norm(half.vectors.astype(np.float32), axis=1), 1, atol=2e-3
    )
    [fl] = embedder.embed([BANK], pooling="first_last")
    assert fl.vectors.shape == (7, 768)
    [cat] = embedder.embed([BANK], layers=[-1, -2, 0], layer_combine="concat")
    assert cat.vectors.shape == (7, 3 * 384)
    np.testing.assert_allclose(cat.vectors[:, :384], mean.vectors, rtol=1e-5, atol=1e-5)
    for pooling in ("first", "last", "max"):
        [r] = embedder.embed(["antidisestablishmentarianism"], pooling=pooling)
        assert r.vectors.shape == (1, 384)


def test_results_in_input_order_and_independent_of_batch(fp32_embedder: WordEmbedder) -> None:
    texts = ["short", BANK, "a considerably longer sentence " * 8, "東京", "mid length text here"]
    together = fp32_embedder.embed(texts)
    for text, res in zip(texts, together):
        [alone] = fp32_embedder.embed([text])
        assert [w.text for w in res.words] == [w.text for w in alone.words]
        for a, b in zip(res.vectors, alone.vectors):
            assert _cos(a, b) >= 0.9999


def test_long_text_windows(fp32_embedder: WordEmbedder) -> None:
    words = [f"word{i % 50} is here" for i in range(300)]
    text = " ".join(words)
    [res] = fp32_embedder.embed([text])
    assert res.num_windows > 1 and res.num_tokens > 510
    for w in res.words:
        assert text[w.start : w.end] == w.text
    # the first words sit in the first window, which sees exactly the text's first 510 tokens
    small = WordEmbedder(
        fp32_embedder.model_dir,
        fp32_embedder.manifest,
        fp32_embedder.session,
        fp32_embedder.tokenizer,
        EngineSettings(run_batch_tokens=1),
    )
    [again] = small.embed([text])
    np.testing.assert_allclose(again.vectors, res.vectors, rtol=1e-5, atol=1e-5)
    [short] = fp32_embedder.embed([" ".join(words[:20])])
    assert short.num_windows == 1


def test_stride_controls_window_count(model_dir: Path) -> None:
    text = " ".join(["tokens"] * 1200)
    counts = []
    for stride in (100, 255, 510):
        emb = WordEmbedder.load(model_dir, provider="cpu", stride=stride)
        counts.append(emb.embed([text])[0].num_windows)
    assert counts[0] > counts[1] > counts[2] >= 3


@pytest.mark.parametrize(
    ("inputs", "kwargs", "field"),
    [
        ([""], {}, "inputs[0].text"),
        (["ok", "x" * 200], {}, "inputs[1].text"),
        ([["a", ""]], {}, "inputs[0].words[1]"),
        ([[]], {}, "inputs[0].words"),
        ([["w"] * 30], {}, "inputs[0].words"),
        ([TextInput(text="abc", select_spans=[CharSpan(1, 9)])], {}, "inputs[0].select_spans[0]"),
        ([TextInput(text="a  b", select_spans=[CharSpan(1, 2)])], {}, "inputs[0].select_spans[0]"),
        ([TextInput(text="abc", select_spans=[CharSpan(2, 2)])], {}, "inputs[0].select_spans[0]"),
        ([TextInput(text="abc", select_spans=[CharSpan(0, 1)] * 9)], {}, "inputs[0].select_spans"),
        ([TextInput(text="abc", select_words=[""])], {}, "inputs[0].select_words[0]"),
        ([TextInput()], {}, "inputs[0]"),
        ([42], {}, "inputs[0]"),
        (["ok"], {"pooling": "median"}, "pooling"),
        (["ok"], {"layers": [7]}, "layers[0]"),
        (["ok"], {"layers": [-1, -8]}, "layers[1]"),
        (["ok"], {"layer_combine": "sum"}, "layer_combine"),
        (["ok"], {"layers": ["last"]}, "layers[0]"),
        (["ok"], {"layers": [[1]]}, "layers[0]"),
        (["ok"], {"layers": "-1"}, "layers"),
        (["ok"], {"layers": [-1.0]}, "layers[0]"),
        (["ok"], {"layers": [True]}, "layers[0]"),
        (["ok"], {"normalize": "yes"}, "normalize"),
        (["ok"], {"pooling": ["mean"]}, "pooling"),
        (["ok"], {"dtype": "int8"}, "dtype"),
        ([["fine", "\u200b"]], {}, "inputs[0].words[1]"),
    ],
)
def test_invalid_input_names_field(
    model_dir: Path, inputs: list[object], kwargs: dict[str, object], field: str
) -> None:
    emb = _limited(model_dir)
    with pytest.raises(InvalidInput) as info:
        emb.embed(inputs, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field, str(info.value)


def _limited(model_dir: Path) -> WordEmbedder:
    limits = Limits(max_chars_per_text=100, max_words_per_text=20, max_spans_per_text=5)
    return WordEmbedder.load(model_dir, provider="cpu", limits=limits)


def test_limit_is_reported(model_dir: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        _limited(model_dir).embed(["x" * 101])
    assert info.value.limit == 100 and "limit is 100" in str(info.value)


def test_last_layer_only_model_rejects_other_layers(tiny_source: Path, tmp_path: Path) -> None:
    from ctxembed.export import ExportOptions, export_model

    out = tmp_path / "last"
    export_model(ExportOptions(model=str(tiny_source), out=out, quantize="none"))
    emb = WordEmbedder.load(out, provider="cpu")
    assert emb.manifest.layers_available == [2]
    assert emb.embed(["fine"], layers=[2])[0].vectors.shape == (1, 64)
    with pytest.raises(InvalidInput, match="--layers all") as info:
        emb.embed(["fine"], layers=[0])
    assert info.value.field == "layers[0]"


def test_load_errors(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        WordEmbedder.load(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt"):
        WordEmbedder.load(broken)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="format_version 99"):
        WordEmbedder.load(broken)
    manifest["format_version"] = 1
    manifest["word_segmentation"] = "whitespace"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="word_segmentation 'whitespace'"):
        WordEmbedder.load(broken)
    del manifest["word_segmentation"]  # folders exported before it load with the default
    (broken / "manifest.json").write_text(json.dumps(manifest))
    assert WordEmbedder.load(broken, provider="cpu", variant="fp32").info().word_segmentation == (
        "bert"
    )
    (broken / "model_int8.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model_int8\.onnx missing"):
        WordEmbedder.load(broken)
    (broken / "model_int8.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load"):
        WordEmbedder.load(broken, provider="cpu")


def test_cuda_missing_is_an_error_auto_falls_back(
    model_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    from ctxembed.runtime import session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu"):
        WordEmbedder.load(model_dir, provider="cuda")
    with caplog.at_level("INFO", logger="ctxembed"):
        emb = WordEmbedder.load(model_dir, provider="auto")
    assert emb.session.provider == "CPUExecutionProvider"
    # on a machine without CUDA, the CPU is the normal choice: said at INFO, not WARNING
    assert [(r.levelname, r.message) for r in caplog.records] == [
        ("INFO", "no CUDA provider in this onnxruntime; running on the CPU")
    ]
    caplog.clear()
    monkeypatch.setattr(session, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with caplog.at_level("WARNING", logger="ctxembed"):
        WordEmbedder.load(model_dir, provider="auto")
        WordEmbedder.load(model_dir, provider="cpu")  # nothing asked of CUDA: no warning
    [warning] = caplog.records
    assert "onnxruntime and onnxruntime-gpu are both installed" in warning.message
    assert "\n" not in warning.message


@pytest.mark.parametrize(
    ("spin_us", "entries"),
    [
        (1234, {"session.intra_op.spin_duration_us": "1234", "session.force_spinning_stop": ""}),
        (0, {"session.force_spinning_stop": "1", "session.intra_op.spin_duration_us": ""}),
    ],
)
def test_spin_after_run_reaches_the_session(
    model_dir: Path, spin_us: int, entries: dict[str, str]
) -> None:
    emb = WordEmbedder.load(model_dir, provider="cpu", spin_after_run_us=spin_us)
    options = emb.session.session.get_session_options()
    for key, value in entries.items():
        try:
            got = options.get_session_config_entry(key)
        except Exception:  # onnxruntime raises for keys that were never set
            got = ""
        assert got == value, key
    [res] = emb.embed([BANK])
    assert res.vectors.shape == (7, emb.dimension)


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_parallel_runs_give_identical_vectors(model_dir: Path, variant: str) -> None:
    texts = [*load_corpus(40), "bank " * 700]
    one = WordEmbedder.load(model_dir, provider="cpu", variant=variant, parallel_runs=1)
    two = WordEmbedder.load(model_dir, provider="cpu", variant=variant, parallel_runs=2)
    assert one.session.parallel_runs == 1 and two.session.parallel_runs == 2
    with two:
        results = list(zip(one.embed(texts), two.embed(texts)))
    assert results[-1][0].num_windows > 1  # windows of one text run in parallel too
    for a, b in results:
        assert a.words == b.words and a.num_windows == b.num_windows
        np.testing.assert_array_equal(a.vectors, b.vectors)
    # closed: the threads are gone, the embedder still works, one run after another
    assert two.session.parallel_runs == 1
    np.testing.assert_array_equal(two.embed(texts[:3])[2].vectors, results[2][1].vectors)


def test_a_run_beside_another_takes_the_single_threaded_session(model_dir: Path) -> None:
    """Runs that start while another computes go to the single-threaded session (the server's
    batches in flight side by side), with the same vectors; a lone run keeps every thread."""
    emb = WordEmbedder.load(model_dir, provider="cpu", parallel_runs=2)
    session = emb.session
    ids = np.array([[101, 7592, 1010, 2088, 102]], dtype=np.int64)
    mask, out = np.ones_like(ids), [emb.manifest.layer_outputs[emb.manifest.num_layers]]
    row_run, rows = session._row_run, []
    assert row_run is not None

    def counted(*args: Any) -> list[np.ndarray]:
        rows.append(args)
        return row_run(*args)

    session._row_run = counted
    alone = session.run(ids, mask, out)
    assert rows == []
    with session._runs.running():  # another run computing
        beside = session.run(ids, mask, out)
    assert len(rows) == 1
    np.testing.assert_array_equal(beside[0], alone[0])
    with session._runs.running() as others:
        assert others == 0  # the counts went back down
    emb.close()  # no single-threaded session any more: every run takes the main one
    with session._runs.running():
        session.run(ids, mask, out)
    assert len(rows) == 1


@pytest.mark.parametrize("parallel_runs", [1, 2])
def test_calibrated_int8_batches_rows_exactly_as_alone(model_dir: Path, parallel_runs: int) -> None:
    # Fixed activation ranges: a padded batch gives each row exactly what it gets alone.
    texts = load_corpus(32, start=200)
    with WordEmbedder.load(model_dir, provider="cpu", parallel_runs=parallel_runs) as emb:
        assert (emb.session.variant.quantization or {})["activations"] == "calibrated"
        assert not emb.session.variant.dynamic_activation_scales and not emb.isolate_rows
        lengths = [emb.prepare([t]).texts[0].tokens.num_tokens + 2 for t in texts]
        batches = emb._buckets(sorted(range(len(texts)), key=lengths.__getitem__), lengths)
        assert max(len(b) for b in batches) > 1  # rows really share runs
        batched = emb.embed(texts)
        for text, res in zip(texts, batched):
            np.testing.assert_array_equal(res.vectors, emb.embed([text])[0].vectors)


@pytest.mark.parametrize("max_padding", [0.0, 0.1, 10.0])
def test_runs_keep_padding_under_the_cap(model_dir: Path, max_padding: float) -> None:
    texts = load_corpus(40, start=300)
    emb = WordEmbedder.load(model_dir, provider="cpu", max_padding=max_padding)
    lengths = [emb.prepare([t]).texts[0].tokens.num_tokens + 2 for t in texts]
    runs = emb._buckets(sorted(range(len(texts)), key=lengths.__getitem__), lengths)
    assert sorted(r for run in runs for r in run) == list(range(len(texts)))
    for run in runs:
        real = sum(lengths[r] for r in run)
        assert len(run) == 1 or len(run) * max(lengths[r] for r in run) <= (1 + max_padding) * real
    if max_padding == 0.0:  # only equal lengths share a run
        assert all(len({lengths[r] for r in run}) == 1 for run in runs)
    batched = emb.embed(texts)  # the cap changes how rows share runs, never the vectors
    for text, res in zip(texts[::8], batched[::8]):
        np.testing.assert_array_equal(res.vectors, emb.embed([text])[0].vectors)


def test_public_run_path_gives_the_same_vectors(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session calls onnxruntime's native binding directly; where a version lacks that
    private API, the public ``InferenceSession.run`` must give the same results."""
    from ctxembed.runtime import session

    texts = [BANK, *load_corpus(6), "bank " * 700]
    with WordEmbedder.load(model_dir, provider="cpu", parallel_runs=2) as direct:
        assert direct.session._direct is not None
        expected = direct.embed(texts)
    monkeypatch.setattr(session, "_direct_run", lambda *_: None)
    with WordEmbedder.load(model_dir, provider="cpu", parallel_runs=2) as public:
        assert public.session._direct is None
        for a, b in zip(expected, public.embed(texts), strict=True):
            np.testing.assert_array_equal(a.vectors, b.vectors)


def test_int8_made_for_vnni_warns_on_a_cpu_without_it(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ctxembed.runtime import session

    if (load_manifest(model_dir).variant("int8").quantization or {}).get("preset") != (
        "avx512_vnni"
    ):
        pytest.skip("this machine's export did not use the VNNI preset")
    monkeypatch.setattr(session, "has_vnni", lambda: False)
    monkeypatch.setattr(session, "is_arm", lambda: False)
    with caplog.at_level("WARNING", logger="ctxembed"):
        WordEmbedder.load(model_dir, provider="cpu")
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "quantized for CPUs with VNNI" in warning.message and "re-export" in warning.message


def test_int8_needing_a_newer_onnxruntime_is_refused(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "newer"
    shutil.copytree(model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    [int8] = [v for v in manifest["variants"] if v["name"] == "int8"]
    int8["quantization"]["min_onnxruntime"] = "99.0"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"needs onnxruntime >= 99\.0"):
        WordEmbedder.load(folder, provider="cpu")
    assert WordEmbedder.load(folder, provider="cpu", variant="fp32").session.variant.name == "fp32"


def test_token_limit_is_the_servers_not_the_librarys(model_dir: Path) -> None:
    """max_tokens_per_request bounds what one gRPC call costs; in process a call may be as
    large as memory allows (the server refuses it: tests/test_transport.py)."""
    limits = Limits(max_tokens_per_request=10)
    with WordEmbedder.load(model_dir, provider="cpu", limits=limits) as emb:
        results = emb.embed(load_corpus(8))
    assert sum(r.num_tokens for r in results) > 10
