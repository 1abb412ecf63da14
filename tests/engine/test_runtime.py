"""The sessions the server opens (embedder/runtime.py): they allocate their activations from one
arena shared by the process, so runs after the first reuse its memory instead of faulting it in
again, and a second model's first run reuses what the first model's runs freed; their threads spin
during a run and stop when it returns, so an idle server burns no CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.graphs import TWO_MATMULS_SCRIPT

# A graph with 3 x 32 MB of activations at batch 8, written to the path in argv[1]. Prints the page
# faults of runs 2-6 of a session from open_session, the first run of a second such session
# (after the first's), and runs 2-6 of a plain session with no arena as the control.
RUNS = """
import resource, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
from embedder.runtime import open_session
graph = helper.make_graph(
    [helper.make_node("Mul", ["x", "two"], ["a"]), helper.make_node("Exp", ["a"], ["b"]),
     helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("ReduceSum", ["c"], ["y"], keepdims=0)],
    "activations", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1 << 20])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
x = np.ones((8, 1 << 20), np.float32)
def faults(session, runs):
    out = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        session.run(None, {"x": x})
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out
first = open_session(sys.argv[1], 2)
second = open_session(sys.argv[1], 2)
options = ort.SessionOptions()
options.enable_cpu_mem_arena = False
options.enable_mem_pattern = False
plain = ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
print(*faults(first, 6)[1:])
print(*faults(second, 1))
print(*faults(plain, 6)[1:])
"""


def test_sessions_share_one_arena_and_reuse_their_activations(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RUNS, str(tmp_path / "activations.onnx")],
        check=True,
        capture_output=True,
        text=True,
    )
    shared, second_first_run, plain = ([int(f) for f in line.split()] for line in out.stdout.splitlines())
    print(
        f"\npage faults per run: shared arena {shared}, a second session's first run {second_first_run}, "
        f"no arena {plain}"
    )
    # 32 MB touched anew is 8192 faults; a few hundred would be stray pages of the run itself.
    assert max(shared) < 512
    assert second_first_run[0] < 512
    assert min(plain) > 8192  # the control: without the arena these runs do fault their activations in


# Two 512 x 512 MatMuls, written to argv[1]. After each run, samples the scheduler state of the
# session's own ORT threads (from /proc) every 5 ms through a 50 ms idle gap; gaps of the served
# session and of the control (ORT's default: workers keep spinning for a while after a run)
# alternate. Prints how many samples found a thread runnable ("R"), served then control. A thread
# spinning is runnable whether or not it has a core, one blocked is not: so other load on the
# machine can only stretch a spin, never make a blocked thread look runnable for long.
IDLE_AFTER_RUNS = (
    TWO_MATMULS_SCRIPT
    + """
def threads():
    return set(os.listdir("/proc/self/task"))
def opened(make):
    before = threads()
    session = make()
    session.run(None, {"x": x})
    return session, threads() - before
def runnable(tids):
    states = []
    for tid in tids:
        stat = open(f"/proc/self/task/{tid}/stat").read()
        states.append(stat[stat.rindex(")") + 2])
    return states.count("R")
def gap(session, tids):
    session.run(None, {"x": x})
    count = 0
    for _ in range(10):
        time.sleep(0.005)
        count += runnable(tids)
    return count
options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.add_session_config_entry("session.intra_op.allow_spinning", "1")
served = opened(lambda: open_session(sys.argv[1], 2))
control = opened(lambda: ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"]))
assert served[1] and control[1], "no ORT worker threads to watch"
totals = [0, 0]
for _ in range(20):
    totals[0] += gap(*served)
    totals[1] += gap(*control)
print(*totals)
"""
)


def test_threads_stop_spinning_when_a_run_returns(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", IDLE_AFTER_RUNS, str(tmp_path / "matmuls.onnx")],
        check=True,
        capture_output=True,
        text=True,
    )
    served, control = (int(f) for f in out.stdout.split())
    print(
        f"\nsamples with an ORT thread runnable in idle gaps after runs: served {served}, control {control} of 200"
    )
    # The control: ORT's threads do keep spinning after a run by default (past the first 5 ms
    # sample, in every gap on average).
    assert control >= 20, control
    # Served threads block when the run returns: runnable only while a loaded machine has not yet
    # scheduled them to go to sleep, a small share of the control's. The CPU time this saves is a
    # figure of `make bench` (bench/timings.py).
    assert served * 4 < control, (served, control)
