"""Install size of the runtime, both ways, each in a fresh venv (issue 22's two figures).

- `pip install .`: what a user of the source tree gets, resolved from pyproject's ranges, with
  every dependency that dependencies declare (the Hugging Face Hub client tokenizers declares
  included);
- the Docker runtime stage: its `pip install` line replayed from the Dockerfile itself
  (requirements/runtime.lock and the wheel, --no-deps), as tests/ops/test_dockerfile.py does.

Each figure is the bytes the install adds to site-packages, in decimal MB, not counting what the
fresh venv held before it (pip, setuptools): the image's Python has its own. It prints the total,
the largest top-level entries, the distributions the plain install has beyond the lock, and the
machine (CPU flags from /proc/cpuinfo: size does not depend on them, every script says them).

    .venv/bin/python tools/install_size.py            # two fresh venvs, a few minutes

Needs the package registry (pip's own index and this machine's pip configuration); exit status 1
if `pip install .` adds more than --budget-mb (250 by default, issue 22).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedder.golden import cpu_flags
from tests.ops.dockerfile import (
    Dockerfile,
    added_bytes,
    fresh_venv,
    pip,
    replay_builder,
    replay_install,
    venv_python,
)

LISTED = 10


# The HTTP front end's stack (pyproject: fastapi, uvicorn, httptools) and what only it pulls in.
HTTP_STACK = {
    "fastapi",
    "starlette",
    "uvicorn",
    "httptools",
    "h11",
    "anyio",
    "idna",
    "click",
    "annotated-doc",
}


def distributions(venv: Path) -> dict[str, tuple[str, int]]:
    """Each installed distribution's version and the bytes of the files its RECORD lists."""
    code = (
        "import importlib.metadata as m, json, os, re\n"
        "out = {}\n"
        "for d in m.distributions():\n"
        "    files = [d.locate_file(f) for f in d.files or []]\n"
        "    size = sum(os.lstat(f).st_size for f in files if os.path.lexists(f))\n"
        "    out[re.sub(r'[-_.]+', '-', d.metadata['Name']).lower()] = (d.version, size)\n"
        "print(json.dumps(out))"
    )
    found = json.loads(venv_python(venv, code))
    return {name: (version, size) for name, (version, size) in found.items()}


def _mb(dists: dict[str, tuple[str, int]], names: set[str]) -> str:
    listed = sorted(names & set(dists), key=lambda n: -dists[n][1])
    total = sum(dists[n][1] for n in listed) / 1e6
    return f"{total:.1f} MB (" + ", ".join(f"{n} {dists[n][1] / 1e6:.1f}" for n in listed) + ")"


def report(label: str, sizes: dict[str, int]) -> float:
    total = sum(sizes.values()) / 1e6
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:LISTED]
    print(f"{label}: {total:.1f} MB added to site-packages")
    print("  largest (MB): " + ", ".join(f"{name} {size / 1e6:.1f}" for name, size in largest))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-mb", type=float, default=250.0)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}; CPU flags: {cpu_flags()}")
    dockerfile = Dockerfile.read(REPO / "Dockerfile")
    with tempfile.TemporaryDirectory(prefix="install-size-") as tmp:
        work = Path(tmp)
        wheels = replay_builder(dockerfile, REPO, work)
        # `pip install .` from the builder's copy of the sources: the same files, and no build/ or
        # egg-info written into the shared working tree.
        plain = work / "plain"
        fresh_venv(plain)
        pip(plain, ["pip", "install", "--no-cache-dir", "."], cwd=work / "src")
        image = work / "image"
        replay_install(dockerfile, "runtime", REPO, wheels, image)

        plain_mb = report("pip install .", added_bytes(plain))
        image_mb = report("Docker runtime stage (runtime.lock + wheel, --no-deps)", added_bytes(image))
        plain_dists, image_dists = distributions(plain), distributions(image)
        extra = set(plain_dists) - set(image_dists)
        print(f"  pip install . adds {plain_mb - image_mb:.1f} MB more, by RECORD: {_mb(plain_dists, extra)}")
        print(f"  the HTTP stack, in both: {_mb(image_dists, HTTP_STACK)}")
        other = sorted(
            n for n in set(plain_dists) & set(image_dists) if plain_dists[n][0] != image_dists[n][0]
        )
        if other:
            print(
                "  resolved to other versions than the lock: "
                + ", ".join(f"{n} {plain_dists[n][0]} (lock {image_dists[n][0]})" for n in other)
            )
    if plain_mb > args.budget_mb:
        print(f"pip install . exceeds the {args.budget_mb:.0f} MB budget")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
