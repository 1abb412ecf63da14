"""`embedder search "a sentence" DIR`: text-to-image search over a folder, from the command line.

The folder's images are embedded once, through the resumable `embed` job (`--output`, by default
MODEL.npy with its manifest in the user's cache, see `cache_dir`): a rerun embeds only images added
since, and refuses vectors of another model. The sentence goes through the model's text tower;
images are ranked by cosine similarity, the best first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .embed_job import expand, run_embed_job


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="what to look for, in words")
    parser.add_argument("folder", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--model", required=True, help="model name or alias (one with a text tower)")
    parser.add_argument("--top", type=int, default=10, help="how many images to print (default 10)")
    parser.add_argument(
        "--output",
        "--vectors",  # its earlier name
        dest="output",
        type=Path,
        help="the .npy where the folder's vectors are kept (default: in the user's cache, "
        "$XDG_CACHE_HOME or ~/.cache, under embedder/search/)",
    )
    parser.add_argument("--chunk", type=int, default=16, help="images per request while embedding the folder")


def cache_dir(folder: Path) -> Path:
    """Where the vectors of `folder` are kept by default. Not in the folder, which may be read-only
    or shared; keyed by its resolved path, so two folders never share one and every way of naming
    the same folder finds it."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if Path(xdg).is_absolute() else Path.home() / ".cache"  # a relative one is invalid (XDG)
    resolved = folder.resolve()
    key = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:32]
    return root / "embedder" / "search" / f"{resolved.name or 'root'}-{key}"


def run_search(client: Any, args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        raise SystemExit(f"embedder search: not a folder: {args.folder}")
    folder = args.folder.resolve()  # the cache's paths are absolute: valid from any working directory
    vectors_path: Path = args.output or cache_dir(folder) / f"{args.model.replace('/', '_')}.npy"
    vectors_path.parent.mkdir(parents=True, exist_ok=True)
    job = argparse.Namespace(
        inputs=[str(folder)],
        model=args.model,
        normalize=True,
        aggregate=None,
        output=vectors_path,
        chunk=args.chunk,
        no_progress=False,
    )
    run_embed_job(client, job)
    present = {str(path) for path in expand([str(folder)])}
    rows = [
        json.loads(line)
        for line in vectors_path.with_suffix(".manifest.jsonl").read_text().splitlines()
        if line
    ]
    vectors = np.load(vectors_path)
    keep = [row for row in rows if row["path"] in present]  # images deleted since are not results
    if not keep:
        raise SystemExit(f"embedder search: no images in {args.folder}")

    def shown(path: str) -> str:  # as the user named the folder
        return str(args.folder / Path(path).relative_to(folder))

    query = client.embed_text(args.model, [args.query], normalize=True).embeddings[0]
    scores = vectors[[row["row"] for row in keep]] @ query
    for rank, index in enumerate(np.argsort(-scores, kind="stable")[: args.top], start=1):
        print(
            json.dumps(
                {"rank": rank, "score": round(float(scores[index]), 6), "path": shown(keep[index]["path"])}
            )
        )
    return 0
