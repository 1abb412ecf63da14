"""One request through pre -> core -> post, for images and for texts.

pre:  images: read and decode each, resize, crop, normalise; texts: tokenize each. In a thread
      pool (Pillow and tokenizers release the GIL), between inference runs rather than beside
      them (turns.py)
core: the graph's batcher coalesces the items of concurrent requests into one session.run
post: L2-normalise if asked, mean-aggregate if asked (images)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batcher import Batcher, BatchObserver, RunBatch
from .errors import (
    DeadlineExpired,
    EmbedderError,
    InvalidImage,
    InvalidRequest,
    LimitExceeded,
    ModelUnavailable,
    RejectedItems,
)
from .memory import IdleTrimmer
from .preprocess import DecodeLimits, Preprocessor, decode
from .repository import IMAGE, TEXT, ModelEntry, Repository
from .runtime import run, run_text
from .sessions import Graph, Loaded, SessionCache
from .settings import Settings
from .sources import ImageSource, SourceReader
from .turns import CpuTurns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedOptions:
    normalize: bool = False
    aggregate_mean: bool = False
    normalize_aggregate: bool = False
    aggregate_only: bool = False


@dataclass(frozen=True)
class EmbedResult:
    entry: ModelEntry
    embeddings: np.ndarray  # [N, D] float32 (empty [0, D] with aggregate_only)
    aggregate: np.ndarray | None  # [D]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    normalized: np.ndarray = (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)
    return normalized


class Engine:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        cache: SessionCache,
        workers: int,
        batch_observer: BatchObserver | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.cache = cache
        self.reader = SourceReader(settings.image_root, settings.max_image_bytes)
        self.limits = DecodeLimits(
            max_pixels=settings.max_image_pixels, max_resized_pixels=settings.max_resized_pixels
        )
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
        self._batch_observer = batch_observer
        self.turns = CpuTurns()
        self.trimmer = IdleTrimmer()
        self._preprocessors = {
            name: Preprocessor(entry.spec.preprocessing, self.limits)
            for name, entry in repository.entries.items()
        }
        self._batchers: dict[Graph, Batcher] = {}
        self._batchers_lock = threading.Lock()

    def batcher(self, entry: ModelEntry, modality: str = IMAGE) -> Batcher:
        graph = (entry.name, modality)
        with self._batchers_lock:
            if graph not in self._batchers:
                settings = self.settings
                if modality == TEXT:
                    max_batch, max_queue = settings.max_text_batch_size, settings.max_queue_texts
                else:
                    max_batch = settings.max_batch_size if entry.spec.batch_invariant else 1
                    max_queue = settings.max_queue_images
                self._batchers[graph] = Batcher(
                    entry.name,
                    lambda: self._runner(entry, modality),
                    max_batch=max_batch,
                    max_delay_s=settings.max_batch_delay_ms / 1000,
                    max_queue=max_queue,
                    observer=self._batch_done,
                    turns=self.turns,
                    modality=modality,
                )
            return self._batchers[graph]

    def _runner(self, entry: ModelEntry, modality: str) -> RunBatch:
        """What runs a batch, with the graph loaded now if it was evicted since admission."""
        loaded = self.cache.get(entry, modality)
        if modality == TEXT:
            return lambda rows: self._run(entry, modality, len(rows), lambda: _run_texts(loaded, rows))
        return lambda tensors: self._run(
            entry, modality, len(tensors), lambda: run(loaded.session, np.stack(tensors))
        )

    def _run(self, entry: ModelEntry, modality: str, size: int, go: Callable[[], np.ndarray]) -> np.ndarray:
        """One batch through a graph, held to its contract: a graph that fails or gives the wrong
        shape is the model's fault (UNAVAILABLE), not the request's or the server's."""
        name, dim = entry.name, entry.spec.embedding_dim
        try:
            vectors = go()
        except Exception as exc:
            log.exception("model %s failed on a batch of %d (%s)", name, size, modality)
            raise ModelUnavailable(
                f"model {name!r} failed on a batch of {size} ({modality}): {type(exc).__name__}"
            ) from None
        if vectors.shape != (size, dim):
            raise ModelUnavailable(
                f"model {name!r}: its {modality} graph gave {list(vectors.shape)} for a batch of {size}, "
                f"not [{size}, {dim}]"
            )
        return vectors

    def _batch_done(self, model: str, modality: str, size: int, seconds: float) -> None:
        self.trimmer.touch()
        if self._batch_observer is not None:
            self._batch_observer(model, modality, size, seconds)

    def queue_depths(self) -> dict[Graph, int]:
        with self._batchers_lock:
            return {graph: batcher.depth() for graph, batcher in self._batchers.items()}

    async def embed(
        self,
        entry: ModelEntry,
        sources: list[ImageSource],
        options: EmbedOptions,
        deadline: float | None = None,
    ) -> EmbedResult:
        """Runs on the server's event loop and never blocks it: decoding runs in the worker pool,
        inference in the graph's batcher thread, a model load in a helper thread. `deadline` is a
        time.monotonic() value; past it the work is dropped, not run. Cancelling the coroutine
        (the caller went away) drops the request's decoding and inference not yet started."""
        self._check_images(sources, options)
        await self._ready(entry, IMAGE)
        preprocessor = self._preprocessors[entry.name]
        vectors = await self._infer(
            entry,
            IMAGE,
            len(sources),
            lambda index: self.reader.read(sources[index], index),
            lambda data: preprocessor(decode(data, self.limits)),
            deadline,
        )
        return self._post(entry, vectors, options)

    async def embed_text(
        self, entry: ModelEntry, texts: list[str], normalize: bool, deadline: float | None = None
    ) -> EmbedResult:
        """`embed` for texts: each tokenized in the worker pool, then the model's text graph."""
        self._check_texts(entry, texts)
        tokenizer = (await self._ready(entry, TEXT)).tokenizer
        assert tokenizer is not None  # a text graph loads with its tokenizer
        vectors = await self._infer(
            entry, TEXT, len(texts), texts.__getitem__, lambda text: tokenizer.encode([text])[0], deadline
        )
        return self._post(entry, vectors, EmbedOptions(normalize=normalize))

    async def _ready(self, entry: ModelEntry, modality: str) -> Loaded:
        """The graph, loaded in a helper thread if it is not resident: an unusable graph fails
        before any work, and a load never runs on the event loop."""
        loaded = self.cache.cached(entry.name, modality)
        return loaded if loaded is not None else await asyncio.to_thread(self.cache.get, entry, modality)

    async def _infer(
        self,
        entry: ModelEntry,
        modality: str,
        count: int,
        read: Callable[[int], Any],
        prepare: Callable[[Any], Any],
        deadline: float | None,
    ) -> np.ndarray:
        """Admission; each item read, then prepared in the pool during a decode turn (decode and
        preprocess, or tokenize); the batcher; the vectors in order. An InvalidImage is placed
        at its index."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExpired("deadline passed before the request was admitted")  # not "retry later"
        batcher = self.batcher(entry, modality)
        cancelled = threading.Event()

        def check() -> None:  # no work for a call that is gone
            if cancelled.is_set() or (deadline is not None and time.monotonic() >= deadline):
                raise DeadlineExpired("deadline passed or call cancelled before preparing")

        def one(index: int) -> Any:
            check()
            try:
                item = read(index)
                with self.turns.decode():
                    check()  # again: the turn may have come after a whole batch's run
                    return prepare(item)
            except InvalidImage as exc:
                raise exc.at(index) from None

        with batcher.admit(count) as admission:
            preparing = [self.pool.submit(one, i) for i in range(count)]
            inference: list[Future[np.ndarray]] = []
            try:
                await self._all_done(preparing)
                inference = batcher.submit(self._prepared(preparing, modality), deadline, admission)
                return np.stack(await self._collect(inference, deadline))
            finally:
                # However the request ends (answered, deadline, caller gone), nothing of it is left
                # to run: no-op for finished work, frees the queue slots of the rest.
                cancelled.set()
                for future in (*preparing, *inference):
                    future.cancel()

    @staticmethod
    async def _all_done(futures: list[Future[np.ndarray]]) -> None:
        """Waits for every future; their results and errors are read from them afterwards."""
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            await asyncio.wait(waiting)
        finally:
            for wrapped in waiting:  # read here, so asyncio never logs "exception never retrieved"
                if wrapped.done() and not wrapped.cancelled():
                    wrapped.exception()

    def _check_images(self, sources: list[ImageSource], options: EmbedOptions) -> None:
        if not sources:
            raise InvalidRequest("request has no images")
        if len(sources) > self.settings.max_images_per_request:
            raise LimitExceeded(
                f"{len(sources)} images exceeds max_images_per_request={self.settings.max_images_per_request}"
            )
        if (options.aggregate_only or options.normalize_aggregate) and not options.aggregate_mean:
            raise InvalidRequest("aggregate_only and normalize_aggregate need aggregate=AGGREGATION_MEAN")

    def _check_texts(self, entry: ModelEntry, texts: list[str]) -> None:
        if entry.spec.text is None:
            raise InvalidRequest(f"model {entry.name!r} has no text tower: it embeds images only")
        if not texts:
            raise InvalidRequest("request has no texts")
        limit = self.settings.max_texts_per_request
        if len(texts) > limit:
            raise LimitExceeded(f"{len(texts)} texts exceeds max_texts_per_request={limit}")
        chars = self.settings.max_text_chars
        over: list[InvalidRequest] = [
            LimitExceeded(f"text {i}: {len(text)} characters exceeds max_text_chars={chars}")
            for i, text in enumerate(texts)
            if len(text) > chars
        ]
        if over:
            raise over[0] if len(over) == 1 else RejectedItems(over, "texts")

    def _prepared(self, futures: list[Future[Any]], modality: str) -> list[Any]:
        """The finished preparation futures' items, or one error for the request."""
        bad = [e for f in futures if (e := f.exception()) is not None]
        if bad:
            raise self._combined(bad, f"{modality}s")
        return [f.result() for f in futures]

    @staticmethod
    def _combined(errors: list[BaseException], items: str) -> BaseException:
        """One error for the request: a server fault outranks the rest (a deadline, a shutdown),
        and those outrank bad input; several bad images are refused together, each with its reason."""
        others = [e for e in errors if not isinstance(e, InvalidRequest)]
        if others:
            return min(others, key=lambda e: isinstance(e, EmbedderError))
        refused = [e for e in errors if isinstance(e, InvalidRequest)]
        return refused[0] if len(refused) == 1 else RejectedItems(refused, items)

    @staticmethod
    async def _collect(futures: list[Future[np.ndarray]], deadline: float | None) -> list[np.ndarray]:
        """The request's vectors in order, or DeadlineExpired."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return list(await asyncio.wait_for(asyncio.gather(*map(asyncio.wrap_future, futures)), timeout))
        except TimeoutError:
            raise DeadlineExpired("deadline exceeded while waiting for inference") from None

    @staticmethod
    def _post(entry: ModelEntry, vectors: np.ndarray, options: EmbedOptions) -> EmbedResult:
        if options.normalize:
            vectors = l2_normalize(vectors)
        aggregate = None
        if options.aggregate_mean:
            aggregate = vectors.astype(np.float64).mean(axis=0).astype(np.float32)
            if options.normalize_aggregate:
                aggregate = l2_normalize(aggregate)
        if options.aggregate_only:
            vectors = vectors[:0]
        return EmbedResult(entry, vectors, aggregate)

    def close(self) -> None:
        with self._batchers_lock:
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.close()
        self.pool.shutdown(wait=True)
        self.trimmer.close()


def _run_texts(loaded: Loaded, rows: list[np.ndarray]) -> np.ndarray:
    assert loaded.tokenizer is not None
    return run_text(loaded.session, loaded.tokenizer.feeds(rows))
