"""One request through pre -> core -> post.

pre:  read and decode each image, resize, crop, normalise (a thread pool; Pillow releases the GIL),
      between inference runs rather than beside them (turns.py)
core: the model's batcher coalesces images of concurrent requests into one session.run
post: L2-normalise if asked, mean-aggregate if asked
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .batcher import Batcher, BatchObserver
from .errors import (
    DeadlineExpired,
    EmbedderError,
    InvalidImage,
    InvalidRequest,
    LimitExceeded,
    ModelUnavailable,
    RejectedImages,
)
from .memory import IdleTrimmer
from .preprocess import DecodeLimits, Preprocessor, decode
from .repository import ModelEntry, Repository
from .runtime import run
from .sessions import SessionCache
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
        self._batchers: dict[str, Batcher] = {}
        self._batchers_lock = threading.Lock()

    def batcher(self, name: str) -> Batcher:
        with self._batchers_lock:
            if name not in self._batchers:
                self._batchers[name] = Batcher(
                    name,
                    lambda: self._runner(name),
                    max_batch=self.settings.max_batch_size
                    if self.repository.entries[name].spec.batch_invariant
                    else 1,
                    max_delay_s=self.settings.max_batch_delay_ms / 1000,
                    max_queue=self.settings.max_queue_images,
                    observer=self._batch_done,
                    turns=self.turns,
                )
            return self._batchers[name]

    def _runner(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        """The model's session, loaded now if it was evicted since the request was admitted."""
        session = self.cache.get(name)
        return lambda pixels: self._run(name, session, pixels)

    def _run(self, name: str, session: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
        """One batch through the model's graph, held to its contract: a graph that fails or gives
        the wrong shape is the model's fault (UNAVAILABLE), not the request's or the server's."""
        dim = self.repository.entries[name].spec.embedding_dim
        try:
            vectors = run(session, pixels)
        except Exception as exc:
            log.exception("model %s failed on a batch of %d", name, len(pixels))
            raise ModelUnavailable(
                f"model {name!r} failed on a batch of {len(pixels)}: {type(exc).__name__}"
            ) from None
        if vectors.shape != (len(pixels), dim):
            raise ModelUnavailable(
                f"model {name!r}: its graph gave {list(vectors.shape)} for a batch of {len(pixels)}, not [{len(pixels)}, {dim}]"
            )
        return vectors

    def _batch_done(self, model: str, size: int, seconds: float) -> None:
        self.trimmer.touch()
        if self._batch_observer is not None:
            self._batch_observer(model, size, seconds)

    def queue_depths(self) -> dict[str, int]:
        with self._batchers_lock:
            return {name: batcher.depth() for name, batcher in self._batchers.items()}

    async def embed(
        self,
        entry: ModelEntry,
        sources: list[ImageSource],
        options: EmbedOptions,
        deadline: float | None = None,
    ) -> EmbedResult:
        """Runs on the server's event loop and never blocks it: decoding runs in the worker pool,
        inference in the model's batcher thread, a model load in a helper thread. `deadline` is a
        time.monotonic() value; past it the work is dropped, not run. Cancelling the coroutine
        (the caller went away) drops the request's decoding and inference not yet started."""
        self._check_request(sources, options)
        if self.cache.cached(entry.name) is None:
            await asyncio.to_thread(self.cache.get, entry.name)  # an unusable model fails before decoding
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExpired("deadline passed before the request was admitted")  # not "retry later"
        batcher = self.batcher(entry.name)
        cancelled = threading.Event()
        with batcher.admit(len(sources)) as admission:
            decoding = self._start_preprocess(entry.name, sources, deadline, cancelled)
            inference: list[Future[np.ndarray]] = []
            try:
                await self._all_done(decoding)
                inference = batcher.submit(self._tensors(decoding), deadline, admission)
                vectors = np.stack(await self._collect(inference, deadline))
            finally:
                # However the request ends (answered, deadline, caller gone), nothing of it is left
                # to run: no-op for finished work, frees the queue slots of the rest.
                cancelled.set()
                for future in (*decoding, *inference):
                    future.cancel()
        return self._post(entry, vectors, options)

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

    def _check_request(self, sources: list[ImageSource], options: EmbedOptions) -> None:
        if not sources:
            raise InvalidRequest("request has no images")
        if len(sources) > self.settings.max_images_per_request:
            raise LimitExceeded(
                f"{len(sources)} images exceeds max_images_per_request={self.settings.max_images_per_request}"
            )
        if (options.aggregate_only or options.normalize_aggregate) and not options.aggregate_mean:
            raise InvalidRequest("aggregate_only and normalize_aggregate need aggregate=AGGREGATION_MEAN")

    def _start_preprocess(
        self, name: str, sources: list[ImageSource], deadline: float | None, cancelled: threading.Event
    ) -> list[Future[np.ndarray]]:
        preprocessor = self._preprocessors[name]

        def check() -> None:
            if cancelled.is_set() or (deadline is not None and time.monotonic() >= deadline):
                raise DeadlineExpired(
                    "deadline passed or call cancelled before decoding"
                )  # no work for the dead

        def one(index: int) -> np.ndarray:
            check()
            try:
                data = self.reader.read(sources[index], index)
                with self.turns.decode():
                    check()  # again: the turn may have come after a whole batch's run
                    return preprocessor(decode(data, self.limits))
            except InvalidImage as exc:
                raise exc.at(index) from None

        return [self.pool.submit(one, i) for i in range(len(sources))]

    def _tensors(self, decoded: list[Future[np.ndarray]]) -> list[np.ndarray]:
        """The finished decoding futures' tensors, or one error for the request."""
        bad = [e for f in decoded if (e := f.exception()) is not None]
        if bad:
            raise self._combined(bad)
        return [f.result() for f in decoded]

    @staticmethod
    def _combined(errors: list[BaseException]) -> BaseException:
        """One error for the request: a server fault outranks the rest (a deadline, a shutdown),
        and those outrank bad input; several bad images are refused together, each with its reason."""
        others = [e for e in errors if not isinstance(e, InvalidRequest)]
        if others:
            return min(others, key=lambda e: isinstance(e, EmbedderError))
        refused = [e for e in errors if isinstance(e, InvalidRequest)]
        return refused[0] if len(refused) == 1 else RejectedImages(refused)

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
