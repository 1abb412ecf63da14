"""The harness the tests, `python -m bench` and tools/soak.py share: real servers (in this process
or as `embedder serve` subprocesses), models directories of exported models, generated images."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
