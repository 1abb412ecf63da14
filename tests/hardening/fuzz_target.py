"""The decode path's fuzz invariant, and an atheris (libFuzzer) entry point for it.

Invariant: `decode` + `Preprocessor` either give an RGB image within the pixel limit and a finite
float32 [3, H, W] tensor of the model's input size, or raise `InvalidImage`. Any other exception
(struct.error, IndexError, ZeroDivisionError, a Pillow error nobody translated...) would reach a
client as INTERNAL, so it is a bug.

Run by test_fuzz.py as a bounded subprocess with a fixed seed, and by `make fuzz`
(tools/fuzz.py) as a timed campaign. To replay one input (a finding, a crash artifact):

    .venv/bin/python -m tests.hardening.fuzz_target tests/hardening/fuzz_findings/FILE

With FUZZ_RECORD_DIR set (the campaign), an input that breaks the invariant is written there,
once per distinct failure (exception type and the innermost frame), and fuzzing goes on;
without it, the first such input stops the run as a libFuzzer crash.

Imports of Pillow and `embedder` happen inside `main`, under `atheris.instrument_imports`, so
libFuzzer gets coverage feedback from Pillow's Python plugins and from the decode path.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import os
import subprocess
import sys
import sysconfig
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedder.preprocess import Preprocessor

# Small limits and a small input keep each run fast; the code paths are the served ones.
FUZZ_MAX_PIXELS = 4_000_000
FUZZ_MAX_RESIZED_PIXELS = 1_000_000
FUZZ_SIDE = 32
SLOW_S = 5.0  # one input of at most a few KB decoding this long is a finding (a CPU sink)
REPO = Path(__file__).parents[2]  # not resolved: see fuzz_command
FINDINGS = REPO / "tests" / "hardening" / "fuzz_findings"
ADDR_NO_RANDOMIZE = 0x0040000  # linux/personality.h
INDEX = "README.md"


def fuzz_preprocessor() -> Preprocessor:
    """A CLIP-style pipeline (shortest-edge bicubic resize, center crop, normalise) at 32 px."""
    from embedder.preprocess import DecodeLimits, Preprocessor
    from embedder.spec import CropSize, Preprocessing, Resize

    spec = Preprocessing(
        processor_class="CLIPImageProcessor",
        resize=Resize(shortest_edge=FUZZ_SIDE),
        resample="bicubic",
        center_crop=CropSize(height=FUZZ_SIDE, width=FUZZ_SIDE),
        rescale_factor=1 / 255,
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
    )
    return Preprocessor(
        spec, DecodeLimits(max_pixels=FUZZ_MAX_PIXELS, max_resized_pixels=FUZZ_MAX_RESIZED_PIXELS)
    )


def seed_images() -> dict[str, bytes]:
    """Small valid files of every allowed format and the variants that take other code paths
    (palette, alpha, 16-bit, CMYK, progressive, animated, multi-page, each TIFF compression)."""
    from PIL import Image

    from tests.support.images import encode, picture

    photo = picture(24, 18, 1)
    frames = [picture(24, 18, seed) for seed in (2, 3)]
    seeds = {
        "baseline.jpg": encode(photo, "JPEG", quality=85),
        "progressive.jpg": encode(photo, "JPEG", progressive=True),
        "cmyk.jpg": encode(photo.convert("CMYK"), "JPEG"),
        "rgb.png": encode(photo, "PNG"),
        "palette.png": encode(photo.convert("P"), "PNG", transparency=3),
        "la_interlaced.png": encode(photo.convert("LA"), "PNG", interlace=1),
        "bilevel.png": encode(photo.convert("1"), "PNG"),
        "grey16.png": encode(Image.new("I;16", (24, 18), 4000), "PNG"),
        "animated.gif": encode(
            frames[0].convert("P"), "GIF", save_all=True, append_images=[frames[1].convert("P")]
        ),
        "rgb.bmp": encode(photo, "BMP"),
        "palette.bmp": encode(photo.convert("P"), "BMP"),
        "lossy.webp": encode(photo, "WEBP", quality=70),
        "lossless_alpha.webp": encode(photo.convert("RGBA"), "WEBP", lossless=True),
        "animated.webp": encode(frames[0], "WEBP", save_all=True, append_images=[frames[1]]),
        "pages.tiff": encode(frames[0], "TIFF", save_all=True, append_images=[frames[1]]),
        "g4.tiff": encode(photo.convert("1"), "TIFF", compression="group4"),
    }
    for compression in ("tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"):
        seeds[f"{compression}.tiff"] = encode(photo, "TIFF", compression=compression)
    return seeds


def check_decode(data: bytes, preprocessor: Preprocessor) -> bool:
    """True if decoded and preprocessed, False if refused with InvalidImage; raises on a bug."""
    import numpy as np

    from embedder.errors import InvalidImage
    from embedder.preprocess import decode

    try:
        image = decode(data, preprocessor.limits)
        tensor = preprocessor(image)
    except InvalidImage as exc:
        assert exc.reason, "an InvalidImage must say why"
        return False
    assert image.mode == "RGB", image.mode
    assert 0 < image.width * image.height <= preprocessor.limits.max_pixels, image.size
    assert tensor.shape == (3, *preprocessor.spec.input_size()), tensor.shape
    assert tensor.dtype == np.float32 and bool(np.isfinite(tensor).all())
    return True


def findings() -> dict[str, bytes]:
    """The committed regression corpus: every input a fuzzer has found, by file name."""
    return {p.name: p.read_bytes() for p in sorted(FINDINGS.iterdir()) if p.is_file() and p.name != INDEX}


def signature(exc: BaseException) -> str:
    """What makes two failures the same bug: the exception type and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


