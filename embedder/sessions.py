"""One ONNX Runtime session per model, loaded once, warmed up, evicted by LRU or idle time.

Loading happens under the model's own lock, so many first requests racing for a cold model cause
exactly one load while other models keep serving. Sessions run concurrently with no
lock; eviction only drops the cache's reference, so a batch already running keeps its session.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from .errors import ModelUnavailable
from .memory import release_free_memory
from .repository import ModelEntry, Repository
from .runtime import open_session, run
from .spec import file_sha256

log = logging.getLogger(__name__)


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


@dataclass
class _Resident:
    session: ort.InferenceSession
    last_used: float = field(default_factory=time.monotonic)


StateListener = Callable[[str, ModelState, float], None]  # name, new state, load seconds


class SessionCache:
    def __init__(
        self,
        repository: Repository,
        intra_op_threads: int,
        max_loaded: int,
        idle_ttl_s: float = 0.0,
        listener: StateListener | None = None,
    ) -> None:
        self.repository = repository
        self.intra_op_threads = intra_op_threads
        self.max_loaded = max_loaded
        self.idle_ttl_s = idle_ttl_s
        self._listener = listener or (lambda name, state, seconds: None)
        self._lock = threading.Lock()
        self._model_locks = {name: threading.Lock() for name in repository.entries}
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        self._status = {name: self._initial_status(entry) for name, entry in repository.entries.items()}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @staticmethod
    def _initial_status(entry: ModelEntry) -> _Status:
        reason = entry.unavailable_reason()
        return _Status(ModelState.UNAVAILABLE, reason) if reason else _Status(ModelState.AVAILABLE)

    def status(self, name: str) -> tuple[ModelState, str, float]:
        status = self._status[name]
        return status.state, status.error, status.load_seconds

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def get(self, name: str) -> ort.InferenceSession:
        """The model's session, loading it first if needed (once, however many callers race)."""
        session = self.cached(name)
        if session is not None:
            return session
        with self._model_locks[name]:
            session = self.cached(name)
            if session is None:
                session = self._load(self.repository.entries[name])
        return session

    def cached(self, name: str) -> ort.InferenceSession | None:
        """The model's session if it is resident (marking it used), else None; never loads."""
        with self._lock:
            resident = self._resident.get(name)
            if resident is None:
                return None
            resident.last_used = time.monotonic()
            self._resident.move_to_end(name)
            return resident.session

    def _load(self, entry: ModelEntry) -> ort.InferenceSession:
        self._set(entry.name, _Status(ModelState.LOADING))
        started = time.perf_counter()
        try:
            session = self._open_checked(entry)
        except ModelUnavailable as exc:
            self._set(entry.name, _Status(ModelState.UNAVAILABLE, exc.message))
            raise
        except Exception as exc:  # ORT's own errors for a corrupt graph, out of memory, ...
            log.exception("model %s failed to load", entry.name)
            message = f"model {entry.name!r} failed to load: {type(exc).__name__}: {exc}"
            self._set(entry.name, _Status(ModelState.UNAVAILABLE, message))
            raise ModelUnavailable(message) from exc
        seconds = time.perf_counter() - started
        release_free_memory()  # the graph file's transient copy, freed once the session holds its weights
        with self._lock:
            self._resident[entry.name] = _Resident(session)
        self._set(entry.name, _Status(ModelState.SERVING, load_seconds=seconds))
        log.info(
            "model %s loaded in %.2f s (weights: %s, intra-op threads %d, spinning during runs, sha256 %s)",
            entry.name,
            seconds,
            entry.spec.weights_kind.upper(),
            self.intra_op_threads,
            (entry.spec.onnx_sha256 or "")[:12],
        )
        if entry.spec.weights_kind == "random-init":
            log.warning(
                "model %s has RANDOM-INIT weights, NOT PRETRAINED: its vectors are meaningless", entry.name
            )
        self._evict_over_capacity()
        return session

    def _open_checked(self, entry: ModelEntry) -> ort.InferenceSession:
        reason = entry.unavailable_reason()
        if reason:
            raise ModelUnavailable(f"model {entry.name!r}: {reason}")
        actual = file_sha256(entry.onnx_path)
        if actual != entry.spec.onnx_sha256:
            raise ModelUnavailable(
                f"model {entry.name!r}: {entry.onnx_path.name} sha256 {actual[:16]}... does not match "
                f"model.json ({entry.spec.onnx_sha256}); refusing to serve it"
            )
        session = open_session(entry.onnx_path, self.intra_op_threads)
        height, width = entry.spec.preprocessing.input_size()
        warm = run(session, np.zeros((1, 3, height, width), dtype=np.float32))  # also checks the contract
        if warm.shape != (1, entry.spec.embedding_dim):
            raise ModelUnavailable(
                f"model {entry.name!r}: graph gives {warm.shape[1:]} vectors, model.json says {entry.spec.embedding_dim}"
            )
        return session

    def _evict_over_capacity(self) -> None:
        with self._lock:
            victims = []
            while len(self._resident) > self.max_loaded:
                victims.append(self._resident.popitem(last=False)[0])
        for name in victims:
            self._evicted(name, "least recently used")

    def evict_idle(self) -> list[str]:
        if self.idle_ttl_s <= 0:
            return []
        cutoff = time.monotonic() - self.idle_ttl_s
        with self._lock:
            victims = [name for name, r in self._resident.items() if r.last_used < cutoff]
            for name in victims:
                del self._resident[name]
        for name in victims:
            self._evicted(name, f"idle over {self.idle_ttl_s:g} s")
        return victims

    def _evicted(self, name: str, why: str) -> None:
        self._set(name, _Status(ModelState.AVAILABLE))
        log.info("model %s evicted (%s)", name, why)

    def _set(self, name: str, status: _Status) -> None:
        self._status[name] = status
        self._listener(name, status.state, status.load_seconds)

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
