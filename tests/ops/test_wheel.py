"""The wheel holds both packages, so `pip install "embedder[export]"` can export."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_the_exporter_with_its_extra(tmp_path: Path) -> None:
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
    for module in (
        "export/__main__.py",
        "export/parity.py",
        "embedder/server.py",
        "embedder/v1/embedder_pb2.py",
    ):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    export_requires = [r for r in metadata.get_all("Requires-Dist") or [] if 'extra == "export"' in r]
    assert any(r.startswith("torch==2.13.0") for r in export_requires), export_requires
