"""`embedder embed`: files, folders and globs -> embeddings, as JSON lines or `.npy` + manifest.

Large backfills are chunked into requests, show a progress bar on a terminal, and resume: with
`--output` a rerun skips every file already written (JSONL: the paths in the file; `.npy`: the
manifest, whose rows are appended only after their vectors are on disk). Every record carries what
makes vectors comparable (model name, graph and preprocessing sha256, normalisation); a rerun whose
server answers with another of these refuses to append to the same output.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def add_embed_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="image files, folders (recursive) or globs")
    parser.add_argument("--model", required=True, help="model name or alias")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise each vector")
    parser.add_argument("--aggregate", choices=["mean"], help="also print the mean of all vectors")
    parser.add_argument(
        "--output", type=Path, help="write here instead of stdout: .jsonl, or .npy (+ .manifest.jsonl)"
    )
    parser.add_argument("--chunk", type=int, default=16, help="images per request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def expand(inputs: list[str]) -> list[Path]:
    """Every image named, found under a folder, or matched by a glob; sorted, without duplicates."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(item):
            found += sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            if not path.is_file():
                raise SystemExit(f"embedder embed: no such file: {item}")
            found.append(path)
    return list(dict.fromkeys(found))


def identity(model: Any, normalize: bool) -> dict[str, Any]:
    """What must be equal for two vectors to be comparable (see ModelInfo in the proto)."""
    return {
        "model": model.name,
        "onnx_sha256": model.onnx_sha256,
        "preprocessing_sha256": model.preprocessing_sha256,
        "normalize": normalize,
    }


def check_same(recorded: dict[str, Any] | None, now: dict[str, Any], output: Path | None) -> None:
    """Refuses to append vectors unlike those already in `output` (a changed model, or a
    different --normalize); keys a record of an older version lacks are not compared."""
    if recorded is None:
        return
    differ = {
        key: (recorded[key], value)
        for key, value in now.items()
        if key in recorded and recorded[key] != value
    }
    if differ:
        what = "; ".join(f"{key}: {old!r} in the file, {new!r} now" for key, (old, new) in differ.items())
        raise SystemExit(
            f"embedder embed: {output} holds vectors that are not comparable ({what}); refusing to append: write to a new --output"
        )


class JsonlSink:
    def __init__(self, stream: IO[str], done: set[str], recorded: dict[str, Any] | None = None) -> None:
        self.stream = stream
        self.done = done
        self.recorded = recorded

    @classmethod
    def open(cls, path: Path | None) -> JsonlSink:
        if path is None:
            return cls(sys.stdout, set())
        done, recorded = set(), None
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    done.add(record["path"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run is rewritten
                recorded = recorded or {k: v for k, v in record.items() if k not in ("path", "embedding")}
        return cls(path.open("a", encoding="utf-8"), done, recorded)

    def write(self, paths: list[Path], vectors: np.ndarray, same: dict[str, Any]) -> None:
        for path, vector in zip(paths, vectors, strict=True):
            record = {"path": str(path), **same, "embedding": vector.tolist()}
            self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


class NpySink:
    """Vectors appended to `<out>.part` (float32 rows), each row's file in `<out>.manifest.jsonl`;
    `close` turns the rows into a real `.npy`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_suffix(".npy.part")
        self.manifest = path.with_suffix(".manifest.jsonl")
        lines = self.manifest.read_text(encoding="utf-8").splitlines() if self.manifest.exists() else []
        self.rows = [json.loads(line) for line in lines if line.strip()]
        self.done = {row["path"] for row in self.rows}
        self.recorded = (
            {k: v for k, v in self.rows[0].items() if k not in ("row", "path", "dim")} if self.rows else None
        )
        self.dim: int | None = self.rows[0]["dim"] if self.rows else None
        if self.dim is not None and self.part.exists():  # drop vectors written without their manifest line
            with self.part.open("r+b") as fh:
                fh.truncate(len(self.rows) * self.dim * 4)

    def write(self, paths: list[Path], vectors: np.ndarray, same: dict[str, Any]) -> None:
        self.dim = vectors.shape[1]
        with self.part.open("ab") as fh:
            fh.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        with self.manifest.open("a", encoding="utf-8") as fh:
            for path in paths:
                row = {"row": len(self.rows), "path": str(path), **same, "dim": self.dim}
                self.rows.append(row)
                fh.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.dim is None or not self.part.exists():
            return
        vectors = np.fromfile(self.part, dtype="<f4").reshape(-1, self.dim)
        np.save(self.path, vectors)


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_embed_job(client: Any, args: argparse.Namespace) -> int:
    paths = expand(args.inputs)
    output: Path | None = args.output
    sink: JsonlSink | NpySink = (
        NpySink(output) if output and output.suffix == ".npy" else JsonlSink.open(output)
    )
    todo = [p for p in paths if str(p) not in sink.done]
    show = not args.no_progress and sys.stderr.isatty()
    total = np.zeros(0)
    count = 0
    try:
        with tqdm(total=len(todo), unit="img", disable=not show, file=sys.stderr) as bar:
            for chunk in _chunks(todo, args.chunk):
                result = client.embed(args.model, chunk, normalize=args.normalize)
                same = identity(result.model, args.normalize)
                check_same(sink.recorded, same, output)
                sink.recorded = same
                sink.write(chunk, result.embeddings, same)
                total = result.embeddings.astype(np.float64).sum(0) + (total if count else 0)
                count += len(chunk)
                bar.update(len(chunk))
    finally:
        sink.close()
    if args.aggregate == "mean" and count:
        print(
            json.dumps(
                {
                    "aggregate": "mean",
                    "count": count,
                    "embedding": (total / count).astype(np.float32).tolist(),
                }
            )
        )
    if todo != paths:
        print(f"resumed: {len(paths) - len(todo)} already done, {len(todo)} embedded", file=sys.stderr)
    return 0
