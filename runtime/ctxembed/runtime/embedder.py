"""``WordEmbedder``: texts → one contextual vector per word.

The work is three stages that can be tested and timed alone, and that the gRPC micro-batcher
drives separately so that one ONNX run serves many requests:

    prepare  (validate, tokenize, select the output words, plan windows)  → TokenizedInputs
    forward  (pad per length bucket, run the session)          → token states per text
    finish   (combine layers, pool, normalize, build results)  → WordEmbeddings
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ctxembed.runtime.errors import Abandoned, InvalidInput, ModelLoadError
from ctxembed.runtime.manifest import Manifest, load_manifest
from ctxembed.runtime.pooling import combine_layers, l2_normalize, pool
from ctxembed.runtime.selection import Selection, all_words, select_spans, select_words
from ctxembed.runtime.session import CUDA, ModelSession, onnxruntime_version
from ctxembed.runtime.settings import MAX_PADDING, RUN_BATCH_TOKENS, EngineSettings
from ctxembed.runtime.stages import response_bytes
from ctxembed.runtime.tokenization import TextTokenizer, TokenizedText
from ctxembed.runtime.types import (
    DEFAULT_OPTIONS,
    DType,
    EmbedOptions,
    InputLike,
    LayerCombine,
    ModelInfo,
    Pooling,
    Provider,
    TextInput,
    Token,
    Word,
    WordEmbeddings,
)
from ctxembed.runtime.validation import check_input, check_options, coerce_input
from ctxembed.runtime.windows import WindowPlan, plan_windows


# NamedTuples rather than dataclasses: built on every request, and cheaper to build.
class TextPlan(NamedTuple):
    """One text ready to run: its tokens, the words (or spans) it returns, and its windows."""

    tokens: TokenizedText
    selection: Selection
    plan: WindowPlan


class TokenizedInputs(NamedTuple):
    """A validated, tokenized call, ready for :meth:`WordEmbedder.forward`."""

    texts: tuple[TextPlan, ...]
    options: EmbedOptions
    layer_ids: tuple[int, ...]  # absolute hidden-state indices

    @property
    def num_tokens(self) -> int:
        return sum(t.tokens.num_tokens for t in self.texts)

    def response_bytes(self, dimension: int) -> int:
        """About how large the call's results are once serialized (vectors dominate)."""
        return response_bytes(
            self.options,
            dimension,
            [
                (t.selection.tokens.shape[0], t.tokens.num_tokens, len(t.tokens.text))
                for t in self.texts
            ],
        )


