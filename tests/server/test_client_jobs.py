"""The Python client's options and the CLI's jobs: embed_many, aggregate_only, server-side paths,
a resumed `embed --output` that refuses vectors of another model, `embed-text` and `search`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from embedder.client import build_request, server_path
from embedder.spec import SPEC_FILE, load_spec
from tests.support.commands import run_module
from tests.support.images import encode, picture
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP, DINO, make_models_dir
from tests.support.processes import clean_env


def embedder(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_module("embedder", *args, env=clean_env(), timeout=120)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    for i in range(7):
        (root / f"frame_{i}.jpg").write_bytes(encode(picture(96, 64, seed=i), "JPEG", quality=90))
    return root


@pytest.fixture(scope="module")
def served(tiny_models: Path, folder: Path) -> object:
    with serving(tiny_models, image_root=folder) as served:
        yield served


def jpegs(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]


def test_embed_many_chunks_in_order(served: Served, folder: Path) -> None:
    images = jpegs(folder)
    chunks = list(served.client.embed_many(CLIP, images, chunk=3, normalize=True))
    assert [len(c.embeddings) for c in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(
        np.concatenate([c.embeddings for c in chunks]),
        served.client.embed(CLIP, images, normalize=True).embeddings,
    )


def test_aggregate_only_returns_only_the_mean(served: Served, folder: Path) -> None:
    images = jpegs(folder)
    full = served.client.embed(CLIP, images, normalize=True, aggregate="mean")
    only = served.client.embed(CLIP, images, normalize=True, aggregate="mean", aggregate_only=True)
    assert only.embeddings.shape == (0, 16) and only.aggregate is not None
    np.testing.assert_array_equal(only.aggregate, full.aggregate)
    with pytest.raises(ValueError, match="aggregate must be None or 'mean'"):
        build_request(CLIP, images, aggregate="max")  # type: ignore[arg-type]


def test_server_path_reads_from_the_image_root(served: Served, folder: Path) -> None:
    by_path = served.client.embed(CLIP, [server_path("frame_2.jpg")]).embeddings
    by_bytes = served.client.embed(CLIP, [(folder / "frame_2.jpg").read_bytes()]).embeddings
    np.testing.assert_array_equal(by_path, by_bytes)


def test_a_resumed_backfill_refuses_vectors_of_another_model(
    tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path, folder: Path
) -> None:
    """Two servers publish the same model name over different graphs, as after a re-export: the
    rerun must not append the second graph's vectors to the first one's file."""
    out = tmp_path / "vectors.npy"
    first = sorted(folder.glob("*.jpg"))
    with serving(make_models_dir(tmp_path / "a", tiny_clip_dir)) as a:
        done = embedder(
            "embed", *first[:4], "--model", CLIP, "--output", out, "--server", a.address, "--no-progress"
        )
        assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.with_suffix(".manifest.jsonl").read_text().splitlines()]
    spec = load_spec(tiny_clip_dir / SPEC_FILE)
    assert {(r["model"], r["onnx_sha256"], r["preprocessing_sha256"], r["normalize"]) for r in rows} == {
        (CLIP, spec.onnx_sha256, spec.preprocessing.sha256(), False)
    }
    with serving(make_models_dir(tmp_path / "b", (tiny_dinov2_dir, CLIP))) as b:
        done = embedder(
            "embed", *first, "--model", CLIP, "--output", out, "--server", b.address, "--no-progress"
        )
        assert done.returncode != 0
        assert "not comparable" in done.stderr and "onnx_sha256" in done.stderr, done.stderr
        # --normalize changes the vectors too: refused against the same graph.
    with serving(make_models_dir(tmp_path / "c", tiny_clip_dir)) as c:
        done = embedder(
            "embed",
            *first,
            "--model",
            CLIP,
            "--output",
            out,
            "--normalize",
            "--server",
            c.address,
            "--no-progress",
        )
        assert done.returncode != 0 and "normalize" in done.stderr, done.stderr
        done = embedder(
            "embed", *first, "--model", CLIP, "--output", out, "--server", c.address, "--no-progress"
        )
        assert done.returncode == 0, done.stderr
        assert "resumed: 4 already done, 3 embedded" in done.stderr
    assert np.load(out).shape == (7, 16)


def test_embed_text_prints_the_clients_vectors(served: Served) -> None:
    done = embedder(
        "embed-text", "a dog on a beach", "", "🐕", "--model", CLIP, "--normalize", "--server", served.address
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["a dog on a beach", "", "🐕"]
    expected = served.client.embed_text(CLIP, ["a dog on a beach", "", "🐕"], normalize=True).embeddings
    np.testing.assert_array_equal(np.array([line["embedding"] for line in lines], dtype=np.float32), expected)
    refused = embedder("embed-text", "a dog", "--model", DINO, "--server", served.address)
    assert (
        refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr and "no text tower" in refused.stderr
    )


def test_search_ranks_the_folder_by_cosine_and_reuses_its_vectors(
    served: Served, folder: Path, tmp_path: Path
) -> None:
    images = tmp_path / "frames"
    shutil.copytree(folder, images)
    query = "a red car in the snow"

    def search(*extra: str) -> list[dict[str, object]]:
        done = embedder(
            "search", query, images, "--model", CLIP, "--top", "4", "--server", served.address, *extra
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    found = search()
    paths = sorted(images.glob("*.jpg"))
    vectors = served.client.embed(CLIP, paths, normalize=True).embeddings
    scores = vectors @ served.client.embed_text(CLIP, [query], normalize=True).embeddings[0]
    best = np.argsort(-scores, kind="stable")[:4]
    assert [r["path"] for r in found] == [str(paths[i]) for i in best]
    np.testing.assert_allclose([r["score"] for r in found], scores[best], rtol=0, atol=1e-6)
    assert [r["rank"] for r in found] == [1, 2, 3, 4]

    manifest = images / ".embedder" / f"{CLIP}.manifest.jsonl"
    assert len(manifest.read_text().splitlines()) == 7
    images_before = served.metric("embedder_images_total", model=CLIP, code="OK")
    (images / "frame_3.jpg").unlink()  # gone: never a result again
    (images / "new.jpg").write_bytes(encode(picture(80, 80, seed=99), "JPEG"))
    again = search("--top", "100")
    assert (
        served.metric("embedder_images_total", model=CLIP, code="OK") == images_before + 1
    )  # only the new one
    assert len(again) == 7 and str(images / "frame_3.jpg") not in {r["path"] for r in again}
    assert str(images / "new.jpg") in {r["path"] for r in again}
