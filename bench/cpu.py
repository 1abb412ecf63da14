"""The CPU a figure was measured on, as this process sees it, and a way to measure the kernels ONNX
Runtime picks on a CPU without AVX-512 or VNNI while running on one that has them.

`features()` asks CPUID through numpy's dispatcher (what the process was told, so under the mask
below it shows the masked CPU). `avx2_only_env()` builds `tools/cpu_mask/avx2_only.c` with the
system C compiler and returns an environment whose processes see AVX2 + FMA and nothing newer;
it needs Linux CPUID faulting (`cpuid_fault` in /proc/cpuinfo).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "tools" / "cpu_mask" / "avx2_only.c"
SHOWN = ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512VNNI", "AVXVNNI", "AVX512_BF16")


def features() -> dict[str, bool]:
    from numpy._core._multiarray_umath import __cpu_features__

    return {name: bool(__cpu_features__.get(name, False)) for name in SHOWN}


def model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe() -> str:
    """'model name: FLAG FLAG ...' with the flags this process sees."""
    seen = [name for name, present in features().items() if present]
    return f"{model_name()}: {' '.join(seen)}" + (" (masked: AVX2-only)" if masked() else "")


def masked() -> bool:
    return SOURCE.stem in os.environ.get("LD_PRELOAD", "")


def avx2_only_env() -> dict[str, str]:
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text(encoding="utf-8"):
        raise RuntimeError(
            "this kernel/CPU has no CPUID faulting (cpuid_fault): the AVX2-only mask cannot run"
        )
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc) to build the AVX2-only mask")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedder"
    cache.mkdir(parents=True, exist_ok=True)
    library = cache / f"{SOURCE.stem}.so"
    if not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime:
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(SOURCE)], check=True)
    env = os.environ.copy()
    env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD", ""), str(library)]))
    return env
