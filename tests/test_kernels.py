"""ctxembed's fused kernels (runtime/ctxembed/kernels): built at install, registered on the CPU
provider, and computing what the ONNX functions they stand for compute, in every vector form
this CPU runs: the int8 chains bit for bit, the layer norms to float rounding (and closer to
the exact result than onnxruntime's own kernel)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from ctxembed.export.fused_chains import DOMAIN, functions
from ctxembed.export.upgrade import upgrade_folder
from ctxembed.kernels import OPS, library
from ctxembed.kernels import form as kernels_library_form
from ctxembed.kernels.build import BuildError, build, compiler, cross_platform
from ctxembed.runtime import TextInput, WordEmbedder, WordEmbeddings
from ctxembed.runtime.cpu import cpu_flags
from ctxembed.runtime.manifest import load_manifest

OPSET = 18
FORMS = ["scalar", "avx2", "avx512"]
OUTPUTS = ["q1", "row1", "outl", "y1", "q2", "row2", "y2", "norm", "norm_bias"]


def _form_runs_here(form: str) -> bool:
    # the vector forms are x86's (an arm64 library has the scalar form only); the architecture
    # first, since under qemu-user /proc/cpuinfo is the x86 host's
    x86 = platform.machine().lower() in {"x86_64", "amd64"}
    return form == "scalar" or (x86 and {"avx2": "avx2", "avx512": "avx512f"}[form] in cpu_flags())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_install_built_the_library() -> None:
    """`pip install` (hatch_build.py) compiles the kernels where a compiler exists."""
    if compiler() is None:
        pytest.skip("no C compiler on this machine: the install could not build the kernels")
    assert library() is not None, "a C compiler exists but the install built no kernels"


def test_build_writes_the_library_and_names_a_missing_compiler(tmp_path: Path) -> None:
    if compiler() is None:
        pytest.skip("no C compiler on this machine")
    built = build(tmp_path)
    assert built.is_file() and not list(tmp_path.glob(".build-*"))  # renamed into place
    assert built.stat().st_mode & 0o777 == 0o755 & ~_umask()  # others may load it
    with pytest.raises(BuildError, match="failed"):
        build(tmp_path / "other", cc="/bin/false")


def _fake_compiler(folder: Path, target: str) -> str:
    """A "compiler" that answers ``-dumpmachine`` with ``target``."""
    path = folder / f"cc-{target}"
    path.write_text(f"#!/bin/sh\necho {target}\n")
    path.chmod(0o755)
    return str(path)


def test_a_cross_compiler_names_the_wheel_platform(tmp_path: Path) -> None:
    """The build hook tags a cross-built wheel for the compiler's platform (make test-arm64's
    wheel: CC=aarch64-linux-gnu-gcc), and a native compiler leaves the tag to the host."""
    other = "x86_64" if platform.machine() in {"aarch64", "arm64"} else "aarch64"
    assert cross_platform(_fake_compiler(tmp_path, f"{other}-linux-gnu")) == f"linux_{other}"
    assert cross_platform(_fake_compiler(tmp_path, f"{platform.machine()}-linux-gnu")) is None
    assert cross_platform(_fake_compiler(tmp_path, "arm-linux-gnueabihf")) is None  # native
    with pytest.raises(BuildError, match="only Linux cross builds"):
        cross_platform(_fake_compiler(tmp_path, f"{other}-apple-darwin"))


def chain_model(k: int, n: int, channels: list[int], col_size: int | None = None) -> bytes:
    """x -> each fused chain pair around a MatMulInteger, with its intermediates as outputs:
    RowQuantizeOutliers + RowDequantizeAdd (an fp32 outlier part) and RowQuantize +
    RowDequantize; and x + skip -> SkipLayerNorm[Bias]: as the export writes them, the
    functions included."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 2.0, k).astype(np.float32)
    scale[channels] = 0.0  # outlier channels are masked out of the int8 part
    inits: dict[str, np.ndarray] = {
        "inlier_scale": scale,
        "floor": np.array(1e-12, np.float32),
        "qscale": np.array(2 / 255, np.float32),
        "zero_point": np.array(128, np.uint8),
        "channels": np.array(channels, np.int64),
        "w": rng.integers(-127, 128, (k, n)).astype(np.int8),
        "w_zero": np.zeros(n, np.int8),
        "col": rng.uniform(1e-4, 1e-2, col_size or n).astype(np.float32),
        "w_outliers": rng.normal(size=(len(channels), n)).astype(np.float32),
    }

    def node(op: str, ins: list[str], outs: list[str], domain: str = "") -> onnx.NodeProto:
        return helper.make_node(op, ins, outs, domain=domain)

    inits |= {
        "gamma": rng.uniform(0.5, 1.5, k).astype(np.float32),
        "beta": rng.normal(size=k).astype(np.float32),
        "bias": rng.normal(size=k).astype(np.float32),
    }
    q_in = ["x", "inlier_scale", "floor", "qscale", "zero_point"]
    norm_in = ["x", "skip", "gamma", "beta"]
    nodes = [
        node("RowQuantizeOutliers", [*q_in, "channels"], ["q1", "row1", "outl"], DOMAIN),
        node("MatMulInteger", ["q1", "w", "zero_point", "w_zero"], ["acc1"]),
        node("MatMul", ["outl", "w_outliers"], ["part"]),
        node("RowDequantizeAdd", ["acc1", "col", "row1", "part"], ["y1"], DOMAIN),
        node("RowQuantize", q_in, ["q2", "row2"], DOMAIN),
        node("MatMulInteger", ["q2", "w", "zero_point", "w_zero"], ["acc2"]),
        node("RowDequantize", ["acc2", "col", "row2"], ["y2"], DOMAIN),
        node("SkipLayerNorm", norm_in, ["norm"], DOMAIN),
        node("SkipLayerNormBias", [*norm_in, "bias"], ["norm_bias"], DOMAIN),
    ]
    for norm in nodes[-2:]:
        norm.attribute.append(helper.make_attribute("epsilon", 1e-5))
    types = {"q1": TensorProto.UINT8, "q2": TensorProto.UINT8}
    graph = helper.make_graph(
        nodes,
        "chains",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", k]),
            helper.make_tensor_value_info("skip", TensorProto.FLOAT, ["s", "t", k]),
        ],
        [helper.make_tensor_value_info(o, types.get(o, TensorProto.FLOAT), None) for o in OUTPUTS],
        [numpy_helper.from_array(v, name) for name, v in inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=functions(OPSET),
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


def session(model: bytes, kernels: bool) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if kernels:
        lib = library()
        assert lib is not None
        options.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def activations(shape: tuple[int, ...], outlier_channels: list[int]) -> np.ndarray:
    """Normal values, huge outlier channels, a row of zeros (the scale floor), one tiny row."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype(np.float32)
    x[..., outlier_channels] *= 60.0
    x[0, 0] = 0.0
    x[0, -1] *= 1e-30
    return x


@pytest.fixture
def kernels_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    form = str(request.param)
    built = library()
    if built is None:
        pytest.skip("the kernels are not built here")
    if not _form_runs_here(form):
        pytest.skip(f"this CPU has no {form}")
    monkeypatch.setenv("CTXEMBED_KERNELS_ISA", form)  # read when a session registers them
    assert kernels_library_form(built) == form
    yield form


@pytest.mark.parametrize("kernels_form", FORMS, indirect=True)
@pytest.mark.parametrize(
    ("shape", "n", "channels", "skip_rows"),
    [
        ((1, 13, 37), 40, [3, 36], 1),  # short rows, widths off the vector length: the tails
        # > 65,536 elements: parallel parts; a negative index; 19 rows: a partial block of 16
        ((4, 300, 96), 24, [0, 50, -1], 4),
        ((3, 19, 768), 8, [5], 1),  # one skip row for every batch row (skip broadcast)
    ],
)
def test_kernels_match_the_functions_bit_for_bit(
    kernels_form: str, shape: tuple[int, int, int], n: int, channels: list[int], skip_rows: int
) -> None:
    k = shape[-1]
    positive = [c % k for c in channels]
    model = chain_model(k, n, channels)
    x = activations(shape, positive)
    skip = np.random.default_rng(3).normal(size=(skip_rows, *shape[1:])).astype(np.float32)
    feed = {"x": x, "skip": skip}
    expected = session(model, kernels=False).run(None, feed)  # type: ignore[attr-defined]
    fused = session(model, kernels=True)
    got = fused.run(None, feed)  # type: ignore[attr-defined]
    for name, want, have in zip(OUTPUTS, expected, got, strict=True):
        assert have.dtype == want.dtype and have.shape == want.shape, name
        if name.startswith("norm"):  # reassociated sums: float rounding, and no worse
            exact = layer_norm_f64(model, x, skip, with_bias=name == "norm_bias")
            assert np.abs(have - want).max() < 1e-5 * np.abs(want).max(), name
            assert np.abs(have - exact).max() <= np.abs(want - exact).max() + 1e-7, name
        else:
            assert np.array_equal(have, want), f"{name} differs in the {kernels_form} form"
    assert got[0][0, 0].tolist() == [128] * k  # a zero row quantizes to the zero point
    standard = {"QuantizeLinear", "Cast", "Div", "SkipLayerNormalization"}
    assert _ops_run(model, feed, kernels=True) >= set(OPS)
    assert not _ops_run(model, feed, kernels=True) & standard
    assert not _ops_run(model, feed, kernels=False) & set(OPS)  # the bodies ran instead


def layer_norm_f64(model: bytes, x: np.ndarray, skip: np.ndarray, with_bias: bool) -> np.ndarray:
    """SkipLayerNormalization in float64 with the model's constants: the exact answer."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    v = x.astype(np.float64) + np.broadcast_to(skip, x.shape)
    if with_bias:
        v = v + inits["bias"]
    mean = v.mean(-1, keepdims=True)
    return (v - mean) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) * inits["gamma"] + inits["beta"]


