"""`make fuzz`: a time-bounded, randomly seeded atheris campaign over the decode path.

Not part of `make test` (that runs a fixed seed and run count, so its verdict never changes).
This one explores: JOBS libFuzzer processes with fresh random seeds share a corpus kept between
campaigns in `.fuzz/corpus/` (not committed), started from the seed images and the regression
corpus. Whatever breaks the decode path's rule goes into tests/hardening/fuzz_findings/, one file
per distinct failure, with a row in its README:

- an exception other than InvalidImage, or an input slower than fuzz_target.SLOW_S: recorded by
  the target itself, which carries on;
- a crash, hang (libFuzzer `-timeout`) or memory blow-up (`-rss_limit_mb`): libFuzzer stops the
  process and leaves an artifact, which is moved there; the job restarts for the time left.

Each finding is then replayed by `make test` (test_fuzz_findings.py) until it passes: fix it, and
keep the file. Examples:

    make fuzz                  # 10 minutes
    make fuzz FUZZ_S=1800      # 30 minutes
    .venv/bin/python tools/fuzz.py --seconds 60 --jobs 1

Exit status 0 when the campaign found nothing new, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hardening.fuzz_target import FINDINGS, INDEX, findings, fuzz_command, seed_images

ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-")


@dataclass
class Campaign:
    seconds: float
    max_len: int
    state: Path
    findings: Path
    seed: int | None
    started: float = field(default_factory=time.monotonic)
    executions: int = 0
    launches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


def prepare(state: Path) -> Path:
    corpus = state / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in (seed_images() | findings()).items():
        path = corpus / f"seed-{name}"
        if not path.exists():
            path.write_bytes(data)
    return corpus


def job(index: int, campaign: Campaign, corpus: Path) -> None:
    """One libFuzzer process after another, until the campaign's time is up."""
    while (left := int(campaign.left())) >= 5:
        work = campaign.state / f"job{index}"
        artifacts = work / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        seed = random.SystemRandom().randrange(1, 2**31) if campaign.seed is None else campaign.seed + index
        launch = fuzz_command(
            work,
            str(corpus),
            f"-seed={seed}",
            f"-max_total_time={left}",
            f"-artifact_prefix={artifacts}/",
            f"-max_len={campaign.max_len}",
            "-timeout=60",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
            record_dir=campaign.findings,
        )
        print(f"job {index}: seed {seed}, {left} s", flush=True)
        process = launch.run(timeout=left + 300)
        output = process.stdout + process.stderr
        done = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
        with campaign.lock:
            campaign.launches += 1
            campaign.executions += int(done[1]) if done else 0
        for artifact in sorted(artifacts.iterdir()):
            keep(artifact, output, campaign.findings)
        if process.returncode != 0 and not done:
            print(f"job {index}: exit {process.returncode} without stats:\n{output[-2000:]}", flush=True)


def keep(artifact: Path, output: str, folder: Path) -> None:
    """A libFuzzer artifact becomes a finding: moved into the regression corpus, indexed."""
    kind = ARTIFACT.match(artifact.name)
    data = artifact.read_bytes()
    name = f"{kind[1] if kind else 'artifact'}-{hashlib.sha256(data).hexdigest()[:12]}.bin"
    artifact.unlink()
    target = folder / name
    if target.exists():
        return
    target.write_bytes(data)
    why = next((line for line in output.splitlines() if "ERROR: libFuzzer" in line), "libFuzzer stopped")
    row = f"| `{name}` | {why.strip().replace('|', '/')} | `make fuzz`, {time.strftime('%Y-%m-%d')} |\n"
    with (folder / INDEX).open("a", encoding="utf-8") as index:
        index.write(row)
    print(f"FUZZ FINDING {name}: {why.strip()}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="campaign length (default 600)")
    parser.add_argument("--jobs", type=int, default=2, help="libFuzzer processes at once (default 2)")
    parser.add_argument("--max-len", type=int, default=16384, help="largest input in bytes (default 16384)")
    parser.add_argument("--seed", type=int, help="libFuzzer seed of job 0 (job i: seed + i); default random")
    parser.add_argument(
        "--findings", type=Path, default=FINDINGS, help="where findings go (default: the regression corpus)"
    )
    parser.add_argument(
        "--state", type=Path, default=REPO / ".fuzz", help="corpus kept between campaigns (default .fuzz)"
    )
    args = parser.parse_args()
    before = {p.name for p in args.findings.iterdir()}
    corpus = prepare(args.state)
    campaign = Campaign(args.seconds, args.max_len, args.state, args.findings, args.seed)
    workers = [threading.Thread(target=job, args=(i, campaign, corpus)) for i in range(args.jobs)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for index in range(args.jobs):
        shutil.rmtree(args.state / f"job{index}", ignore_errors=True)
    new = sorted({p.name for p in args.findings.iterdir()} - before)
    elapsed = time.monotonic() - campaign.started
    print(
        f"\nfuzz campaign: {elapsed:.0f} s, {args.jobs} jobs, {campaign.launches} launches, "
        f"{campaign.executions} executions ({campaign.executions / max(elapsed, 1):.0f}/s), "
        f"corpus {len(list(corpus.iterdir()))} files, {len(new)} new findings"
    )
    for name in new:
        print(
            f"  {args.findings / name}\n    replay: .venv/bin/python -m tests.hardening.fuzz_target {args.findings / name}"
        )
    if new:
        print("  then: .venv/bin/pytest tests/hardening/test_fuzz_findings.py (fails until each is fixed)")
    return 1 if new else 0


if __name__ == "__main__":
    raise SystemExit(main())
