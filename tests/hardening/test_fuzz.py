"""Fuzzing the decode path (`decode` + `Preprocessor`) against its invariant (fuzz_target.py):
a finite tensor of the right shape, or `InvalidImage`; any other exception is a bug.

Two engines, both bounded and both deterministic, so a commit gets the same verdict every run:
- atheris (coverage-guided libFuzzer over Pillow's Python plugins and our code), as a subprocess
  with a fixed `-seed`, a fixed run count (`-atheris_runs`) and a fixed PYTHONHASHSEED, starting
  from a valid file of every format variant and the regression corpus; skipped where atheris is
  not installed.
- hypothesis (derandomized by the suite's profile): raw bytes, and structured mutations of the
  same seeds (bit flips, truncations, insertions, deletions, header integers forced to extremes).

Open-ended random campaigns are `make fuzz` (tools/fuzz.py); what they find goes into
fuzz_findings/, replayed by test_fuzz_findings.py. Nothing is written into the repository here:
the libFuzzer corpus and any crash artifact go to tmp_path.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedder.preprocess import Preprocessor
from tests.hardening.fuzz_target import check_decode, findings, fuzz_command, fuzz_preprocessor, seed_images

FUZZ_RUNS = 20_000  # about 20 s
FUZZ_SEED = 1
FUZZ_EXAMPLES = 300
SEEDS = seed_images()
PREPROCESSOR: Preprocessor = fuzz_preprocessor()
EXTREME_INTS = (
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x00\x01\x00\x00",
)
TALLY: Counter[str] = Counter()

fuzz_settings = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # a loaded CI machine must not turn slowness into failures
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if TALLY:
        print("\n" + ", ".join(f"{name}: {count}" for name, count in sorted(TALLY.items())))


def test_every_seed_is_a_valid_image() -> None:
    """The fuzzers start from files that decode, so mutations explore the decoders, not the sniffing."""
    refused = [name for name, data in SEEDS.items() if not check_decode(data, PREPROCESSOR)]
    assert not refused


@st.composite
def mutated_seed(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "integer"])):
            case "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "byte":
                data[at] = draw(st.integers(0, 255))
            case "truncate":
                del data[at:]
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            case "delete":
                del data[at : at + draw(st.integers(1, 64))]
            case "integer":  # widths, heights, offsets and lengths are where decoders trust input
                data[at : at + 4] = draw(st.sampled_from(EXTREME_INTS))
    return bytes(data)


@fuzz_settings
@given(st.binary(max_size=4096))
def test_hypothesis_raw_bytes(data: bytes) -> None:
    TALLY["hypothesis raw bytes"] += 1
    check_decode(data, PREPROCESSOR)


@fuzz_settings
@given(mutated_seed())
def test_hypothesis_mutated_images(data: bytes) -> None:
    TALLY["hypothesis mutated images"] += 1
    TALLY["  of which decoded"] += check_decode(data, PREPROCESSOR)


def test_atheris_coverage_guided(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris not installed: the hypothesis fuzzers still ran")
    work = Path(tempfile.mkdtemp(prefix="embedder-fuzz-"))  # a fixed-length path: see fuzz_command
    try:
        corpus, artifacts = work / "corpus", work / "artifacts"
        corpus.mkdir()
        artifacts.mkdir()
        for name, data in (SEEDS | findings()).items():
            (corpus / name).write_bytes(data)
        launch = fuzz_command(
            work,
            str(corpus),
            f"-atheris_runs={FUZZ_RUNS}",
            f"-seed={FUZZ_SEED}",
            f"-artifact_prefix={artifacts}/",
            "-max_len=16384",
            "-reload=0",
            "-timeout=60",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
        )
        process = launch.run(timeout=1200)
        output = process.stdout + process.stderr
        crashes = sorted(p.name for p in artifacts.iterdir())
        kept = hashlib.sha256(b"".join(sorted(p.read_bytes() for p in corpus.iterdir()))).hexdigest()[:12]
        grown = len(list(corpus.iterdir()))
        for path in crashes:  # kept for whoever reads the failure
            shutil.copy(artifacts / path, tmp_path / path)
    finally:
        shutil.rmtree(work)
    assert process.returncode == 0 and not crashes, (
        f"atheris found a bug (exit {process.returncode}): add it to tests/hardening/fuzz_findings/ and fix it; "
        f"the inputs are in {tmp_path}: {crashes}\n{output[-6000:]}"
    )
    done = re.search(r"Done (\d+) in (\d+) second", output)
    assert done is not None, output[-3000:]
    TALLY[f"atheris runs ({done[2]} s, corpus grew to {grown} files, sha256 {kept})"] += int(done[1])
    assert int(done[1]) >= FUZZ_RUNS
