"""A fake engine behind the service's stage interface: transport tests without an export.

``FakeModel`` implements ``ctxembed.runtime.stages.WordEmbeddingModel`` with no ONNX and no
tokenizer: words are runs of non-space characters, and each word's vector is a plain function of
the word, its position and the layer, so a test can compute what a call must return. Input and
option checks are the engine's own (``ctxembed.runtime.validation``), so the status mapping is
tested against the real error fields. ``gate`` holds every forward until it is set: tests use it
to keep batches in flight while they queue, cancel or time out other calls. With ``fail_stage``,
that stage raises for any call that has a text containing ``POISON`` (a bug in one request).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ctxembed.runtime.errors import Abandoned, InvalidInput
from ctxembed.runtime.stages import response_bytes
from ctxembed.runtime.types import (
    DEFAULT_OPTIONS,
    EmbedOptions,
    InputLike,
    Limits,
    ModelInfo,
    TextInput,
    Word,
    WordEmbeddings,
)
from ctxembed.runtime.validation import check_input, check_options, coerce_input

NUM_LAYERS = 2
DIM = 4
POISON = "💥"


class FakeText(NamedTuple):
    text: str
    spans: tuple[tuple[int, int], ...]
    indices: tuple[int, ...]


class FakePrepared(NamedTuple):
    texts: tuple[FakeText, ...]
    options: EmbedOptions
    layer_ids: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return sum(len(t.spans) for t in self.texts)  # a word is a token here

    def response_bytes(self, dimension: int) -> int:
        return response_bytes(
            self.options, dimension, [(len(t.spans), len(t.spans), len(t.text)) for t in self.texts]
        )


def word_vector(word: str, position: int, layer: int) -> np.ndarray:
    """The fake model's state for one word: what a test expects back (mean pooling, 1 layer)."""
    return np.array([len(word), position, layer, ord(word[0])], dtype=np.float32)


class FakeModel:
    def __init__(
        self,
        limits: Limits | None = None,
        parallel_runs: int = 1,
        seconds_per_text: float = 0.0,
        fail_stage: str | None = None,
    ) -> None:
        self.fail_stage = fail_stage
        self._limits = limits or Limits()
        self._parallel_runs = parallel_runs
        self.seconds_per_text = seconds_per_text  # one "ONNX run" per text
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a forward starts
        self.texts_computed = 0  # texts that reached forward
        self.forward_threads: list[str] = []  # the thread each forward ran on, in order
        self.closed = False

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def parallel_runs(self) -> int:
        return self._parallel_runs

    def info(self) -> ModelInfo:
        return ModelInfo(
            name="fake",
            source_model="tests/fake_model.py",
            architecture="FakeModel",
            model_type="fake",
            dimension=DIM,
            num_layers=NUM_LAYERS,
            layers_available=tuple(range(NUM_LAYERS + 1)),
            max_tokens_per_window=512,
            precision="fp32",
            execution_provider="none",
            lowercase=True,
            limits=self._limits,
            onnxruntime_version="none",
            threads=1,
            parallel_runs=self._parallel_runs,
        )

    def prepare(
        self, inputs: Sequence[InputLike], options: EmbedOptions = DEFAULT_OPTIONS
    ) -> FakePrepared:
        if isinstance(inputs, (str, TextInput)):
            raise InvalidInput("inputs", "expected a list of inputs, got a single input")
        options, layer_ids = check_options(options, NUM_LAYERS, tuple(range(NUM_LAYERS + 1)))
        texts = []
        for i, value in enumerate(inputs):
            inp = coerce_input(value, f"inputs[{i}]")
            text = check_input(inp, f"inputs[{i}]", self._limits)
            words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            keep: Sequence[int] = range(len(words))
            if inp.select_words:
                wanted = {w.lower() for w in inp.select_words}
                keep = [k for k in keep if text[slice(*words[k])].lower() in wanted]
            texts.append(FakeText(text, tuple(words[k] for k in keep), tuple(keep)))
        self._maybe_fail("prepare", texts)
        return FakePrepared(tuple(texts), options, layer_ids)

    def _maybe_fail(self, stage: str, texts: Sequence[FakeText]) -> None:
        if stage == self.fail_stage and any(POISON in t.text for t in texts):
            raise RuntimeError(f"{stage} failed on purpose")

    def forward(
        self,
        texts: Sequence[FakeText],
        layer_ids: Sequence[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        self.entered.set()
        self.forward_threads.append(threading.current_thread().name)
        self.gate.wait(30)
        self._maybe_fail("forward", texts)
        states = []
        for t in texts:  # one "run" per text: the question is asked between runs
            if should_stop is not None and should_stop():
                raise Abandoned()
            time.sleep(self.seconds_per_text)
            self.texts_computed += 1
            rows = [
                [word_vector(t.text[s:e], k, layer) for (s, e), k in zip(t.spans, t.indices)]
                for layer in layer_ids
            ]
            states.append(np.array(rows, dtype=np.float32).reshape(len(layer_ids), -1, DIM))
        return states

    def finish(
        self, prepared: FakePrepared, states: Sequence[np.ndarray], state_layers: Sequence[int]
    ) -> list[WordEmbeddings]:
        self._maybe_fail("finish", prepared.texts)
        pick = [list(state_layers).index(i) for i in prepared.layer_ids]
        results = []
        for text, st in zip(prepared.texts, states):
            vectors = st[pick].mean(0)
            if prepared.options.normalize:
                vectors = vectors / np.maximum(
                    np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12
                )
            words = tuple(
                Word(text.text[s:e], s, e, k) for (s, e), k in zip(text.spans, text.indices)
            )
            results.append(
                WordEmbeddings(
                    words,
                    vectors.astype(prepared.options.dtype),
                    len(text.spans),
                    1 if text.spans else 0,
                )
            )
        return results

    def embed_calls(self, inputs: Sequence[InputLike]) -> list[WordEmbeddings]:
        """prepare → forward → finish in one call, as ``WordEmbedder.embed`` does."""
        prepared = self.prepare(inputs)
        return self.finish(
            prepared, self.forward(prepared.texts, prepared.layer_ids), prepared.layer_ids
        )

    def close(self) -> None:
        self.closed = True
