"""How an engine runs: every option of ``WordEmbedder.load`` and its default, defined once.

``ctxembed serve`` generates its flags from these fields (``flag.py``), so a setting is one field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ctxembed.runtime.flag import flag
from ctxembed.runtime.types import PROVIDERS, Limits, Provider

# Padded tokens per ONNX run by provider, where EngineSettings.run_batch_tokens is None.
RUN_BATCH_TOKENS = {"cpu": 256, "cuda": 8192}
# Padding per run by provider, where EngineSettings.max_padding is None (see there).
MAX_PADDING = {"cpu": 0.1, "cuda": 1.0}
# CUDA graph lengths of --cuda-graphs, in tokens with the specials: most requests (a sentence
# or two) fit the first two.
DEFAULT_GRAPH_LENGTHS = (16, 32, 64, 128)


def _per_provider(defaults: Mapping[str, object]) -> str:
    """A per-provider default for --help: "256 on CPU, 8192 on CUDA"."""
    return ", ".join(f"{value} on {provider.upper()}" for provider, value in defaults.items())


@dataclass(frozen=True)
class EngineSettings:
    provider: Provider = field(
        default="auto", metadata=flag("execution provider", choices=PROVIDERS)
    )
    variant: str | None = field(
        default=None,  # int8 on cpu, fp16 on cuda, else fp32
        metadata=flag("model variant", type=str, default_text="int8 on CPU, fp16 on CUDA"),
    )
    threads: int | None = field(
        default=None,  # None: the CPU budget (cpu.py)
        metadata=flag(
            "ONNX Runtime threads of a run",
            minimum=1,
            default_text="the CPU budget: physical cores, affinity and cgroup quota",
        ),
    )
    # Spinning keeps ONNX Runtime's threads busy-waiting between the graph's parallel sections
    # instead of waking sleeping threads for each: faster runs (docs/benchmarks.md).
    spinning: bool = field(
        default=True,
        metadata=flag("let idle ONNX Runtime threads spin (inside runs, and briefly after)",
                      kind="toggle"),
    )  # fmt: skip
    # A request arriving soon after a run finds the threads awake; an idle process stops
    # burning a core soon after.
    spin_after_run_us: int = field(
        default=3000,
        metadata=flag("microseconds threads keep spinning after a run (0: stop at once)",
                      minimum=0),
    )  # fmt: skip
    # Layer norms and the int8 `outlier` graph's per-row chains as one kernel each
    # (ctxembed.kernels, built at install where a C compiler exists; docs/int8.md).
    fused_kernels: bool = field(
        default=True,
        metadata=flag("run the graph's layer norms and int8 per-row chains as ctxembed's fused"
                      " CPU kernels, where built at install", kind="toggle"),
    )  # fmt: skip
    # Single-threaded runs in flight at once when a call has several rows (see ModelSession);
    # None: the CPU budget. The library keeps one (less memory); the server uses None.
    parallel_runs: int | None = field(
        default=1,
        metadata=flag(
            "ONNX runs in flight at once when a batch has several rows, one thread each"
            " (1 saves the second session's memory)",
            minimum=1,
            default_text="the CPU budget",
        ),
    )
    stride: int | None = field(
        default=None,
        metadata=flag("window stride for long texts, in tokens", minimum=1,
                      default_text="half a window"),
    )  # fmt: skip
    # Small batches of similar length suit cache-bound CPUs; a GPU wants large ones.
    run_batch_tokens: int | None = field(
        default=None,
        metadata=flag("padded tokens per ONNX run", minimum=1,
                      default_text=_per_provider(RUN_BATCH_TOKENS)),
    )  # fmt: skip
    # On a CPU padded tokens cost as much as real ones; on a GPU a short run costs its kernel
    # launches whatever its length, so fewer, more padded runs win.
    max_padding: float | None = field(
        default=None,
        metadata=flag("padding per ONNX run, as a fraction of its real tokens", type=float,
                      minimum=0, default_text=_per_provider(MAX_PADDING)),
    )  # fmt: skip
    # Run every window alone; None: only for int8 with dynamic activation scales, whose
    # vectors would otherwise depend on their batch neighbours.
    isolate_rows: bool | None = field(
        default=None,
        metadata=flag(
            "batch the rows of an int8 variant with dynamic activation scales (exported with"
            " --int8-scheme dynamic): faster, but vectors then depend slightly on batch"
            " neighbours; calibrated int8 always batches",
            name="--batch-int8-rows",
            kind="switch",
            to_setting=lambda on: False if on else None,
            from_setting=lambda value: value is False,
        ),
    )
    # CUDA only: single-row runs of up to these many tokens are padded to the next length
    # and replayed from a CUDA graph; (): off. Each length holds its own copy of the weights.
    cuda_graph_lengths: tuple[int, ...] = field(
        default=(),
        metadata=flag(
            f"CUDA: replay single-row runs of up to {DEFAULT_GRAPH_LENGTHS[-1]} tokens from"
            f" CUDA graphs, padded to {', '.join(map(str, DEFAULT_GRAPH_LENGTHS))} tokens (a"
            " copy of the weights per length)",
            name="--cuda-graphs",
            kind="switch",
            to_setting=lambda on: DEFAULT_GRAPH_LENGTHS if on else (),
            from_setting=bool,
        ),
    )
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        for name in ("threads", "parallel_runs", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.run_batch_tokens is not None and self.run_batch_tokens < 1:
            raise ValueError(f"run_batch_tokens must be at least 1, got {self.run_batch_tokens}")
        if self.max_padding is not None and self.max_padding < 0:
            raise ValueError(f"max_padding must be >= 0, got {self.max_padding}")
        if any(n < 1 for n in self.cuda_graph_lengths):
            raise ValueError(f"cuda_graph_lengths must be positive, got {self.cuda_graph_lengths}")
        if self.spin_after_run_us < 0:
            raise ValueError(f"spin_after_run_us must be >= 0, got {self.spin_after_run_us}")
