"""Served vectors of a checkout, to prove a refactor changed none of them (bit for bit).

    python tools/vectors_snapshot.py OUT.npz [--repo DIR]

Exports tiny CLIP and DINOv2 (seeded random-init, fp32 and int8) with DIR's own exporter, serves
them with DIR's own server and embeds the export's parity images (and CLIP texts) through gRPC;
writes every vector to OUT.npz. Run it on two commits (a `git worktree` of the older one) and
`python tools/vectors_snapshot.py --compare A.npz B.npz` says whether they are identical.
Uses only interfaces that have stayed the same: the export CLI, EmbedderServer, EmbedderClient.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODELS = {  # name: (family, architecture, extra flags)
    "tiny-clip": ("clip", "tiny-clip", ()),
    "tiny-clip-int8": ("clip", "tiny-clip", ("--quantize", "int8")),
    "tiny-dinov2": ("dinov2", "tiny-dinov2", ()),
    "tiny-dinov2-int8": ("dinov2", "tiny-dinov2", ("--quantize", "int8")),
}
TEXTS = ["a photo of a cat", "Ünïcödé façade", "猫の写真", "🐶🐱", "", "a " * 200]
SEED = "7"


def export_all(repo: Path, models: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name, (family, arch, flags) in MODELS.items():
        command = [sys.executable, "-m", "export", family, arch, "--random-init", "--seed", SEED, "--no-huge"]
        subprocess.run([*command, *flags, "--out", str(models / name)], cwd=repo, env=env, check=True)


def embed_all(models: Path, images: list[Path]) -> dict[str, np.ndarray]:
    from embedder.client import EmbedderClient
    from embedder.server import EmbedderServer
    from embedder.settings import Settings

    server = EmbedderServer(Settings(address="127.0.0.1:0", models_dir=models, metrics_address=None))
    port = server.start()
    try:
        client = EmbedderClient(f"127.0.0.1:{port}", retries=0, timeout=120)
        found: dict[str, np.ndarray] = {}
        blobs = [p.read_bytes() for p in images]
        for name in MODELS:
            found[f"{name}/images"] = np.stack([client.embed(name, [b]).embeddings[0] for b in blobs])
            found[f"{name}/batch"] = client.embed(name, blobs[:8]).embeddings
            if name == "tiny-clip":  # an int8 variant carries the image graph only
                found[f"{name}/texts"] = client.embed_text(name, TEXTS).embeddings
        return found
    finally:
        server.stop(5)


def snapshot(repo: Path, out: Path) -> None:
    sys.path.insert(0, str(repo))
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models"
        export_all(repo, models)
        images_dir = Path(scratch) / "images"
        from export.images import write_parity_images

        images = write_parity_images(images_dir, 0, include_huge=False)
        np.savez(out, **embed_all(models, images))


def compare(a: Path, b: Path) -> int:
    left, right = np.load(a), np.load(b)
    differ = [k for k in sorted(set(left) | set(right)) if k not in left or k not in right]
    differ += [k for k in sorted(set(left) & set(right)) if not np.array_equal(left[k], right[k])]
    for key in sorted(set(left) & set(right)):
        print(f"{key}: {left[key].shape} {'identical' if key not in differ else 'DIFFERENT'}")
    print("bit-identical" if not differ else f"{len(differ)} arrays differ: {differ}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    snapshot(args.repo.resolve(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