class Recorder:
    """Campaign mode: writes each distinct failing input into `folder` and lets fuzzing go on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()

    def record(self, data: bytes, what: str, detail: str = "") -> None:
        key = hashlib.sha256(what.encode()).hexdigest()[:12]
        if key in self.seen:
            return
        self.seen.add(key)
        path = self.folder / f"finding-{key}.bin"
        try:
            with path.open("xb") as fh:  # another worker may have found it first
                fh.write(data)
        except FileExistsError:
            return
        text = f"{what}: {detail}".replace("|", "\\|").replace("\n", " ")
        print(f"\nFUZZ FINDING {path.name}: {text}", file=sys.stderr, flush=True)
        with (self.folder / INDEX).open("a", encoding="utf-8") as index:
            index.write(f"| `{path.name}` | {text} | `make fuzz`, {time.strftime('%Y-%m-%d')} |\n")


def fuzz_command(work: Path, *libfuzzer_args: str, record_dir: Path | None = None) -> Launch:
    """How to start this target under libFuzzer so that a fixed `-seed` gives the same run
    everywhere: the Python code is coverage feedback, and which inputs it keeps turned out to
    depend on the process's memory layout, down to the length of path strings. So the child
    runs without address randomisation, sees the checkout and the interpreter's prefix only
    through fixed-length symlinks in `work` (no `.pth` files: `python -S`), starts in `work`,
    and gets a minimal environment with a fixed PYTHONHASHSEED."""
    repo, prefix = work / "r", work / "p"
    for link, target in ((repo, REPO), (prefix, Path(sys.prefix))):
        if not link.is_symlink():
            link.symlink_to(target.absolute(), target_is_directory=True)
    executable = Path(sys.executable)
    if executable.is_relative_to(sys.prefix):
        executable = prefix / executable.relative_to(sys.prefix)
    site = {prefix / Path(sysconfig.get_path(key)).relative_to(sys.prefix) for key in ("purelib", "platlib")}
    env = {
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join(map(str, (repo, *sorted(site)))),
        "PATH": os.defpath,
        "LC_ALL": "C.UTF-8",
    }
    if record_dir is not None:
        env["FUZZ_RECORD_DIR"] = str(record_dir)
    argv = [str(executable), "-S", "-m", "tests.hardening.fuzz_target", *libfuzzer_args]
    return Launch(argv, env, work)


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path

    def run(self, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=_no_address_randomisation,
        )


def _no_address_randomisation() -> None:
    """In the child before exec, as `setarch -R` does: the same addresses on every run."""
    libc = ctypes.CDLL(None, use_errno=True)
    current = libc.personality(0xFFFFFFFF)
    if current == -1 or libc.personality(current | ADDR_NO_RANDOMIZE) == -1:
        raise OSError(ctypes.get_errno(), "personality(ADDR_NO_RANDOMIZE) failed")


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["PIL", "embedder"]):
        # The allowed formats' plugins too: Pillow would otherwise import them lazily, uninstrumented.
        for plugin in ("Bmp", "Gif", "Jpeg", "Png", "Tiff", "WebP"):
            importlib.import_module(f"PIL.{plugin}ImagePlugin")
        importlib.import_module("embedder.preprocess")
    from embedder.preprocess import image_format

    preprocessor = fuzz_preprocessor()
    record_dir = os.environ.get("FUZZ_RECORD_DIR")
    recorder = Recorder(Path(record_dir)) if record_dir else None

    def one_input(data: bytes) -> None:
        if recorder is None:
            check_decode(data, preprocessor)
            return
        started = time.perf_counter()
        try:
            check_decode(data, preprocessor)
        except Exception as exc:  # noqa: BLE001 - recorded, and the campaign goes on
            recorder.record(data, signature(exc), str(exc)[:160])
        seconds = time.perf_counter() - started
        if seconds > SLOW_S:
            recorder.record(data, f"slow {image_format(data)}", f"{seconds:.1f} s")

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