def test_every_form_computes_the_same_layer_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer norm's forms are one C body compiled for wider registers: their sums run in
    the same order, so they agree bit for bit with each other (only with onnxruntime's to
    rounding)."""
    if library() is None:
        pytest.skip("the kernels are not built here")
    model = chain_model(768, 8, [5])
    x = activations((2, 21, 768), [5])
    feed = {"x": x, "skip": np.random.default_rng(4).normal(size=x.shape).astype(np.float32)}
    outputs = {}
    for form in [f for f in FORMS if _form_runs_here(f)]:
        monkeypatch.setenv("CTXEMBED_KERNELS_ISA", form)
        got = session(model, kernels=True).run(None, feed)  # type: ignore[attr-defined]
        outputs[form] = got[OUTPUTS.index("norm")], got[OUTPUTS.index("norm_bias")]
    first = outputs.pop("scalar")
    for form, got in outputs.items():
        assert all(np.array_equal(a, b) for a, b in zip(got, first, strict=True)), form


def _ops_run(model: bytes, feed: dict[str, np.ndarray], kernels: bool) -> set[str]:
    """The operators a session ran, from its profile: the kernels, or the functions' bodies."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "ctxembed-kernels")
    if kernels:
        options.register_custom_ops_library(str(library()))
    profiled = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    profiled.run(None, feed)
    path = Path(profiled.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node"}


def test_sessions_registering_the_kernels_leave_running_ones_alone() -> None:
    """Every session shares one set of ops: registering the library for a new session (a
    second model loading) while another session computes changes none of its results."""
    import threading

    if library() is None:
        pytest.skip("the kernels are not built here")
    model = chain_model(96, 24, [0, 50])
    x = activations((2, 40, 96), [0, 50])
    feed = {"x": x, "skip": x}
    running = session(model, kernels=True)
    expected = running.run(None, feed)  # type: ignore[attr-defined]
    stop = threading.Event()

    def register() -> None:
        while not stop.is_set():
            session(model, kernels=True)

    loader = threading.Thread(target=register)
    loader.start()
    try:
        for _ in range(100):
            got = running.run(None, feed)  # type: ignore[attr-defined]
            assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    finally:
        stop.set()
        loader.join()


def test_an_input_of_the_wrong_size_fails_the_run_cleanly() -> None:
    """The kernels read an initializer only as far as its operand allows: a graph whose scale
    vector is the wrong length is refused with a message, not read past its end."""
    if library() is None:
        pytest.skip("the kernels are not built here")
    fused = session(chain_model(37, 40, [3], col_size=39), kernels=True)
    x = activations((1, 5, 37), [3])
    with pytest.raises(Exception, match="does not match"):
        fused.run(None, {"x": x, "skip": x})  # type: ignore[attr-defined]


TEXTS = [
    TextInput(text="I sat by the river bank, then walked to the bank of America."),
    TextInput(text="ctxembed serves per-word vectors: 3.14, 2,718 and (x, y) = [1, 2]."),
]


def _worst_word_cosine(a: Sequence[WordEmbeddings], b: Sequence[WordEmbeddings]) -> float:
    x = np.concatenate([r.vectors for r in a])
    y = np.concatenate([r.vectors for r in b])
    cos = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
    return float(cos.min())


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_the_export_wraps_its_chains_and_runs_the_kernels(
    outlier_export: Path, variant: str
) -> None:
    """The manifest records what was wrapped; the kernels run it (where built) and give the
    vectors the functions' bodies give (to the layer norms' float rounding)."""
    manifest = load_manifest(outlier_export)
    facts = manifest.variant("int8").optimization["fused_chains"]
    assert facts["domain"] == DOMAIN and facts["products"] > 0 and facts["layer_norms"] > 0
    assert facts["nodes"][1] < facts["nodes"][0]
    fp32 = manifest.variant("fp32").optimization["fused_chains"]
    assert fp32["products"] == 0 and fp32["layer_norms"] == facts["layer_norms"]
    on = WordEmbedder.load(outlier_export, "cpu", variant=variant)
    off = WordEmbedder.load(outlier_export, "cpu", variant=variant, fused_kernels=False)
    assert on.session.kernels == library() and off.session.kernels is None
    assert _worst_word_cosine(on.embed(TEXTS), off.embed(TEXTS)) > 0.9999


def test_a_folder_exported_before_the_kernels_is_wrapped_in_place(
    outlier_export: Path, tmp_path: Path
) -> None:
    """`python -m ctxembed.export.upgrade DIR` gives an older `outlier` folder the functions:
    same vectors, the manifest's checksum and facts updated, nothing left beside."""
    import onnx
    from onnx import inliner

    from ctxembed.export.pipeline import file_sha256
    from ctxembed.export.upgrade import main

    folder = tmp_path / "old"
    shutil.copytree(outlier_export, folder)
    manifest = load_manifest(folder)
    for variant in manifest.variants:  # the graphs as exports wrote them before
        before = inliner.inline_local_functions(onnx.load(str(folder / variant.file)))
        del before.functions[:]
        kept = [o for o in before.opset_import if o.domain != DOMAIN]
        del before.opset_import[:]
        before.opset_import.extend(kept)
        assert not any(n.domain == DOMAIN for n in before.graph.node)
        onnx.save(before, str(folder / variant.file))
    old_manifest = (folder / "manifest.json").read_text()
    for variant in manifest.variants:
        del variant.optimization["fused_chains"]
    (folder / "manifest.json").write_text(manifest.to_json())
    assert main([str(folder)]) == 0
    exported = {v["name"]: v["optimization"] for v in json.loads(old_manifest)["variants"]}
    for variant in load_manifest(folder).variants:
        facts, was = variant.optimization["fused_chains"], exported[variant.name]["fused_chains"]
        assert (facts["products"], facts["layer_norms"]) == (was["products"], was["layer_norms"])
        assert variant.sha256 == file_sha256(folder / variant.file)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in outlier_export.iterdir()
    )
    assert upgrade_folder(folder) == {}  # wrapped already: nothing to do
    assert main([str(tmp_path / "missing")]) == 1  # one line, no traceback
    new = WordEmbedder.load(folder, "cpu").embed(TEXTS)
    for a, b in zip(new, WordEmbedder.load(outlier_export, "cpu").embed(TEXTS), strict=True):
        assert np.array_equal(a.vectors, b.vectors)  # the same graph as the export's
