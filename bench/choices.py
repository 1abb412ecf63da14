"""The measurements behind docs/performance.md's design choices, one subcommand per figure.

Every comparison runs its settings side by side: one worker process per setting (a setting is
process state: the allocator, glibc's environment), all loaded first, then short rounds that
alternate between them, so the machine's drift lands on every side alike. Each subcommand prints
the CPU flags, every round, the means and how many rounds each side was ahead. The graphs are the
full-size exports of `make models` (random-init weights run at the same speed as pretrained).

    python -m bench.choices arena      # shared ORT arena vs none: page faults, images/s, RSS
    python -m bench.choices spinning   # ORT threads spinning during a run vs not
    python -m bench.choices decode     # session.run while a thread decodes 0 / 10 / 20 img/s
    python -m bench.choices malloc     # glibc settings tried: fixed mmap thresholds, tunables
    python -m bench.choices trim       # RSS after a mixed load, before and after malloc_trim(0)
    python -m bench.choices preload    # CLIP's image+text sessions built in parallel vs one by one

`--quick` shortens rounds and repetitions (each subcommand then takes minutes, more on a loaded
machine: a round runs the whole batch mix at least once). ORT alone on random tensors, not the
service: these isolate the mechanism each choice is about.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedder import runtime
from embedder.golden import cpu_flags
from embedder.memory import release_free_memory

MODELS = Path("models")
CLIP, DINO = "clip-vit-base-patch32", "dinov2-small"
THREADS = 2
# Batch sizes cycled within a round, like the bench's mixed loads (1 to 8 images per run).
MIXED = (1, 8, 4, 8, 2, 8)
# What the removed opt-in tunables set (git history): heaps kept, never trimmed.
TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864"


# ---- worker: one process per setting -------------------------------------------------------------


def _options(setting: str) -> ort.SessionOptions:
    options = runtime.session_options(THREADS)
    if setting == "no-arena":
        # The same options, activations malloc'd per run: a fresh object without the env allocator.
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
    elif setting == "no-spin":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _decoder(rate: float, stop: threading.Event) -> threading.Thread:
    """A thread decoding and preprocessing 640x480 JPEGs at `rate` per second (0: none)."""
    from embedder.preprocess import Preprocessor, decode
    from embedder.spec import load_spec
    from tests.support.images import photo_jpeg

    pre = Preprocessor(load_spec(MODELS / DINO / "model.json").preprocessing)
    images = [photo_jpeg(640, 480, seed) for seed in range(4)]

    def loop() -> None:
        n, start = 0, time.perf_counter()
        while not stop.is_set():
            pre(decode(images[n % len(images)]))
            n += 1
            stop.wait(max(0.0, start + n / rate - time.perf_counter()))

    return threading.Thread(target=loop, daemon=True)


def worker(setting: str, graphs: list[str], batches: list[int]) -> None:
    sessions = [
        ort.InferenceSession(g, sess_options=_options(setting), providers=["CPUExecutionProvider"])
        for g in graphs
    ]
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, 224, 224), dtype=np.float32) for b in set(batches)}
    for session in sessions:
        for b in sorted(set(batches)):
            runtime.run(session, inputs[b])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("trim"):
            before = _rss_mb()
            release_free_memory()
            print(json.dumps({"before": before, "after": _rss_mb()}), flush=True)
            continue
        stop = threading.Event()
        if command.get("decode_rate"):
            _decoder(command["decode_rate"], stop).start()
        images, times, faults0 = 0, [], _faults()
        start = time.perf_counter()
        runs = [(session, b) for session in sessions for b in batches]
        # At least the whole mix once: on a loaded machine a round of a few runs measures nothing.
        while len(times) < len(runs) or time.perf_counter() - start < command["seconds"]:
            session, b = runs[len(times) % len(runs)]  # the mixed sizes, from the start each round
            t = time.perf_counter()
            runtime.run(session, inputs[b])
            times.append((time.perf_counter() - t) / b)
            images += b
        elapsed = time.perf_counter() - start
        stop.set()
        result = {
            "images_per_s": images / elapsed,
            "faults_per_image": (_faults() - faults0) / images,
            "rss_mb": _rss_mb(),
            "p50_ms_per_image": statistics.median(times) * 1000,
        }
        print(json.dumps(result), flush=True)


class Worker:
    def __init__(
        self, setting: str, graphs: list[Path], batches: tuple[int, ...], env: dict[str, str]
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "bench.choices",
            "_worker",
            setting,
            ",".join(map(str, batches)),
            *map(str, graphs),
        ]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        )

    def ask(self, command: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"worker exited with {self.process.wait()}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ---- comparisons ---------------------------------------------------------------------------------


def alternate(
    sides: dict[str, Worker],
    rounds: int,
    seconds: float,
    command: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    for w in sides.values():
        w.ask()  # loaded and warm
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # neither side always first
        for name in order:
            results[name].append(sides[name].ask({"seconds": seconds, **(command(name) if command else {})}))
        print(f"round {r + 1}: " + "; ".join(f"{n} {_brief(results[n][-1])}" for n in sides), flush=True)
    for w in sides.values():
        w.close()
    return results


def _brief(result: dict[str, Any]) -> str:
    return (
        f"{result['images_per_s']:.2f} img/s, {result['faults_per_image']:.0f} faults/img, "
        f"RSS {result['rss_mb']:.0f} MB, p50 {result['p50_ms_per_image']:.1f} ms/img"
    )


def summary(results: dict[str, list[dict[str, Any]]], base: str) -> None:
    rates = {n: [r["images_per_s"] for r in rs] for n, rs in results.items()}
    for name, rs in results.items():
        mean = statistics.mean(rates[name])
        line = (
            f"{name}: {mean:.2f} img/s (rounds {min(rates[name]):.2f}-{max(rates[name]):.2f}), "
            f"faults/img {min(r['faults_per_image'] for r in rs):.0f}-{max(r['faults_per_image'] for r in rs):.0f}, "
            f"RSS {min(r['rss_mb'] for r in rs):.0f}-{max(r['rss_mb'] for r in rs):.0f} MB, "
            f"p50 {statistics.median(r['p50_ms_per_image'] for r in rs):.1f} ms/img"
        )
        if name != base:
            ahead = sum(a > b for a, b in zip(rates[name], rates[base], strict=True))
            line += f"; {mean / statistics.mean(rates[base]) - 1:+.1%} vs {base}, ahead in {ahead}/{len(rates[base])}"
        print(line)


def graph(name: str, file: str = "model.onnx") -> Path:
    path = MODELS / name / file
    if not path.exists():
        sys.exit(f"{path} is missing: `make models` exports it")
    return path


def cmd_arena(args: argparse.Namespace) -> None:
    graphs = [graph(CLIP), graph(DINO)]
    sides = {s: Worker(s, graphs, MIXED, {}) for s in ("shared-arena", "no-arena")}
    summary(alternate(sides, args.rounds, args.seconds), "no-arena")


def cmd_spinning(args: argparse.Namespace) -> None:
    for batches in ((8,), (1,)):
        print(f"batch {batches[0]}, CLIP image graph:")
        sides = {s: Worker(s, [graph(CLIP)], batches, {}) for s in ("spin", "no-spin")}
        summary(alternate(sides, args.rounds, args.seconds), "no-spin")


def cmd_decode(args: argparse.Namespace) -> None:
    # One process: the same session with a decoding thread beside it or not, rounds alternating.
    w = Worker("served", [graph(DINO)], (8,), {})
    w.ask()
    rates: dict[float, list[float]] = {0: [], 10: [], 20: []}
    for r in range(args.rounds):
        for rate in rates if r % 2 == 0 else reversed(list(rates)):
            rates[rate].append(w.ask({"seconds": args.seconds, "decode_rate": rate})["images_per_s"])
        print(
            f"round {r + 1}: " + ", ".join(f"decode {k}/s: {v[-1]:.2f}" for k, v in rates.items()), flush=True
        )
    w.close()
    alone = statistics.mean(rates[0])
    print(
        "DINOv2-small session.run batch 8, img/s: "
        + ", ".join(
            f"decoding {k}/s {statistics.mean(v):.2f} ({statistics.mean(v) / alone - 1:+.1%})"
            for k, v in rates.items()
        )
    )


def cmd_malloc(args: argparse.Namespace) -> None:
    envs = {
        "default": {},
        "mmap-256KiB": {"MALLOC_MMAP_THRESHOLD_": "262144"},
        "mmap-1MiB": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
        "tunables": {"GLIBC_TUNABLES": TUNABLES},
    }
    arenas = ("shared-arena", "no-arena") if args.arena == "both" else (args.arena,)
    for arena in arenas:
        print(f"{arena}, CLIP then DINOv2 at batches {MIXED}:")
        sides = {n: Worker(arena, [graph(CLIP), graph(DINO)], MIXED, env) for n, env in envs.items()}
        summary(alternate(sides, args.rounds, args.seconds), "default")


def cmd_trim(args: argparse.Namespace) -> None:
    graphs = [graph(CLIP), graph(DINO)]
    for arena in ("no-arena", "shared-arena"):
        for start in range(args.starts):
            w = Worker(arena, graphs, MIXED, {})
            w.ask()
            loaded = w.ask({"trim": True})
            w.ask({"seconds": args.seconds})
            loaded_after = w.ask({"trim": True})
            w.close()
            print(
                f"{arena}, start {start + 1}: after load {loaded['before']:.0f} -> trimmed {loaded['after']:.0f} MB; "
                f"after a round of mixed batches {loaded_after['before']:.0f} -> {loaded_after['after']:.0f} MB",
                flush=True,
            )


def preload(parallel: bool) -> None:
    """In a fresh process: CLIP's image and text sessions opened and run once, as the server's
    preload does before its golden self-check; prints the seconds."""
    start = time.perf_counter()

    def build(path: Path) -> None:
        session = runtime.open_session(path, THREADS)
        if path.name == "text.onnx":
            ids = np.zeros((1, 8), np.int64)
            runtime.run_text(session, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        else:
            runtime.run(session, np.zeros((1, 3, 224, 224), np.float32))

    paths = [graph(CLIP), graph(CLIP, "text.onnx")]
    if parallel:
        threads = [threading.Thread(target=build, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for path in paths:
            build(path)
    print(time.perf_counter() - start)


def _preload_once(parallel: bool) -> float:
    argv = [sys.executable, "-m", "bench.choices", "_preload", "parallel" if parallel else "sequential"]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


def cmd_preload(args: argparse.Namespace) -> None:
    times: dict[str, list[float]] = {"parallel": [], "sequential": []}
    for start in range(args.starts):
        for name in times if start % 2 == 0 else reversed(list(times)):
            times[name].append(_preload_once(name == "parallel"))
        print(f"start {start + 1}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items()), flush=True)
    p, s = (statistics.median(times[n]) for n in ("parallel", "sequential"))
    print(
        f"CLIP image+text sessions built and warmed, median of {args.starts}: parallel {p:.2f} s, sequential {s:.2f} s ({p / s:.2f})"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        setting, batches, *graphs = sys.argv[2:]
        worker(setting, graphs, [int(b) for b in batches.split(",")])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_preload":
        preload(sys.argv[2] == "parallel")
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("figure", choices=["arena", "spinning", "decode", "malloc", "trim", "preload"])
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds of 4 s (at least the whole mix), 2 starts"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument(
        "--arena",
        choices=["shared-arena", "no-arena", "both"],
        default="both",
        help="malloc: which activations",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.starts = 3, 4.0, 2
    # The load average says how much the machine's other work could bend the figures.
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"CPU flags: {cpu_flags()}; {os.cpu_count()} CPUs, load average {load}; onnxruntime {ort.__version__}",
        flush=True,
    )
    globals()[f"cmd_{args.figure}"](args)


if __name__ == "__main__":
    main()
