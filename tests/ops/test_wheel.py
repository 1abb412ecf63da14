"""The wheel holds both packages, so `pip install "embedder[export]"` can export; its runtime
requirements are what requirements/runtime.lock pins (the image installs that lock --no-deps)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_metadata(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], list[str]]:
    """The wheel, built once: its file names and its Requires-Dist lines."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    argv = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
        str(REPO),
    ]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("embedder-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(
            archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
    return names, metadata.get_all("Requires-Dist") or []


def test_the_wheel_ships_the_exporter_with_its_extra(wheel_metadata: tuple[set[str], list[str]]) -> None:
    names, requires = wheel_metadata
    for module in (
        "export/__main__.py",
        "export/parity.py",
        "embedder/server.py",
        "embedder/v1/embedder_pb2.py",
    ):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    export_requires = [r for r in requires if 'extra == "export"' in r]
    assert any(r.startswith("torch==2.13.0") for r in export_requires), export_requires


def test_the_runtime_lock_satisfies_every_runtime_requirement_of_the_wheel(
    wheel_metadata: tuple[set[str], list[str]],
) -> None:
    """The image installs the lock with --no-deps, so pip never checks it against the wheel: a
    range changed in pyproject without `make lock` must fail here, not in a built image."""
    _, requires = wheel_metadata
    pins: dict[str, str] = {}
    for line in (REPO / "requirements" / "runtime.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[canonicalize_name(name)] = version
    runtime = [Requirement(r) for r in requires]
    runtime = [r for r in runtime if r.marker is None or r.marker.evaluate({"extra": ""})]
    assert len(runtime) >= 10, runtime  # onnxruntime, numpy, ... the HTTP stack
    for requirement in runtime:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements/runtime.lock (run make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {name}=={pins[name]}, outside the wheel's {requirement}"
        )
