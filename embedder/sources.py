"""Where an image's bytes come from: the request itself, or a file under the configured root.

`path` inputs are off unless `image_root` is set. A path must be relative, free of `..`, and
still inside the root once every symlink is resolved; anything else is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import InvalidImage, LimitExceeded, shown


@dataclass(frozen=True)
class ImageSource:
    data: bytes | None = None
    path: str | None = None


class SourceReader:
    def __init__(self, image_root: Path | None, max_image_bytes: int) -> None:
        self.root = image_root.resolve(strict=True) if image_root is not None else None
        self.max_image_bytes = max_image_bytes

    def read(self, source: ImageSource, index: int) -> bytes:
        if source.path is not None:
            return self._read_path(source.path, index)
        data = source.data or b""
        self._check_size(len(data), index)
        return data

    def _check_size(self, size: int, index: int) -> None:
        if size > self.max_image_bytes:
            raise LimitExceeded(f"image {index}: {size} bytes exceeds max_image_bytes={self.max_image_bytes}")

    def _read_path(self, raw: str, index: int) -> bytes:
        if self.root is None:
            raise InvalidImage(
                "path inputs are disabled on this server (no image_root set)", index, failure="path"
            )
        path = self._resolve(raw, index)
        try:
            with path.open("rb") as fh:  # one descriptor: a file that grows after a stat is still capped
                data = fh.read(self.max_image_bytes + 1)
        except OSError as exc:
            raise InvalidImage(
                f"path {shown(raw)} cannot be read: {exc.strerror or type(exc).__name__}",
                index,
                failure="path",
            ) from None
        self._check_size(len(data), index)
        return data

    def _resolve(self, raw: str, index: int) -> Path:
        assert self.root is not None
        pure = PurePosixPath(raw)
        if not raw or "\x00" in raw or pure.is_absolute() or os.path.isabs(raw) or ".." in pure.parts:
            raise InvalidImage(
                f"path {shown(raw)} must be relative to the image root, without '..'", index, failure="path"
            )
        try:
            resolved = (self.root / pure).resolve(strict=True)
        except (OSError, RuntimeError):
            raise InvalidImage(
                f"path {shown(raw)} not found under the image root", index, failure="path"
            ) from None
        if not resolved.is_relative_to(self.root):
            raise InvalidImage(
                f"path {shown(raw)} escapes the image root through a symlink", index, failure="path"
            )
        if not resolved.is_file():
            raise InvalidImage(f"path {shown(raw)} is not a regular file", index, failure="path")
        return resolved
