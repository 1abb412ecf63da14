"""ONNX Runtime sessions, one per graph of a model (its image tower; CLIP's text tower too),
loaded once, warmed up, evicted by LRU or idle time.

A graph loads under its own lock, so many first requests racing for a cold graph cause exactly
one load while other graphs keep serving. Sessions run concurrently with no lock; eviction only
drops the cache's reference, so a batch already running keeps its session. A text graph loads
with its tokenizer; each file's sha256 is checked against model.json first.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import ModelUnavailable
from .golden import GoldenError, SelfCheck, check_images, check_texts, load_golden, measure
from .memory import release_free_memory
from .repository import IMAGE, TEXT, ModelEntry, Repository
from .runtime import open_session, run, run_text
from .spec import file_sha256
from .text import TextTokenizer

log = logging.getLogger(__name__)

Graph = tuple[str, str]  # (model name, modality)


class ModelState(enum.Enum):
    UNAVAILABLE = "unavailable"
    AVAILABLE = "available"
    LOADING = "loading"
    SERVING = "serving"


@dataclass
class _Status:
    state: ModelState
    error: str = ""
    load_seconds: float = 0.0


@dataclass(frozen=True)
class Loaded:
    """A graph ready to run: its session, and for a text graph the tokenizer."""

    session: ort.InferenceSession
    tokenizer: TextTokenizer | None = None


@dataclass
class _Resident:
    loaded: Loaded
    last_used: float = field(default_factory=time.monotonic)


StateListener = Callable[[str, str, ModelState, float], None]  # name, modality, new state, load seconds


def describe(graph: Graph) -> str:
    name, modality = graph
    return name if modality == IMAGE else f"{name} ({modality})"


class SessionCache:
    def __init__(
        self,
        repository: Repository,
        intra_op_threads: int,
        max_loaded: int,
        idle_ttl_s: float = 0.0,
        listener: StateListener | None = None,
        allow_golden_mismatch: bool = False,
    ) -> None:
        self.repository = repository
        self.allow_golden_mismatch = allow_golden_mismatch
        self.checks: dict[Graph, SelfCheck] = {}  # the last self-check of each graph loaded
        # Graphs whose golden self-check failed: refused at once until restart, not reloaded on
        # every request (the files are the same; so would the result be).
        self._refused: dict[Graph, str] = {}
        self.intra_op_threads = intra_op_threads
        self.max_loaded = max_loaded
        self.idle_ttl_s = idle_ttl_s
        self._listener = listener or (lambda name, modality, state, seconds: None)
        self._lock = threading.Lock()
        graphs = [(e.name, m) for e in repository.entries.values() for m in e.spec.modalities]
        self._graph_locks = {graph: threading.Lock() for graph in graphs}
        self._resident: OrderedDict[Graph, _Resident] = OrderedDict()
        self._status = {graph: self._initial_status(graph) for graph in graphs}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def _initial_status(self, graph: Graph) -> _Status:
        reason = self.repository.entries[graph[0]].unavailable_reason(graph[1])
        return _Status(ModelState.UNAVAILABLE, reason) if reason else _Status(ModelState.AVAILABLE)

    def graphs(self) -> list[Graph]:
        return list(self._status)

    def status(self, name: str, modality: str = IMAGE) -> tuple[ModelState, str, float]:
        status = self._status[(name, modality)]
        return status.state, status.error, status.load_seconds

    def resident(self) -> list[Graph]:
        with self._lock:
            return list(self._resident)

    def get(self, entry: ModelEntry, modality: str = IMAGE) -> Loaded:
        """The graph ready to run, loading it first if needed (once, however many callers race)."""
        loaded = self.cached(entry.name, modality)
        if loaded is not None:
            return loaded
        graph = (entry.name, modality)
        if graph in self._refused:
            raise ModelUnavailable(self._refused[graph])
        if graph not in self._graph_locks:
            raise ModelUnavailable(entry.unavailable_reason(modality) or "no such graph")
        with self._graph_locks[graph]:
            loaded = self.cached(entry.name, modality)
            if loaded is None:
                loaded = self._load(entry, modality)
        return loaded

    def cached(self, name: str, modality: str = IMAGE) -> Loaded | None:
        """The graph if it is resident (marking it used), else None; never loads."""
        with self._lock:
            resident = self._resident.get((name, modality))
            if resident is None:
                return None
            resident.last_used = time.monotonic()
            self._resident.move_to_end((name, modality))
            return resident.loaded

    def _load(self, entry: ModelEntry, modality: str) -> Loaded:
        graph = (entry.name, modality)
        self._set(graph, _Status(ModelState.LOADING))
        started = time.perf_counter()
        try:
            loaded = self._open_checked(entry, modality)
        except ModelUnavailable as exc:
            self._set(graph, _Status(ModelState.UNAVAILABLE, exc.message))
            raise
        except Exception as exc:  # ORT's own errors for a corrupt graph, out of memory, ...
            log.exception("model %s failed to load", describe(graph))
            message = f"model {entry.name!r} failed to load its {modality} graph: {type(exc).__name__}: {exc}"
            self._set(graph, _Status(ModelState.UNAVAILABLE, message))
            raise ModelUnavailable(message) from exc
        seconds = time.perf_counter() - started
        release_free_memory()  # the graph file's transient copy, freed once the session holds its weights
        with self._lock:
            self._resident[graph] = _Resident(loaded)
        self._set(graph, _Status(ModelState.SERVING, load_seconds=seconds))
        log.info(
            "model %s loaded in %.2f s (weights: %s, intra-op threads %d, spinning during runs, sha256 %s); %s",
            describe(graph),
            seconds,
            entry.spec.weights_kind.upper(),
            self.intra_op_threads,
            (entry.graph_sha256(modality) or "")[:12],
            self.checks[graph].describe(),
        )
        if entry.spec.weights_kind == "random-init":
            log.warning(
                "model %s has RANDOM-INIT weights, NOT PRETRAINED: its vectors are meaningless",
                describe(graph),
            )
        self._evict_over_capacity()
        return loaded

    def _open_checked(self, entry: ModelEntry, modality: str) -> Loaded:
        reason = entry.unavailable_reason(modality)
        if reason:
            raise ModelUnavailable(f"model {entry.name!r}: {reason}")
        _check_sha256(entry, entry.graph_path(modality), entry.graph_sha256(modality))
        data = entry.graph_data(modality)
        if data is not None:  # the weights of a graph over 2 GB: part of the graph, checked the same
            _check_sha256(entry, entry.directory / data.file, data.sha256)
        session = open_session(entry.graph_path(modality), self.intra_op_threads)
        tokenizer = None
        if modality == TEXT:
            text = entry.spec.text
            assert text is not None  # unavailable_reason says so otherwise
            _check_sha256(entry, entry.directory / text.tokenizer_file, text.tokenizer_sha256)
            try:
                tokenizer = TextTokenizer.load(entry.directory / text.tokenizer_file, text)
            except (ValueError, OSError) as exc:  # ValueError: also what tokenizers raises on a bad file
                raise ModelUnavailable(f"model {entry.name!r}: tokenizer refused: {exc}") from None
            warm = run_text(session, tokenizer.feeds(tokenizer.encode([""])))  # also checks the contract
        else:
            height, width = entry.spec.preprocessing.input_size()
            warm = run(session, np.zeros((1, 3, height, width), dtype=np.float32))  # also checks the contract
        if warm.shape != (1, entry.spec.embedding_dim):
            raise ModelUnavailable(
                f"model {entry.name!r}: its {modality} graph gives {warm.shape[1:]} vectors, "
                f"model.json says {entry.spec.embedding_dim}"
            )
        self._self_check(entry, modality, Loaded(session, tokenizer))
        return Loaded(session, tokenizer)

    def _self_check(self, entry: ModelEntry, modality: str, loaded: Loaded) -> None:
        """The golden inputs through this graph; a graph over the tolerance is refused (unless
        allowed), and the figure is kept for ListModels either way."""
        graph = (entry.name, modality)
        golden_spec = entry.spec.golden
        if golden_spec is None:
            self.checks[graph] = SelfCheck("not self-checked")
            return
        try:
            golden = load_golden(entry.directory / golden_spec.file, golden_spec.sha256)
            if modality == TEXT:
                tokenizer = loaded.tokenizer
                assert tokenizer is not None
                if not golden.texts:
                    self.checks[graph] = SelfCheck("not self-checked")
                    return
                check = measure(
                    lambda: check_texts(golden, tokenizer, loaded.session),
                    len(golden.texts),
                    golden_spec.min_cosine,
                )
            else:
                check = measure(
                    lambda: check_images(golden, entry.spec, loaded.session),
                    len(golden.images),
                    golden_spec.min_cosine,
                )
        except GoldenError as exc:
            raise ModelUnavailable(f"model {entry.name!r}: golden set refused: {exc}") from None
        if check.state == "failed":
            message = f"model {describe(graph)}: {check.describe()}"
            if not self.allow_golden_mismatch:
                log.error("%s; refusing to serve it (--allow-golden-mismatch serves it anyway)", message)
                self.checks[graph] = check
                self._refused[graph] = message
                raise ModelUnavailable(message)
            log.warning("%s; served anyway (--allow-golden-mismatch)", message)
            check = dataclasses.replace(check, state="failed, served anyway")
        self.checks[graph] = check

    def _evict_over_capacity(self) -> None:
        with self._lock:
            victims = []
            while len(self._resident) > self.max_loaded:
                victims.append(self._resident.popitem(last=False)[0])
        for graph in victims:
            self._evicted(graph, "least recently used")

    def evict_idle(self) -> list[Graph]:
        if self.idle_ttl_s <= 0:
            return []
        cutoff = time.monotonic() - self.idle_ttl_s
        with self._lock:
            victims = [graph for graph, r in self._resident.items() if r.last_used < cutoff]
            for graph in victims:
                del self._resident[graph]
        for graph in victims:
            self._evicted(graph, f"idle over {self.idle_ttl_s:g} s")
        return victims

    def _evicted(self, graph: Graph, why: str) -> None:
        self._set(graph, _Status(ModelState.AVAILABLE))
        log.info("model %s evicted (%s)", describe(graph), why)

    def _set(self, graph: Graph, status: _Status) -> None:
        self._status[graph] = status
        self._listener(graph[0], graph[1], status.state, status.load_seconds)

    def start_reaper(self) -> None:
        if self.idle_ttl_s <= 0 or self._reaper is not None:
            return
        interval = min(self.idle_ttl_s / 2, 5.0)

        def reap() -> None:
            while not self._stop.wait(interval):
                self.evict_idle()

        self._reaper = threading.Thread(target=reap, name="session-reaper", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._resident.clear()


def _check_sha256(entry: ModelEntry, path: Path, expected: str | None) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ModelUnavailable(
            f"model {entry.name!r}: {path.name} sha256 {actual[:16]}... does not match "
            f"model.json ({expected}); refusing to serve it"
        )
