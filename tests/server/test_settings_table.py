"""docs/settings.md is generated from the Field descriptions of embedder/settings.py
(tools/settings_table.py): the committed file must be what the tool writes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from embedder.settings import Settings
from tests.support import REPO

COMMITTED = REPO / "docs" / "settings.md"


def test_committed_settings_table_is_what_the_tool_writes(tmp_path: Path) -> None:
    fresh = tmp_path / "settings.md"
    done = subprocess.run(
        [sys.executable, "tools/settings_table.py", str(fresh)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert COMMITTED.read_text(encoding="utf-8") == fresh.read_text(encoding="utf-8"), (
        "docs/settings.md is stale: run `.venv/bin/python -m tools.settings_table` and commit it"
    )


def test_every_setting_has_its_row_and_the_readme_points_there() -> None:
    table = COMMITTED.read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `--{name.replace('_', '-')}` | `EMBEDDER_{name.upper()}` |" in table, name
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/settings.md" in readme
    assert "| `--max-batch-size` |" not in readme  # one table, the generated one
