"""Stage 2's engine room: the one place that creates ONNX Runtime sessions.

Provider choice, variant choice, threads, spinning, the CUDA fallback warning and warm-up all live
here, so that every caller (embedder, benchmarks, service) gets the same, measured settings.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ctxembed.runtime.cpu import has_vnni, is_arm, physical_cores
from ctxembed.runtime.errors import ModelLoadError, ProviderUnavailable
from ctxembed.runtime.fixed_lengths import FixedLengthRuns
from ctxembed.runtime.manifest import Manifest, Variant
from ctxembed.runtime.settings import EngineSettings
from ctxembed.runtime.types import PROVIDERS

log = logging.getLogger("ctxembed")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed; both share the ``onnxruntime`` module."""
    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _resolve_provider(requested: str) -> str:
    if requested not in PROVIDERS:
        raise ProviderUnavailable(
            f"provider must be one of {', '.join(PROVIDERS)}, not {requested!r}"
        )
    available = ort.get_available_providers()
    if requested != "cpu" and CUDA not in available and len(installed_runtimes()) > 1:
        # Both wheels write the same module: whichever was installed last wins.
        log.warning(
            "onnxruntime and onnxruntime-gpu are both installed and the one imported has no"
            " CUDA provider: pip uninstall -y onnxruntime onnxruntime-gpu &&"
            " pip install 'ctxembed[gpu]'"
        )
    if requested == "cuda" and CUDA not in available:
        raise ProviderUnavailable(
            "provider 'cuda' requested but this onnxruntime has no CUDA support: install"
            " onnxruntime-gpu in place of onnxruntime (pip install 'ctxembed[gpu]')"
        )
    if requested == "auto":
        if CUDA in available:
            return "cuda"
        log.info("no CUDA provider in this onnxruntime; running on the CPU")
        return "cpu"
    return requested


