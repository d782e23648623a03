"""The export pipeline, in the six steps the command prints:

1. resolve the source (``source.py``)
2. export to ONNX (``onnx_graph.py``)
3. transformer fusions, and MatMuls that share an input merged (``optimize.py``,
   ``merge_matmuls.py``)
4. write the tokenizer (``tokenizer_files.py``)
5. int8 for CPU or fp16 for CUDA (``optimize.py``, ``int8_schemes.py``, ``calibrate.py``)
6. validate against PyTorch (``validate.py``)

The output folder is checked before any work. Everything is written into a temporary sibling of
it and renamed into place only when every variant has passed validation, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from ctxembed.export.calibrate import calibration_feeds
from ctxembed.export.errors import ExportError
from ctxembed.export.fallback import choose_fallback
from ctxembed.export.fused_chains import wrap_file, wrapped_variant
from ctxembed.export.int8_schemes import (
    AUTO_ORDER,
    FALLBACK_FORMS,
    FALLBACK_SCHEMES,
    INT8_SCHEMES,
    FallbackForm,
    Int8Scheme,
    build_int8,
    ffn_down_projections,
)
from ctxembed.export.onnx_graph import export_onnx, num_layers
from ctxembed.export.optimize import QuantPresetChoice, detect_cpu_preset, fuse, to_fp16
from ctxembed.export.progress import Steps
from ctxembed.export.source import DEFAULT_MODEL, ModelSource, resolve_source
from ctxembed.export.tokenizer_files import write_tokenizer
from ctxembed.export.validate import (
    DEFAULT_THRESHOLDS,
    FUSED,
    STANDARD,
    Reference,
    Thresholds,
    build_references,
    compare_variant,
    load_session,
    selection_set,
    shipped_kernels,
    worse_of,
)
from ctxembed.runtime.cpu import kernel_flags
from ctxembed.runtime.manifest import MANIFEST_NAME, Manifest, Variant
from ctxembed.runtime.segmentation import DEFAULT_SEGMENTATION

Target = Literal["cpu", "cuda"]
Quantize = Literal["int8", "none"]
LayerOutputs = Literal["last", "all"]
# The older flag: per-tensor activation ranges fixed (calibrated) or per run (dynamic);
# shorthand for --int8-scheme calibrated|dynamic.
Int8Activations = Literal["calibrated", "dynamic"]
TARGETS: tuple[Target, ...] = get_args(Target)
QUANTIZE: tuple[Quantize, ...] = get_args(Quantize)
LAYER_OUTPUTS: tuple[LayerOutputs, ...] = get_args(LayerOutputs)
QUANT_PRESET_CHOICES: tuple[QuantPresetChoice, ...] = get_args(QuantPresetChoice)
INT8_ACTIVATIONS: tuple[Int8Activations, ...] = get_args(Int8Activations)
TOOLS = (
    "ctxembed",
    "optimum",
    "optimum-onnx",
    "onnxruntime",
    "onnx",
    "transformers",
    "torch",
    "tokenizers",
)


@dataclass(frozen=True)
class ExportOptions:
    """Every option of ``ctxembed export`` and its default (the CLI reads them here)."""

    model: str = DEFAULT_MODEL
    out: Path | None = None  # default: models/<model-name>
    target: Target = "cpu"
    quantize: Quantize = "int8"  # cpu only
    layers: LayerOutputs = "last"
    force: bool = False
    quant_preset: QuantPresetChoice = "auto"  # auto: detected from this CPU
    per_channel: bool = True
    int8_scheme: Int8Scheme = "auto"  # see int8_schemes.py
    revision: str | None = None
    thresholds: dict[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    models_root: Path = Path("models")
    # Texts that validate every variant and choose the int8 scheme (one per line); None: the
    # 36 built-in probe texts. Releases and benchmarks pass benchmarks/data/int8-selection.txt.
    selection_texts: Path | None = None
    # The word-embedding table in 8-bit row blocks (embedding_table.py): a third of the file
    # for small models. Off by default: on MPNet it tipped one word of 4,350 texts to 0.70.
    int8_embeddings: bool = False
    # The variants the folder keeps (all are built and validated; the rest are not written):
    # a deployment that serves int8 only ships int8. (): every variant.
    variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: Manifest
    seconds: float


class ValidationFailed(ExportError):
    def __init__(self, table: str, hint: str = "") -> None:
        super().__init__("validation failed; nothing was written\n" + table + hint)


def _versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _max_tokens(source: ModelSource, tokenizer_max: int) -> int:
    positions = int(getattr(source.config, "max_position_embeddings", 512))
    # RoBERTa-style models (and MPNet) number positions from padding_idx + 1: 514 embeddings,
    # 512 usable tokens.
    if source.config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        positions -= int(getattr(source.config, "pad_token_id", 1) or 1) + 1
    return min(positions, tokenizer_max) if 0 < tokenizer_max < 1_000_000 else positions


def _check_options(opts: ExportOptions) -> None:
    for flag, value, choices in (
        ("--target", opts.target, TARGETS),
        ("--quantize", opts.quantize, QUANTIZE),
        ("--layers", opts.layers, LAYER_OUTPUTS),
        ("--quant-preset", opts.quant_preset, QUANT_PRESET_CHOICES),
        ("--int8-scheme", opts.int8_scheme, INT8_SCHEMES),
    ):
        if value not in choices:
            raise ExportError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    built = _variant_names(opts)
    unknown = [v for v in opts.variants if v not in built]
    if unknown:
        raise ExportError(
            f"--variants {','.join(unknown)}: this export builds only {', '.join(built)}"
            f" (--target {opts.target}, --quantize {opts.quantize})"
        )


def _variant_names(opts: ExportOptions) -> list[str]:
    """The variants an export with these options builds."""
    if opts.target == "cuda":
        return ["fp32", "fp16"]
    return ["fp32", "int8"] if opts.quantize == "int8" else ["fp32"]


def _ways(variant: Variant, kernels: Path | None) -> dict[str, Path | None]:
    """How a server may run ``variant``: a CPU graph with ctxembed functions runs them as the
    fused kernels by default, and as onnxruntime's operators where the kernels were not built,
    so where this install has them it is validated both ways."""
    if kernels is None or "fused_chains" not in variant.optimization:
        return {STANDARD: None}
    return {STANDARD: None, FUSED: kernels}


def _failure_table(results: dict[str, dict[str, Any]]) -> str:
    rows = [f"  {'variant':8} {'figure':18} {'value':>10} {'minimum':>10}"]
    for name, fig in results.items():
        for metric, limit in fig["thresholds"].items():
            mark = "FAIL" if any(f.startswith(metric) for f in fig["failures"]) else "ok"
            rows.append(f"  {name:8} {metric:18} {fig[metric]:10.6f} {limit:10.6f}  {mark}")
    return "\n".join(rows)


def _check_output(out: Path, force: bool) -> Path:
    """The output folder, absolute, once it is known that it can be written: fail here, in
    one line, rather than after minutes of work."""
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    if out.exists() and not force:
        raise ExportError(f"--out {out} already exists; pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent))
    except OSError as exc:
        raise ExportError(
            f"--out {out}: cannot write in {out.parent}: {exc.strerror or exc}"
        ) from None
    return out


def _refuse_own_source(out: Path, source: ModelSource) -> None:
    """``--force`` replaces the output folder: never when that would delete the source."""
    if not source.is_local:
        return
    src = Path(source.location).resolve()
    if out == src or out in src.parents:
        raise ExportError(
            f"--out {out} is or contains the model being exported ({src});"
            " choose another output folder"
        )


def export_model(opts: ExportOptions) -> ExportResult:
    _check_options(opts)
    steps = Steps(total=6)
    out = _check_output(opts.out, opts.force) if opts.out is not None else None
    with steps.step("Resolving the model"):
        source = resolve_source(opts.model, opts.revision)
    if out is None:
        out = _check_output(opts.models_root / source.name, opts.force)
    _refuse_own_source(out, source)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    # mkdtemp makes it owner-only: the folder is served, often by another user (a container's)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        manifest = _build(opts, source, out.name, tmp, steps)
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest, steps.elapsed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(
    opts: ExportOptions, source: ModelSource, name: str, tmp: Path, steps: Steps
) -> Manifest:
    all_layers = opts.layers == "all"
    work = tmp / "_work"
    with steps.step("Exporting to ONNX with optimum (feature-extraction)"):
        raw = export_onnx(source, work, all_layers)
    variants: list[Variant] = []
    with steps.step(f"Optimizing for {opts.target} (ONNX Runtime transformer fusions)"):
        fused = fuse(raw, tmp / "model.onnx", source.config, use_gpu=False)
        variants.append(_variant("fp32", "model.onnx", "fp32", "cpu", tmp, fused.optimization()))
    # The tokenizer comes first: int8 calibration tokenizes with it.
    with steps.step("Writing the tokenizer (padding and truncation cleared)"):
        tokenizer, tokenizer_max = write_tokenizer(source.location, source.revision, tmp)
        source.config.save_pretrained(
            tmp
        )  # config.json: lets optimum's ORT classes load the folder
    max_tokens = _max_tokens(source, tokenizer_max)
    graph_inputs, layer_outputs = _graph_io(fused.path, all_layers, source)
    refs: list[Reference] = []  # PyTorch's outputs on the selection texts, computed once

    selection, selection_name = selection_set(opts.selection_texts)

    def references() -> list[Reference]:
        if not refs:
            refs.extend(build_references(source.location, max_tokens, graph_inputs, selection))
        return refs

    if opts.target == "cpu" and opts.quantize == "int8":
        preset = detect_cpu_preset() if opts.quant_preset == "auto" else opts.quant_preset
        how = f"scheme {opts.int8_scheme}, optimum preset {preset}"
        with steps.step(f"Quantizing to int8 ({how})"):
            int8 = tmp / "model_int8.onnx"
            feeds = calibration_feeds(tmp / tokenizer.file, graph_inputs, max_tokens)
            quant = _int8_by_scheme(opts, fused.path, int8, preset, feeds, references)
            quant["selection"] = {"set": selection_name, "texts": len(selection)}
            variants.append(
                _variant("int8", int8.name, "int8", "cpu", tmp, fused.optimization(), quant)
            )
    elif opts.target == "cuda":
        with steps.step("Converting to fp16 for CUDA"):
            to_fp16(raw, tmp / "model_fp16.onnx", source.config)
            variants.append(_variant("fp16", "model_fp16.onnx", "fp16", "cuda", tmp, {}))
    else:
        steps.done += 1
    # Chains of small operators as functions ctxembed's kernels run (the same numbers)
    variants = [wrapped_variant(tmp, v) for v in variants]
    with steps.step(f"Validating {len(variants)} variant(s) against PyTorch"):
        variants = _validate(opts, variants, tmp, references())
    if opts.variants:  # built and validated, but not shipped
        for v in variants:
            if v.name not in opts.variants:
                (tmp / v.file).unlink()
        variants = [v for v in variants if v.name in opts.variants]
    shutil.rmtree(work, ignore_errors=True)
    manifest = Manifest(
        name=name,
        source={
            "model": source.description,
            "revision": source.revision,
            "location": source.location if source.is_local else None,
        },
        architecture=(getattr(source.config, "architectures", None) or ["?"])[0],
        model_type=source.config.model_type,
        hidden_size=int(getattr(source.config, "hidden_size", 0) or source.config.dim),
        num_layers=num_layers(source.config),
        max_tokens=max_tokens,
        graph_inputs=graph_inputs,
        layer_outputs=layer_outputs,
        variants=variants,
        tokenizer=tokenizer,
        word_segmentation=DEFAULT_SEGMENTATION,
        tools=_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _graph_io(
    path: Path, all_layers: bool, source: ModelSource
) -> tuple[list[str], dict[int, str]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    n = num_layers(source.config)
    layer_outputs = {n: "last_hidden_state"}
    if all_layers:
        layer_outputs.update({i: f"hidden_states.{i}" for i in range(n)})
        missing = [v for v in layer_outputs.values() if v not in outputs]
        if missing:
            raise ExportError(f"the exported graph lacks outputs {missing}")
    return inputs, layer_outputs


def _variant(
    name: str,
    file: str,
    precision: str,
    target: str,
    folder: Path,
    optimization: dict[str, Any],
    quantization: dict[str, Any] | None = None,
) -> Variant:
    path = folder / file
    return Variant(
        name=name,
        file=file,
        precision=precision,
        target=target,
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        optimization=optimization,
        quantization=quantization,
    )


def _int8_by_scheme(
    opts: ExportOptions,
    fused: Path,
    out: Path,
    preset: str,
    feeds: list[dict[str, Any]],
    references: Callable[[], list[Reference]],
) -> dict[str, Any]:
    """Build the int8 graph of ``opts.int8_scheme``; for ``auto``, the first scheme of
    AUTO_ORDER (fastest first) whose figures on the selection texts meet the thresholds."""
    if opts.int8_scheme != "auto":
        return build_int8(
            fused, out, opts.int8_scheme, preset, opts.per_channel, feeds, opts.int8_embeddings
        )
    thresholds = opts.thresholds.get("int8", Thresholds())
    tried: dict[str, dict[str, float]] = {}

    def build(
        scheme: Int8Scheme, fp32_nodes: Sequence[str] = (), form: FallbackForm = "fp32"
    ) -> dict[str, Any]:
        return build_int8(
            fused,
            out,
            scheme,
            preset,
            opts.per_channel,
            feeds,
            opts.int8_embeddings,
            fp32_nodes,
            form,
        )

    def session() -> Any:
        return load_session(out, ["CPUExecutionProvider"])

    for scheme in AUTO_ORDER:
        quant = build(scheme)
        figures = _compare_as_served(out, references(), thresholds)
        _report(scheme, figures)
        tried[scheme] = {k: figures[k] for k in ("word_cosine_mean", "word_cosine_min")}
        if _only_words_fail(figures) and scheme in FALLBACK_SCHEMES:
            # A scheme that holds the mean but breaks a few words: the MatMuls that break
            # them leave its int8, chosen by measured harm in fp32 (fallback.py).
            def probe(nodes: Sequence[str], scheme: Int8Scheme = scheme) -> Any:
                build(scheme, nodes)
                return session()

            import onnx

            graph = onnx.load(str(fused), load_external_data=False)
            fallback = choose_fallback(
                probe,
                ffn_down_projections(graph),
                references(),
                thresholds.word_min,
                lambda line: print(f"        {line}", flush=True),
            )
            # The chosen nodes block-wise if that passes (faster), else in fp32.
            for form in FALLBACK_FORMS if fallback.nodes else ():
                quant = build(scheme, fallback.nodes, form) | {"fallback_search": fallback.facts()}
                figures = _compare_as_served(out, references(), thresholds)
                label = f"{scheme} + {len(fallback.nodes)} {form}"
                _report(label, figures)
                tried[label] = {k: figures[k] for k in ("word_cosine_mean", "word_cosine_min")}
                if figures["passed"]:
                    break
        if figures["passed"]:
            break
    # When none passes, the last (most accurate) stays and validation reports it.
    return quant | {"auto": {"order": list(AUTO_ORDER), "tried": tried}}


def _compare_as_served(
    graph: Path, refs: Sequence[Reference], thresholds: Thresholds
) -> dict[str, Any]:
    """``compare_variant`` on an int8 candidate the ways a server may run it once its chains
    are wrapped (``_ways``): the choice must hold with and without the fused kernels. A
    candidate that fails the first way fails (its figures are that way's): no second pass."""
    cpu = ["CPUExecutionProvider"]
    runs = {STANDARD: compare_variant(load_session(graph, cpu), refs, thresholds)}
    kernels = shipped_kernels()
    if kernels is not None and runs[STANDARD]["passed"]:
        wrapped = graph.with_name(f".wrapped-{graph.name}")
        try:
            if wrap_file(graph, wrapped):
                session = load_session(wrapped, cpu, kernels)
                runs[FUSED] = compare_variant(session, refs, thresholds)
        finally:
            wrapped.unlink(missing_ok=True)
    return worse_of(runs)


def _report(scheme: str, figures: dict[str, Any]) -> None:
    verdict = "chosen" if figures["passed"] else "below the thresholds"
    print(
        f"      {scheme:14} word cosine mean {figures['word_cosine_mean']:.4f},"
        f" worst {figures['word_cosine_min']:.4f}: {verdict}",
        flush=True,
    )


def _only_words_fail(figures: dict[str, Any]) -> bool:
    """Failed on the worst word (or token) alone: the mean held."""
    return (
        not figures["passed"]
        and figures["word_cosine_mean"] >= figures["thresholds"]["word_cosine_mean"]
    )


def _validate(
    opts: ExportOptions, variants: list[Variant], folder: Path, refs: list[Reference]
) -> list[Variant]:
    import onnxruntime as ort
    from tqdm import tqdm

    available = ort.get_available_providers()
    kernels = shipped_kernels()
    results: dict[str, dict[str, Any]] = {}
    # A CPU graph with functions runs both ways where the kernels exist (_ways says why)
    ways = {v.name: _ways(v, kernels) for v in variants}
    total = len(refs) * sum(len(w) for w in ways.values())
    with tqdm(total=total, unit="text", leave=False) as bar:
        for v in variants:
            # An fp16 graph validates on CUDA when this install has it, else on the CPU
            # provider (which runs these fp16 kernels too): the manifest says which.
            wanted = ["CUDAExecutionProvider"] if v.target == "cuda" else []
            providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
            thresholds = opts.thresholds.get(v.precision, Thresholds())
            runs = {}
            for way, library in ways[v.name].items():
                try:
                    session = load_session(folder / v.file, providers, library)
                except Exception as exc:  # ORT raises its own exception types
                    raise ExportError(
                        f"cannot run the {v.name} variant for validation ({way}): {exc}"
                    ) from exc
                runs[way] = compare_variant(session, refs, thresholds, lambda: bar.update(1))
            results[v.name] = worse_of(runs)
            results[v.name]["provider"] = session.get_providers()[0]
            # where it was validated: a folder made here runs on other CPUs (docs: deploy, arm64)
            results[v.name]["machine"] = platform.machine()
            results[v.name]["cpu_flags"] = kernel_flags()
    failed = [name for name, r in results.items() if not r["passed"]]
    if failed:
        hint = ""
        if failed == ["int8"]:
            tried = (variants[-1].quantization or {}).get("auto", {}).get("tried", {})
            best = "".join(
                f"\n  {scheme:14} word cosine mean {f['word_cosine_mean']:.4f},"
                f" worst {f['word_cosine_min']:.4f}"
                for scheme, f in tried.items()
            )
            hint = (
                (f"\nint8 schemes tried:{best}" if best else "")
                + "\nint8 does not hold on this model; fp32 passed: export it alone with"
                " --quantize none (or lower --int8-word-mean/--int8-word-min knowingly)"
            )
        raise ValidationFailed(_failure_table(results), hint)
    return [replace(v, validation=results[v.name]) for v in variants]
