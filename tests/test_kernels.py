"""ctxembed's fused int8 kernels (runtime/ctxembed/kernels): built at install, registered on the
CPU provider, and computing exactly what the ONNX functions they stand for compute, bit for
bit, in every vector form this CPU runs."""

from __future__ import annotations

import ctypes
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ctxembed.export.fused_chains import DOMAIN, rewrite_folder, row_functions
from ctxembed.kernels import OPS, library
from ctxembed.kernels.build import BuildError, build, compiler
from ctxembed.runtime import TextInput, WordEmbedder
from ctxembed.runtime.cpu import cpu_flags
from ctxembed.runtime.manifest import load_manifest

OPSET = 18
FORMS = ["scalar", "avx2", "avx512"]


def _form_runs_here(form: str) -> bool:
    return form == "scalar" or {"avx2": "avx2", "avx512": "avx512f"}[form] in cpu_flags()


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
    with pytest.raises(BuildError, match="failed"):
        build(tmp_path / "other", cc="/bin/false")


def chain_model(k: int, n: int, channels: list[int], col_size: int | None = None) -> bytes:
    """x -> each fused chain pair around a MatMulInteger, with its intermediates as outputs:
    RowQuantizeOutliers + RowDequantizeAdd (an fp32 outlier part) and RowQuantize +
    RowDequantize, as the export writes them, the functions included."""
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

    q_in = ["x", "inlier_scale", "floor", "qscale", "zero_point"]
    nodes = [
        node("RowQuantizeOutliers", [*q_in, "channels"], ["q1", "row1", "outl"], DOMAIN),
        node("MatMulInteger", ["q1", "w", "zero_point", "w_zero"], ["acc1"]),
        node("MatMul", ["outl", "w_outliers"], ["part"]),
        node("RowDequantizeAdd", ["acc1", "col", "row1", "part"], ["y1"], DOMAIN),
        node("RowQuantize", q_in, ["q2", "row2"], DOMAIN),
        node("MatMulInteger", ["q2", "w", "zero_point", "w_zero"], ["acc2"]),
        node("RowDequantize", ["acc2", "col", "row2"], ["y2"], DOMAIN),
    ]
    types = {"q1": TensorProto.UINT8, "q2": TensorProto.UINT8}
    outputs = ["q1", "row1", "outl", "y1", "q2", "row2", "y2"]
    graph = helper.make_graph(
        nodes,
        "chains",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", k])],
        [helper.make_tensor_value_info(o, types.get(o, TensorProto.FLOAT), None) for o in outputs],
        [numpy_helper.from_array(v, name) for name, v in inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=row_functions(OPSET),
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
    if library() is None:
        pytest.skip("the kernels are not built here")
    if not _form_runs_here(form):
        pytest.skip(f"this CPU has no {form}")
    monkeypatch.setenv("CTXEMBED_KERNELS_ISA", form)  # read when a session registers them
    chosen = ctypes.CDLL(str(library())).ctxembed_kernels_form
    chosen.restype = ctypes.c_char_p
    assert chosen().decode() == form
    yield form


@pytest.mark.parametrize("kernels_form", FORMS, indirect=True)
@pytest.mark.parametrize(
    ("shape", "n", "channels"),
    [
        ((1, 13, 37), 40, [3, 36]),  # short rows, widths off the vector length: the tails
        ((4, 300, 96), 24, [0, 50, -1]),  # > 65,536 elements: parallel parts; a negative index
    ],
)
def test_kernels_match_the_functions_bit_for_bit(
    kernels_form: str, shape: tuple[int, int, int], n: int, channels: list[int]
) -> None:
    k = shape[-1]
    positive = [c % k for c in channels]
    model = chain_model(k, n, channels)
    x = activations(shape, positive)
    expected = session(model, kernels=False).run(None, {"x": x})  # type: ignore[attr-defined]
    fused = session(model, kernels=True)
    got = fused.run(None, {"x": x})  # type: ignore[attr-defined]
    for name, want, have in zip(["q1", "row1", "outl", "y1", "q2", "row2", "y2"], expected, got):
        assert have.dtype == want.dtype and have.shape == want.shape, name
        assert np.array_equal(have, want), f"{name} differs in the {kernels_form} form"
    assert got[0][0, 0].tolist() == [128] * k  # a zero row quantizes to the zero point
    assert _ops_run(model, x, kernels=True) >= set(OPS)
    assert not _ops_run(model, x, kernels=True) & {"QuantizeLinear", "Cast", "Div"}
    assert not _ops_run(model, x, kernels=False) & set(OPS)  # the bodies ran instead


def _ops_run(model: bytes, x: np.ndarray, kernels: bool) -> set[str]:
    """The operators a session ran, from its profile: the kernels, or the functions' bodies."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "ctxembed-kernels")
    if kernels:
        options.register_custom_ops_library(str(library()))
    profiled = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    profiled.run(None, {"x": x})
    path = Path(profiled.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node"}


def test_an_input_of_the_wrong_size_fails_the_run_cleanly() -> None:
    """The kernels read an initializer only as far as its operand allows: a graph whose scale
    vector is the wrong length is refused with a message, not read past its end."""
    if library() is None:
        pytest.skip("the kernels are not built here")
    fused = session(chain_model(37, 40, [3], col_size=39), kernels=True)
    with pytest.raises(Exception, match="does not match"):
        fused.run(None, {"x": activations((1, 5, 37), [3])})  # type: ignore[attr-defined]


TEXTS = [
    TextInput(text="I sat by the river bank, then walked to the bank of America."),
    TextInput(text="ctxembed serves per-word vectors: 3.14, 2,718 and (x, y) = [1, 2]."),
]


def test_the_outlier_export_wraps_its_chains_and_runs_the_kernels(outlier_export: Path) -> None:
    """The manifest records the wrapped chains; the kernels run them (where built) and give
    the vectors the functions' bodies give, bit for bit."""
    int8 = load_manifest(outlier_export).variant("int8")
    facts = (int8.quantization or {})["fused_chains"]
    assert facts["domain"] == DOMAIN and facts["products"] > 0
    assert facts["nodes"][1] < facts["nodes"][0]
    on = WordEmbedder.load(outlier_export, "cpu")
    off = WordEmbedder.load(outlier_export, "cpu", fused_kernels=False)
    assert on.session.kernels == library() and off.session.kernels is None
    for a, b in zip(on.embed(TEXTS), off.embed(TEXTS), strict=True):
        assert np.array_equal(a.vectors, b.vectors)


def test_a_folder_exported_before_the_kernels_is_wrapped_in_place(
    outlier_export: Path, tmp_path: Path
) -> None:
    """`python -m ctxembed.export.fused_chains DIR` gives an older `outlier` folder the
    functions: same vectors, the manifest's checksum and facts updated, nothing left beside."""
    import onnx
    from onnx import inliner

    from ctxembed.export.fused_chains import main
    from ctxembed.export.pipeline import file_sha256

    folder = tmp_path / "old"
    shutil.copytree(outlier_export, folder)
    int8 = load_manifest(folder).variant("int8")
    wrapped = onnx.load(str(folder / int8.file))
    before = inliner.inline_local_functions(wrapped)  # the graph as exports wrote it before
    del before.functions[:]
    kept = [o for o in before.opset_import if o.domain != DOMAIN]
    del before.opset_import[:]
    before.opset_import.extend(kept)
    assert not any(n.domain == DOMAIN for n in before.graph.node)
    onnx.save(before, str(folder / int8.file))
    assert main([str(folder)]) == 0
    after = load_manifest(folder).variant("int8")
    facts = (after.quantization or {})["fused_chains"]
    assert facts["products"] == (int8.quantization or {})["fused_chains"]["products"]
    assert after.sha256 == file_sha256(folder / after.file) != file_sha256(folder / "model.onnx")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in outlier_export.iterdir()
    )
    assert rewrite_folder(folder) == {}  # wrapped already: nothing to do
    new = WordEmbedder.load(folder, "cpu").embed(TEXTS)
    for a, b in zip(new, WordEmbedder.load(outlier_export, "cpu").embed(TEXTS), strict=True):
        assert np.array_equal(a.vectors, b.vectors)