class WordEmbedder:
    """An exported model folder, loaded: implements the stages the service drives
    (``ctxembed.runtime.stages.WordEmbeddingModel``) and the one-call ``embed``."""

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        session: ModelSession,
        tokenizer: TextTokenizer,
        settings: EngineSettings,
    ) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.settings = settings
        self.limits = settings.limits
        self.capacity = manifest.max_tokens - tokenizer.num_special
        self.stride = settings.stride or max(1, self.capacity // 2)
        if not 1 <= self.stride <= self.capacity:
            raise ValueError(f"stride must be between 1 and {self.capacity}, got {self.stride}")
        device = "cuda" if session.provider == CUDA else "cpu"
        self.run_batch_tokens = settings.run_batch_tokens or RUN_BATCH_TOKENS[device]
        padding = settings.max_padding
        self.max_padding = MAX_PADDING[device] if padding is None else padding
        # Dynamic int8 quantizes activations per run over the whole batch: a text's vectors
        # would depend on its batch neighbours, so its windows run alone. Calibrated int8
        # (the export default) has fixed scales and batches like fp32.
        isolate = settings.isolate_rows
        dynamic = session.variant.dynamic_activation_scales
        self.isolate_rows = dynamic if isolate is None else isolate
        self._pad_id = manifest.tokenizer.pad_token_id
        self._layers_available = tuple(manifest.layers_available)
        self._prefix = np.asarray(tokenizer.prefix_ids, dtype=np.int64)
        self._suffix = np.asarray(tokenizer.suffix_ids, dtype=np.int64)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        provider: Provider | None = None,
        *,
        settings: EngineSettings | None = None,
        **options: Any,
    ) -> WordEmbedder:
        """Load a folder written by ``ctxembed export`` and warm its session up.

        ``settings`` (default ``EngineSettings()``), with ``provider`` and any of its fields
        given as keywords on top: ``WordEmbedder.load(path, "cpu", parallel_runs=2)``.
        """
        base = settings or EngineSettings()
        if provider is not None:
            options["provider"] = provider
        unknown = sorted(set(options) - {f.name for f in fields(EngineSettings)})
        if unknown:
            raise TypeError(f"WordEmbedder.load() got unknown options {unknown}")
        config = replace(base, **options)
        path = Path(model_dir)
        manifest = load_manifest(path)
        tokenizer = TextTokenizer.from_file(path / manifest.tokenizer.file)
        if manifest.max_tokens <= tokenizer.num_special:
            raise ModelLoadError(f"{path}: max_tokens {manifest.max_tokens} is too small")
        session = ModelSession(path, manifest, config)
        embedder = cls(path, manifest, session, tokenizer, config)
        session.warm_up(
            [*tokenizer.prefix_ids, *tokenizer.suffix_ids],
            manifest.layer_outputs[manifest.num_layers],
        )
        return embedder

    def close(self) -> None:
        """Stop the threads of ``parallel_runs`` (if any); the embedder stays usable."""
        self.session.close()

    def __enter__(self) -> WordEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts -------------------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return self.manifest.hidden_size

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def parallel_runs(self) -> int:
        return self.session.parallel_runs

    def info(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(
            name=m.name,
            source_model=str(m.source.get("model", "")),
            architecture=m.architecture,
            model_type=m.model_type,
            dimension=m.hidden_size,
            num_layers=m.num_layers,
            layers_available=tuple(m.layers_available),
            max_tokens_per_window=m.max_tokens,
            precision=self.session.variant.precision,
            execution_provider=self.session.provider,
            lowercase=m.tokenizer.lowercase,
            limits=self.limits,
            onnxruntime_version=onnxruntime_version(),
            threads=self.session.threads,
            parallel_runs=self.session.parallel_runs,
            word_segmentation=m.word_segmentation,
            fused_kernels=self.session.kernels is not None,
        )

    # -- the one-call API --------------------------------------------------------------------
    def embed(
        self,
        inputs: Sequence[InputLike],
        *,
        pooling: Pooling = "mean",
        layers: Sequence[int] = (-1,),
        layer_combine: LayerCombine = "mean",
        normalize: bool = False,
        dtype: DType = "float32",
        include_tokens: bool = False,
    ) -> list[WordEmbeddings]:
        """Embed many inputs at once; results come back in input order."""
        options = EmbedOptions(pooling, layers, layer_combine, normalize, dtype, include_tokens)  # type: ignore[arg-type]
        prepared = self.prepare(inputs, options)
        states = self.forward(prepared.texts, prepared.layer_ids)
        return self.finish(prepared, states, prepared.layer_ids)

    # -- stage 1 -----------------------------------------------------------------------------
    def prepare(
        self, inputs: Sequence[InputLike], options: EmbedOptions = DEFAULT_OPTIONS
    ) -> TokenizedInputs:
        """Validate and tokenize; raises ``InvalidInput`` naming the field."""
        if isinstance(inputs, (str, TextInput)):
            raise InvalidInput("inputs", "expected a list of inputs, got a single input")
        options, layer_ids = check_options(
            options, self.manifest.num_layers, self._layers_available
        )
        coerced = [coerce_input(value, f"inputs[{i}]") for i, value in enumerate(inputs)]
        for i, inp in enumerate(coerced):
            check_input(inp, f"inputs[{i}]", self.limits)
        tokenized = self._tokenize(coerced)
        texts = tuple(
            self._prepare_text(inp, tok, f"inputs[{i}]")
            for i, (inp, tok) in enumerate(zip(coerced, tokenized))
        )
        return TokenizedInputs(texts, options, layer_ids)

    def _tokenize(self, inputs: Sequence[TextInput]) -> list[TokenizedText]:
        if all(inp.text is not None for inp in inputs):  # the usual call: no pre-split words
            return self.tokenizer.tokenize_texts([inp.text or "" for inp in inputs])
        raw = [i for i, inp in enumerate(inputs) if inp.text is not None]
        split = [i for i, inp in enumerate(inputs) if inp.text is None]
        out: list[TokenizedText | None] = [None] * len(inputs)
        if raw:
            for i, tok in zip(
                raw,
                self.tokenizer.tokenize_texts([inputs[i].text or "" for i in raw]),
            ):
                out[i] = tok
        if split:
            lists = [list(inputs[i].words or ()) for i in split]
            for i, tok in zip(split, self.tokenizer.tokenize_words(lists)):
                out[i] = tok
        return [t for t in out if t is not None]

    def _prepare_text(self, inp: TextInput, tok: TokenizedText, field: str) -> TextPlan:
        if inp.words is not None and tok.word_index.shape[0] != len(inp.words):
            missing = sorted(set(range(len(inp.words))) - set(tok.word_index.tolist()))[0]
            raise InvalidInput(
                f"{field}.words[{missing}]", "produces no token (only characters the model ignores)"
            )
        if inp.select_spans:
            selection = select_spans(tok, inp.select_spans, field)
        elif inp.select_words:
            selection = select_words(tok, inp.select_words, self.tokenizer.normalize)
        else:
            selection = all_words(tok)
        plan = plan_windows(tok.num_tokens, tok.word_tokens, self.capacity, self.stride)
        return TextPlan(tok, selection, plan)

    # -- stage 2 -----------------------------------------------------------------------------
    def forward(
        self,
        texts: Sequence[TextPlan],
        layer_ids: Sequence[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        """Token states per text, shape (len(layer_ids), tokens, dim), float32.

        Windows of all texts are sorted by length and padded per batch of similar lengths
        (dynamic-int8 windows run alone, see ``isolate_rows``), so a text's vectors do not
        depend on what it is batched with. ``should_stop`` is asked between ONNX runs; when it
        says yes, ``Abandoned`` is raised (the caller has gone: stop spending CPU on it).
        """
        outputs = [self.manifest.layer_outputs[i] for i in layer_ids]
        if len(texts) == 1 and texts[0].plan.count == 1 and texts[0].selection.tokens.shape[0]:
            return [self._forward_alone(texts[0], outputs)]
        n_prefix, n_special = len(self.tokenizer.prefix_ids), self.tokenizer.num_special
        rows: list[tuple[int, int, int, int]] = []  # (text, window, start, end) per model row
        states = []
        for t, text in enumerate(texts):
            n = text.tokens.num_tokens if text.selection.tokens.shape[0] else 0
            states.append(np.empty((len(outputs), n, self.dimension), np.float32))
            if n:
                rows.extend((t, w, s, e) for w, (s, e) in enumerate(text.plan.windows.tolist()))
        lengths = [e - s + n_special for _, _, s, e in rows]
        order = sorted(range(len(rows)), key=lengths.__getitem__)
        batches = self._buckets(order, lengths)
        feeds = []
        for batch in batches:
            width = lengths[batch[-1]]
            ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            ids[:, :n_prefix] = self._prefix
            for r, row in enumerate(batch):
                t, _, s, e = rows[row]
                end = n_prefix + e - s
                ids[r, n_prefix:end] = texts[t].tokens.ids[s:e]
                ids[r, end : end + len(self._suffix)] = self._suffix
                mask[r, : end + len(self._suffix)] = 1
            feeds.append((ids, mask))
        # Several runs go out in parallel (see ModelSession.run_many); scatter as they return.
        for batch, result in zip(batches, self._run(feeds, outputs, should_stop)):
            for r, row in enumerate(batch):
                t, w, s, _ = rows[row]
                self._scatter(texts[t], w, s, [out[r] for out in result], states[t], n_prefix)
        return states

    def _run(
        self,
        feeds: list[tuple[np.ndarray, np.ndarray]],
        outputs: list[str],
        should_stop: Callable[[], bool] | None,
    ) -> Iterator[list[np.ndarray]]:
        """The runs' results in order; with ``should_stop``, in rounds of parallel runs with the
        question asked before each round."""
        if should_stop is None:
            yield from self.session.run_many(feeds, outputs)
            return
        step = self.session.parallel_runs
        for start in range(0, len(feeds), step):
            if should_stop():
                raise Abandoned()
            yield from self.session.run_many(feeds[start : start + step], outputs)

    def _forward_alone(self, text: TextPlan, outputs: list[str]) -> np.ndarray:
        """One text in one window (most requests): no bucketing, and no copy of the states,
        which are views into the session's output."""
        ids = text.tokens.framed_ids[None, :]
        result = self.session.run(ids, _ones(ids.shape[1]), outputs)
        lo, hi = len(self._prefix), len(self._prefix) + text.tokens.num_tokens
        if len(result) == 1:
            return result[0][:, lo:hi]
        return np.stack([out[0, lo:hi] for out in result])

    def _buckets(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Consecutive runs of the length-sorted rows within the token budget, and spread over
        the session's parallel runs (16 rows → two runs of 8 when it has two)."""
        per_run = -(-len(order) // self.session.parallel_runs)
        allowed = 1.0 + self.max_padding
        batches: list[list[int]] = []
        current: list[int] = []
        real = 0
        for row in order:
            padded = (len(current) + 1) * lengths[row]
            if current and (
                self.isolate_rows
                or len(current) >= per_run
                or padded > self.run_batch_tokens
                or padded > allowed * (real + lengths[row])
            ):
                batches.append(current)
                current, real = [], 0
            current.append(row)
            real += lengths[row]
        if current:
            batches.append(current)
        return batches

    @staticmethod
    def _scatter(
        text: TextPlan,
        window: int,
        start: int,
        row_states: list[np.ndarray],
        target: np.ndarray,
        offset: int,
    ) -> None:
        """Copy one model row's token states into the text's (layers, tokens, dim) array."""
        if text.plan.count == 1:
            n = text.tokens.num_tokens
            for k, layer in enumerate(row_states):
                target[k] = layer[offset : offset + n]
            return
        idx = np.flatnonzero(text.plan.token_window == window)
        for k, layer in enumerate(row_states):
            target[k, idx] = layer[offset + idx - start]

    # -- stage 3 -----------------------------------------------------------------------------
    def finish(
        self, prepared: TokenizedInputs, states: Sequence[np.ndarray], state_layers: Sequence[int]
    ) -> list[WordEmbeddings]:
        """Pool each text; ``state_layers`` says which layer each row of ``states`` holds."""
        if tuple(state_layers) != prepared.layer_ids:
            pick = [list(state_layers).index(i) for i in prepared.layer_ids]
            states = [st[pick] for st in states]
        return [
            self._finish_text(text, st, prepared.options)
            for text, st in zip(prepared.texts, states)
        ]

    def _finish_text(
        self, text: TextPlan, states: np.ndarray, options: EmbedOptions
    ) -> WordEmbeddings:
        selection = text.selection
        hidden = combine_layers(states, options.layer_combine)
        vectors = pool(hidden, selection.tokens, options.pooling)
        if options.normalize:
            vectors = l2_normalize(vectors)
        if options.dtype == "float16":
            vectors = vectors.astype(np.float16)
        tok = text.tokens
        source = tok.text
        spans = zip(selection.chars.tolist(), selection.index.tolist())
        if options.include_tokens:
            tokens = _tokens(tok, selection.tokens.tolist())
            words = tuple(
                Word(source[cs:ce], cs, ce, i, t) for ((cs, ce), i), t in zip(spans, tokens)
            )
        else:
            words = tuple(Word(source[cs:ce], cs, ce, i) for (cs, ce), i in spans)
        windows_run = (
            text.plan.count if tok.num_tokens and selection.tokens.shape[0] else 0
        )  # skipped
        return WordEmbeddings(words, vectors, tok.num_tokens, windows_run)


def _tokens(tok: TokenizedText, ranges: list[list[int]]) -> list[tuple[Token, ...]]:
    """The tokens of each unit, for ``include_tokens``."""
    pieces, ids, offsets = tok.pieces, tok.ids.tolist(), tok.offsets.tolist()
    return [
        tuple(Token(pieces[k], ids[k], offsets[k][0], offsets[k][1]) for k in range(s, e))
        for s, e in ranges
    ]


@functools.lru_cache(maxsize=1024)
def _ones(width: int) -> np.ndarray:
    """The attention mask of one unpadded row, shared (read-only) by every row that long."""
    mask = np.ones((1, width), dtype=np.int64)
    mask.flags.writeable = False
    return mask
