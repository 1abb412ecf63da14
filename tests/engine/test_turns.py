"""Decoding and inference take turns (embedder/turns.py), with real threads and a timeline."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from embedder.turns import CpuTurns


class Timeline:
    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def hold(self, turn: Callable[[], object], name: str, seconds: float) -> threading.Thread:
        def body() -> None:
            with turn():  # type: ignore[attr-defined]
                began = time.monotonic()
                time.sleep(seconds)
            with self._lock:
                self.spans[name] = (began, time.monotonic())

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    def overlap(self, a: str, b: str) -> bool:
        (a0, a1), (b0, b1) = self.spans[a], self.spans[b]
        return a0 < b1 and b0 < a1


def test_a_decode_waits_for_the_run_in_progress() -> None:
    turns, timeline = CpuTurns(), Timeline()
    run = timeline.hold(turns.run, "run", 0.3)
    time.sleep(0.05)
    decode = timeline.hold(turns.decode, "decode", 0.05)
    for thread in (run, decode):
        thread.join(5)
    assert not timeline.overlap("run", "decode")
    assert timeline.spans["decode"][0] >= timeline.spans["run"][1]


def test_a_run_waits_for_decodes_already_started_and_new_ones_wait_for_it() -> None:
    turns, timeline = CpuTurns(), Timeline()
    first = timeline.hold(turns.decode, "first decode", 0.3)
    time.sleep(0.05)
    run = timeline.hold(turns.run, "run", 0.2)
    time.sleep(0.05)
    late = timeline.hold(turns.decode, "late decode", 0.05)  # arrives while the run waits
    for thread in (first, run, late):
        thread.join(5)
    assert timeline.spans["run"][0] >= timeline.spans["first decode"][1]
    assert timeline.spans["late decode"][0] >= timeline.spans["run"][1]


def test_decodes_share_the_cores() -> None:
    turns, timeline = CpuTurns(), Timeline()
    threads = [timeline.hold(turns.decode, "decode a", 0.2), timeline.hold(turns.decode, "decode b", 0.2)]
    for thread in threads:
        thread.join(5)
    assert timeline.overlap("decode a", "decode b")


def test_runs_take_turns_in_the_order_they_asked() -> None:
    turns, timeline = CpuTurns(), Timeline()
    threads = [timeline.hold(turns.run, "run a", 0.2)]
    for name in ("run b", "run c", "run d"):  # they ask while "run a" is in progress, in this order
        time.sleep(0.03)
        threads.append(timeline.hold(turns.run, name, 0.05))
    for thread in threads:
        thread.join(5)
    spans = sorted(timeline.spans.items(), key=lambda item: item[1][0])
    assert [name for name, _ in spans] == ["run a", "run b", "run c", "run d"]
    for (_, (_, end)), (_, (start, _)) in itertools.pairwise(spans):
        assert start >= end
