"""How an engine runs: every option of ``WordEmbedder.load`` and its default, defined once.

``ctxembed serve`` reads its flag defaults from here, so a default changes in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctxembed.runtime.types import Limits, Provider

# Padded tokens per ONNX run by provider, where EngineSettings.run_batch_tokens is None.
RUN_BATCH_TOKENS = {"cpu": 256, "cuda": 8192}
# Padding per run by provider, where EngineSettings.max_padding is None (see there).
MAX_PADDING = {"cpu": 0.1, "cuda": 1.0}
# CUDA graph lengths of --cuda-graphs, in tokens with the specials: most requests (a sentence
# or two) fit the first two.
DEFAULT_GRAPH_LENGTHS = (16, 32, 64, 128)


@dataclass(frozen=True)
class EngineSettings:
    provider: Provider = "auto"
    variant: str | None = None  # default: int8 on cpu, fp16 on cuda, else fp32
    threads: int | None = None  # intra-op threads; None: physical cores
    # Spinning keeps ONNX Runtime's threads busy-waiting between the graph's parallel sections
    # instead of waking sleeping threads for each (about 2x faster per run here).
    spinning: bool = True
    # How long idle threads keep spinning after a run (0: stop as the run returns): a request
    # arriving soon finds them awake, and an idle process stops burning a core soon after.
    spin_after_run_us: int = 3000
    # Single-threaded runs in flight at once when a call has several rows (see ModelSession);
    # None: one per physical core. The library keeps one (less memory); the server uses None.
    parallel_runs: int | None = 1
    stride: int | None = None  # window stride for long texts; None: half a window
    # Padded tokens per ONNX run; None: RUN_BATCH_TOKENS for the provider. Small batches of
    # similar length were fastest on these cache-bound CPUs (see README, "Measured choices");
    # a GPU wants large ones.
    run_batch_tokens: int | None = None
    # Padding allowed in one run, as a fraction of its real tokens; None: MAX_PADDING for the
    # provider. On a CPU padded tokens cost as much as real ones; on a GPU a short run costs
    # its kernel launches whatever its length, so fewer, more padded runs win.
    max_padding: float | None = None
    # Run every window alone; None: only for int8 with dynamic activation scales, whose
    # vectors would otherwise depend on their batch neighbours.
    isolate_rows: bool | None = None
    # CUDA only: single-row runs of up to these many tokens are padded to the next length
    # and replayed from a CUDA graph (DEFAULT_GRAPH_LENGTHS with --cuda-graphs);
    # (): off. Each length holds its own copy of the weights on the GPU.
    cuda_graph_lengths: tuple[int, ...] = ()
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
