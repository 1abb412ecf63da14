"""The `RANDOM-INIT ... NOT PRETRAINED` warning in the log of a real `embedder serve` process: one
per random-init graph it loads, none for a pretrained model's."""

from __future__ import annotations

import re
from pathlib import Path

from embedder.spec import SPEC_FILE, load_spec, write_spec
from tests.support.models import CLIP, DINO, make_models_dir
from tests.support.processes import ServerProcess, running

PRETRAINED = "pretrained-dino"


def test_random_init_graphs_are_warned_about_in_the_server_log(
    tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path
) -> None:
    models = make_models_dir(tmp_path / "models", tiny_clip_dir, (tiny_dinov2_dir, PRETRAINED))
    spec = load_spec(models / PRETRAINED / SPEC_FILE)
    assert spec.provenance is not None and spec.provenance.weights == "random-init"
    # The same graph declared pretrained: only the declaration differs, so only it can decide.
    provenance = spec.provenance.model_copy(update={"weights": "pretrained"})
    write_spec(spec.model_copy(update={"provenance": provenance}), models / PRETRAINED / SPEC_FILE)

    server = ServerProcess(models, tmp_path / "serve.log", "--preload")
    with running(server):
        log = server.log()
    warnings = [line for line in log.splitlines() if "NOT PRETRAINED" in line]
    assert len(warnings) == 2, log  # tiny-clip's image graph and its text graph
    for graph in (CLIP, f"{CLIP} (text)"):  # preload builds them in parallel: in either order
        pattern = rf"\bWARNING\b.*: model {re.escape(graph)} has RANDOM-INIT weights, NOT PRETRAINED"
        assert sum(bool(re.search(pattern, line)) for line in warnings) == 1, (graph, warnings)
    assert re.search(rf"model {PRETRAINED} loaded in .* \(weights: PRETRAINED,", log), log
    assert DINO not in log  # the copy serves under its own name only
