"""Single-row runs padded to a few fixed lengths, replayed from CUDA graphs on a GPU.

A 9-token run of a base-size encoder on a GPU is a few hundred small kernels: launching them
costs more than running them. A CUDA graph records the launches once and replays them in one
call, but onnxruntime captures one only when every node runs on CUDA, and with symbolic input
dimensions the shape arithmetic (Shape, Gather, Concat on int64) is placed on the CPU. Fixing
the dimensions at load (``add_free_dimension_override_by_name``) lets onnxruntime fold that
arithmetic into constants, so each length gets its own session whose graph is all CUDA.

Each session owns fixed device buffers bound once through IO binding (a graph replays on the
same addresses); a run copies the padded row in, replays, and copies the states out. Padding
is masked, so a token's vector is the same as in an unpadded run (tested on the CPU, where the
same class runs without graphs). Rows longer than the last length, and runs of several rows,
take the session's ordinary path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass
class _Bucket:
    length: int
    session: ort.InferenceSession
    binding: ort.IOBinding
    inputs: dict[str, ort.OrtValue]
    outputs: dict[str, ort.OrtValue]
    lock: threading.Lock


class FixedLengthRuns:
    """One session per length, inputs and outputs bound to fixed buffers on ``device``."""

    def __init__(
        self,
        path: Path,
        lengths: Sequence[int],
        make_options: Callable[[], ort.SessionOptions],
        providers: list[str | tuple[str, dict[str, str]]],
        pad_id: int,
        device: str,
        dims: Sequence[str] | None = None,
    ) -> None:
        """``dims``: the inputs' symbolic (batch, sequence) dimension names, read from the
        file when not given."""
        if not lengths or min(lengths) < 1:
            raise ValueError(f"lengths must be positive, got {list(lengths)}")
        self.device = device
        self.pad_id = pad_id
        if dims is None:
            probe = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            dims = probe.get_inputs()[0].shape[:2]
        if len(dims) != 2 or not all(isinstance(d, str) for d in dims):
            raise ValueError(f"{path}: inputs have no symbolic (batch, sequence) dimensions")
        self._dims = (dims[0], dims[1])
        self._buckets = [
            self._bucket(path, n, make_options(), providers) for n in sorted(set(lengths))
        ]
        self.lengths = tuple(b.length for b in self._buckets)

    def _bucket(
        self,
        path: Path,
        length: int,
        options: ort.SessionOptions,
        providers: list[str | tuple[str, dict[str, str]]],
    ) -> _Bucket:
        options.add_free_dimension_override_by_name(self._dims[0], 1)
        options.add_free_dimension_override_by_name(self._dims[1], length)
        session = ort.InferenceSession(str(path), options, providers=providers)
        binding = session.io_binding()
        inputs = {}
        for spec in session.get_inputs():
            value = self.pad_id if spec.name == "input_ids" else 0
            data = np.full((1, length), value, dtype=np.int64)
            inputs[spec.name] = ort.OrtValue.ortvalue_from_numpy(data, self.device, 0)
            binding.bind_ortvalue_input(spec.name, inputs[spec.name])
        outputs = {}
        for spec in session.get_outputs():
            shape = [1, length, *spec.shape[2:]]
            if not all(isinstance(d, int) for d in shape):
                raise ValueError(f"{path}: output {spec.name} has a symbolic dimension {shape}")
            outputs[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type(
                shape, np.float32, self.device, 0
            )
            binding.bind_ortvalue_output(spec.name, outputs[spec.name])
        return _Bucket(length, session, binding, inputs, outputs, threading.Lock())

    def fits(self, rows: int, tokens: int) -> bool:
        return rows == 1 and tokens <= self.lengths[-1]

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, outputs: Sequence[str]
    ) -> list[np.ndarray]:
        """One row (``fits``), padded to the smallest length that holds it."""
        n = input_ids.shape[1]
        bucket = next(b for b in self._buckets if b.length >= n)
        ids = np.full((1, bucket.length), self.pad_id, dtype=np.int64)
        mask = np.zeros((1, bucket.length), dtype=np.int64)
        ids[:, :n] = input_ids
        mask[:, :n] = attention_mask
        with bucket.lock:  # one set of buffers per length: one run at a time on it
            bucket.inputs["input_ids"].update_inplace(ids)
            bucket.inputs["attention_mask"].update_inplace(mask)
            bucket.session.run_with_iobinding(bucket.binding)
            return [bucket.outputs[name].numpy()[:, :n] for name in outputs]

    def warm_up(self, runs: int = 3) -> None:
        """onnxruntime captures a length's graph on an early run: do that at load."""
        for bucket in self._buckets:
            ids = np.full((1, bucket.length), self.pad_id, dtype=np.int64)
            for _ in range(runs):
                self.run(ids, np.ones_like(ids), list(bucket.outputs)[:1])