def _choose_variant(manifest: Manifest, provider: str, name: str | None) -> Variant:
    if name is not None:
        try:
            return manifest.variant(name)
        except KeyError:
            have = ", ".join(v.name for v in manifest.variants)
            raise ModelLoadError(f"model has no variant {name!r} (it has: {have})") from None
    preferred = ("fp16", "fp32") if provider == "cuda" else ("int8", "fp32")
    for want in preferred:
        for v in manifest.variants:
            if v.name == want:
                return v
    raise ModelLoadError(f"model has no variant usable on {provider}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _check_int8_fits(variant: Variant, provider: str) -> None:
    """An int8 graph needs the onnxruntime it was made for, and a VNNI one a VNNI CPU."""
    quantization = variant.quantization or {}
    needed = quantization.get("min_onnxruntime")
    if needed and _version(onnxruntime_version()) < _version(str(needed)):
        raise ModelLoadError(
            f"the {variant.name} variant needs onnxruntime >= {needed} (block-wise int8),"
            f" this is {onnxruntime_version()}: upgrade it, or pass variant fp32"
        )
    vnni_graph = quantization.get("preset") == "avx512_vnni" and provider == "cpu"
    if vnni_graph and not is_arm() and not has_vnni():
        log.warning(
            "%s was quantized for CPUs with VNNI (preset avx512_vnni) and this CPU has"
            " none: int8 products may saturate; re-export on this machine",
            variant.file,
        )


class _RunsInFlight:
    """How many runs are computing on a model's sessions, over all calling threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        """Count a run while it computes; yields how many others were computing as it began."""
        with self._lock:
            others = self._count
            self._count += 1
        try:
            yield others
        finally:
            with self._lock:
                self._count -= 1


class ModelSession:
    """ONNX Runtime sessions over one variant of a model folder.

    One session runs a lone row with all ``threads`` (lowest latency). On CPU, when a call has
    several rows, they run ``parallel_runs`` at a time, each on one thread of a second,
    single-threaded session over the same file: independent runs have no barriers between
    threads to wait at, which beat one multi-threaded run after another for short rows. It
    costs a second copy of the weights, so the library keeps it opt-in and the server on.
    A run that starts while another computes (a server's batches in flight side by side)
    takes the single-threaded session too: a second multi-threaded run would put its threads,
    spinning between its parallel parts, on cores that are already busy.
    """

    def __init__(self, model_dir: Path, manifest: Manifest, config: EngineSettings) -> None:
        provider = _resolve_provider(config.provider)
        self.variant = _choose_variant(manifest, provider, config.variant)
        _check_int8_fits(self.variant, provider)
        self.threads = config.threads or physical_cores()
        self.path = model_dir / self.variant.file
        providers = [CUDA, CPU] if provider == "cuda" else [CPU]
        if provider == "cuda":
            _preload_cuda_libraries()
        # ctxembed's fused kernels run on the CPU provider only; a graph without their
        # functions never calls them, so registering costs nothing there.
        wanted = provider == "cpu" and config.fused_kernels
        self.kernels = fused_kernels_library() if wanted else None
        self.session = self._create(_options(self.threads, config, self.kernels), providers)
        self.provider = self.session.get_providers()[0]
        if provider == "cuda" and self.provider != CUDA:
            raise ProviderUnavailable("onnxruntime could not start CUDA for this model")
        inputs = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - inputs
        if missing:
            raise ModelLoadError(f"{self.path} lacks graph inputs {sorted(missing)}")
        self._token_types = "token_type_ids" in inputs
        self._direct = _direct_run(self.session, self.provider)
        self._graphs: FixedLengthRuns | None = None
        if config.cuda_graph_lengths and self.provider == CUDA:
            self._graphs = self._graph_runs(config, manifest.tokenizer.pad_token_id)
        elif config.cuda_graph_lengths:
            log.info("CUDA graphs asked for, but running on the CPU: ignored")
        self.graph_lengths = self._graphs.lengths if self._graphs else ()
        runs = config.parallel_runs or physical_cores()
        self.parallel_runs = runs if self.provider == CPU else 1
        self._row_run: Callable[..., list[np.ndarray]] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._runs = _RunsInFlight()
        if self.parallel_runs > 1:
            row_session = self._create(_options(1, config, self.kernels), providers)
            self._row_run = _direct_run(row_session, CPU) or _public_run(row_session)
            self._pool = ThreadPoolExecutor(self.parallel_runs, thread_name_prefix="ctxembed-row")

    def _graph_runs(self, config: EngineSettings, pad_id: int) -> FixedLengthRuns | None:
        """Single-row runs replayed from CUDA graphs (see fixed_lengths.py); where this model
        or onnxruntime refuses them, say why and run without."""
        try:
            runs = FixedLengthRuns(
                self.path,
                config.cuda_graph_lengths,
                lambda: _options(self.threads, config),
                [(CUDA, {"enable_cuda_graph": "1"})],
                pad_id,
                "cuda",
                self.session.get_inputs()[0].shape[:2],
            )
            runs.warm_up()
        except Exception as exc:  # onnxruntime raises its own exception types
            log.warning("CUDA graphs unavailable for %s, running without: %s", self.path, exc)
            return None
        log.info("CUDA graphs captured for single rows of up to %s tokens", runs.lengths)
        return runs

    def _create(self, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"cannot load {self.path}: {exc}") from None

    def _feed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._token_types:
            feed["token_type_ids"] = _zeros(input_ids.shape)
        return feed

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, outputs: Sequence[str]
    ) -> list[np.ndarray]:
        """One run with all threads, or on one thread while another run computes (a single
        row replayed from a CUDA graph where one fits)."""
        if self._graphs is not None and self._graphs.fits(*input_ids.shape):
            return self._graphs.run(input_ids, attention_mask, outputs)
        feed = self._feed(input_ids, attention_mask)
        with self._runs.running() as others:
            row_run = self._row_run
            if others and row_run is not None:
                return row_run(list(outputs), feed, None)
            if self._direct is not None:
                return self._direct(list(outputs), feed, None)
            return [np.asarray(o) for o in self.session.run(list(outputs), feed)]

    def run_many(
        self, batches: Sequence[tuple[np.ndarray, np.ndarray]], outputs: Sequence[str]
    ) -> Iterator[list[np.ndarray]]:
        """Results of several (input_ids, attention_mask) batches, in order: in parallel
        single-threaded runs when there are several and ``parallel_runs`` allows."""
        if len(batches) < 2 or self._pool is None or self._row_run is None:
            return (self.run(ids, mask, outputs) for ids, mask in batches)
        names, run = list(outputs), self._row_run

        def one(batch: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
            with self._runs.running():
                return run(names, self._feed(*batch), None)

        return self._pool.map(one, batches)

    def warm_up(self, ids: Sequence[int], output: str) -> None:
        """First runs allocate buffers and pick kernels: pay that at load, not on a request."""
        arr = np.asarray([list(ids)], dtype=np.int64)
        for _ in range(2):
            self.run(arr, np.ones_like(arr), [output])
            list(self.run_many([(arr, np.ones_like(arr))] * self.parallel_runs, [output]))

    def close(self) -> None:
        """Stop the parallel-run threads; later calls run one after another."""
        pool, self._pool, self._row_run = self._pool, None, None
        self.parallel_runs = 1
        if pool is not None:
            pool.shutdown(wait=True)


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn], or torch's)
    when they are installed: the CUDA provider finds them there only once they are loaded.
    System-wide installs need nothing, so a failure here is only logged."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # what is missing shows when the session starts
        log.debug("onnxruntime.preload_dlls: %s", exc)


@functools.cache  # once per process: the library and onnxruntime do not change
def fused_kernels_library() -> Path | None:
    """ctxembed's fused kernels (``ctxembed.kernels``), where the install built them and this
    onnxruntime accepts them; else None, and the graphs run the functions' bodies, onnxruntime's
    own operators (the int8 chains' results bit for bit, the layer norms' to float rounding)."""
    from ctxembed.kernels import library

    path = library()
    if path is None:
        log.info("fused kernels not built (no C compiler at install): standard operators")
        return None
    try:  # a library this onnxruntime cannot load: say so once, at load, and go on without
        ort.SessionOptions().register_custom_ops_library(str(path))
    except Exception as exc:  # onnxruntime raises its own exception types
        log.warning("fused kernels not loaded (%s): running standard operators", exc)
        return None
    return path


def _options(
    threads: int, config: EngineSettings, kernels: Path | None = None
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if kernels is not None:
        options.register_custom_ops_library(str(kernels))
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    spin = "1" if config.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if config.spinning and config.spin_after_run_us <= 0:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    elif config.spinning:
        # A bounded spin: a request arriving soon after the last run finds the threads
        # awake, and an idle server stops burning a core after a few milliseconds.
        # (onnxruntime versions without this key ignore it and spin their default.)
        spin_us = str(config.spin_after_run_us)
        options.add_session_config_entry("session.intra_op.spin_duration_us", spin_us)
        options.add_session_config_entry("session.inter_op.spin_duration_us", spin_us)
    return options


def _direct_run(
    session: ort.InferenceSession, provider: str
) -> Callable[..., list[np.ndarray]] | None:
    """InferenceSession.run re-validates every feed in Python; our feeds are always the graph's
    dense inputs, so on CPU call the native binding directly. It is private API: where a
    version lacks it, ``run`` takes the public path (tested). CUDA keeps the public path,
    which owns the fallback on provider failure."""
    native = getattr(session, "_sess", None)
    run = getattr(native, "run", None)
    return run if callable(run) and provider == CPU else None


def _public_run(session: ort.InferenceSession) -> Callable[..., list[np.ndarray]]:
    return lambda names, feed, _options: [np.asarray(o) for o in session.run(names, feed)]


@functools.lru_cache(maxsize=1024)
def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    """Token type ids (all segment 0), shared read-only by every batch of that shape."""
    zeros = np.zeros(shape, dtype=np.int64)
    zeros.flags.writeable = False
    return zeros


def onnxruntime_version() -> str:
    return str(ort.__version__)
