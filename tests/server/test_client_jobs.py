"""The Python client's options and the CLI's jobs: embed_many, aggregate_only, server-side paths,
a resumed `embed --output` that refuses vectors of another model, `embed-text` and `search`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from embedder.client import build_request, server_path
from embedder.spec import SPEC_FILE, load_spec
from tests.support import REPO
from tests.support.commands import run_module
from tests.support.images import encode, picture
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP, DINO, make_models_dir
from tests.support.processes import clean_env


def embedder(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_module("embedder", *args, env=clean_env(**env), timeout=120)


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


def searched(cache: Path, *args: str | Path) -> list[dict[str, object]]:
    """`embedder search ARGS` with the user's cache at `cache`: its ranked results."""
    done = embedder("search", *args, XDG_CACHE_HOME=str(cache))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def manifests(cache: Path) -> list[Path]:
    return sorted((cache / "embedder" / "search").glob(f"*/{CLIP}.manifest.jsonl"))


def test_search_ranks_the_folder_by_cosine_and_reuses_its_vectors(
    served: Served, folder: Path, tmp_path: Path
) -> None:
    images, cache = tmp_path / "frames", tmp_path / "cache"
    shutil.copytree(folder, images)
    query = "a red car in the snow"

    def search(*extra: str) -> list[dict[str, object]]:
        return searched(
            cache, query, images, "--model", CLIP, "--top", "4", "--server", served.address, *extra
        )

    found = search()
    paths = sorted(images.glob("*.jpg"))
    vectors = served.client.embed(CLIP, paths, normalize=True).embeddings
    scores = vectors @ served.client.embed_text(CLIP, [query], normalize=True).embeddings[0]
    best = np.argsort(-scores, kind="stable")[:4]
    assert [r["path"] for r in found] == [str(paths[i]) for i in best]
    np.testing.assert_allclose([r["score"] for r in found], scores[best], rtol=0, atol=1e-6)
    assert [r["rank"] for r in found] == [1, 2, 3, 4]

    [manifest] = manifests(cache)
    assert len(manifest.read_text().splitlines()) == 7
    assert sorted(p.name for p in images.iterdir()) == [p.name for p in paths]  # nothing written beside them
    images_before = served.metric("embedder_images_total", model=CLIP, code="OK")
    (images / "frame_3.jpg").unlink()  # gone: never a result again
    (images / "new.jpg").write_bytes(encode(picture(80, 80, seed=99), "JPEG"))
    again = search("--top", "100")
    assert (
        served.metric("embedder_images_total", model=CLIP, code="OK") == images_before + 1
    )  # only the new one
    assert len(again) == 7 and str(images / "frame_3.jpg") not in {r["path"] for r in again}
    assert str(images / "new.jpg") in {r["path"] for r in again}

    # The same folder named relatively (the command runs from the repository root) finds the same
    # cache, and its results are named as the user named the folder.
    relative = Path(os.path.relpath(images, REPO))
    named = searched(cache, query, relative, "--model", CLIP, "--top", "100", "--server", served.address)
    assert served.metric("embedder_images_total", model=CLIP, code="OK") == images_before + 1
    assert [r["path"] for r in named] == [str(relative / Path(str(r["path"])).name) for r in again]
    assert manifests(cache) == [manifest]


def test_search_of_a_read_only_folder_keeps_its_vectors_in_the_users_cache(
    served: Served, folder: Path, tmp_path: Path
) -> None:
    images, cache = tmp_path / "frames", tmp_path / "cache"
    shutil.copytree(folder, images)
    before = sorted(str(p.relative_to(images)) for p in images.rglob("*"))
    images.chmod(0o555)
    try:
        found = searched(cache, "a dog", images, "--model", CLIP, "--top", "100", "--server", served.address)
    finally:
        images.chmod(0o755)
    assert sorted(str(r["path"]) for r in found) == sorted(str(images / name) for name in before)
    # root may write into a 0o555 folder anyway: the folder's contents are what must not change.
    assert sorted(str(p.relative_to(images)) for p in images.rglob("*")) == before
    [manifest] = manifests(cache)
    assert len(manifest.read_text().splitlines()) == len(before)


def test_two_folders_of_the_same_name_never_share_vectors(served: Served, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folders = [tmp_path / side / "frames" for side in ("a", "b")]
    for seed, images in enumerate(folders):
        images.mkdir(parents=True)
        for i in range(3):
            (images / f"{'ab'[seed]}{i}.jpg").write_bytes(encode(picture(64, 64, seed=10 * seed + i), "JPEG"))
    for images in folders:
        found = searched(cache, "a cat", images, "--model", CLIP, "--top", "100", "--server", served.address)
        assert sorted(str(r["path"]) for r in found) == sorted(str(p) for p in images.glob("*.jpg"))
    owners = []  # the folder each cache holds vectors of: one each
    for manifest in manifests(cache):
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        [owner] = {str(Path(row["path"]).parent) for row in rows}
        owners.append(owner)
    assert sorted(owners) == sorted(str(images.resolve()) for images in folders)
