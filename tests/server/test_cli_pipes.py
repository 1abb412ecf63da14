"""`embedder ... | head`: a reader that leaves early ends the command quietly, with the status
a shell reports for a tool SIGPIPE ended (128 + 13), as `yes | head` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from embedder.cli import EXIT_BROKEN_PIPE
from tests.support import REPO
from tests.support.images import encode, picture
from tests.support.models import CLIP
from tests.support.processes import clean_env

if TYPE_CHECKING:
    from tests.support.inprocess import Served

# Far more output than a pipe buffers (64 KiB on Linux), so the command is still writing when the
# reader leaves, whatever the scheduling: the write after that must fail with EPIPE.
TEXTS = 256  # the server's default --max-texts-per-request
TEXT_CHARS = 2000  # each JSON line repeats its text: 256 x 2 KB is 8 times a pipe's buffer
IMAGES = 300  # `embed` lines of about 300 bytes each


def read_one_line_then_close(*args: str | Path, stdin: str = "") -> tuple[str, int, str]:
    """Runs `embedder ARGS`, reads the first line of its stdout and closes the pipe, as `head -1`
    does; then the command's exit status and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "embedder", *map(str, args)],
        cwd=REPO,
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.write(stdin)
    process.stdin.close()
    first = process.stdout.readline()
    process.stdout.close()
    try:
        stderr = process.stderr.read()
        status = process.wait(timeout=120)
    finally:
        process.kill()
    return first, status, stderr


def test_embed_text_into_a_reader_that_leaves_exits_quietly(tiny_server: Served) -> None:
    texts = "".join(f"{i:04d} " + "a dog on a beach " * (TEXT_CHARS // 17) + "\n" for i in range(TEXTS))
    first, status, stderr = read_one_line_then_close(
        "embed-text", "-", "--model", CLIP, "--server", tiny_server.address, stdin=texts
    )
    assert first.startswith('{"text": "0000 a dog')
    assert (status, stderr) == (EXIT_BROKEN_PIPE, "")


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i in range(IMAGES):
        (folder / f"{i:03d}.png").write_bytes(encode(picture(8, 8, seed=i), "PNG"))
    return folder


def test_embed_into_a_reader_that_leaves_exits_quietly(tiny_server: Served, many_images: Path) -> None:
    first, status, stderr = read_one_line_then_close(
        "embed", many_images, "--model", CLIP, "--server", tiny_server.address, "--chunk", "64"
    )
    assert first.startswith(f'{{"path": "{many_images / "000.png"}"')
    assert (status, stderr) == (EXIT_BROKEN_PIPE, "")
