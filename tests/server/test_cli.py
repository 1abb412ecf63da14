"""The `embedder` command line as a user runs it (subprocesses), and settings from flags and env."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from embedder.cli import build_parser, settings_from
from embedder.settings import Settings
from embedder.spec import SPEC_FILE, load_spec
from export.images import ParityImage
from tests.support.commands import run_module
from tests.support.processes import ServerProcess, clean_env, free_port

if TYPE_CHECKING:
    from tests.support.inprocess import Served


def embedder(*args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The `embedder` command line, with no EMBEDDER_* from the developer's shell."""
    return run_module("embedder", *args, env=clean_env(), timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, parity_set: list[ParityImage]) -> list[Path]:
    folder = tmp_path_factory.mktemp("files")
    paths = []
    for item in (parity_set[0], parity_set[21], parity_set[29]):  # JPEG, grey PNG, RGBA PNG
        paths.append(folder / item.name)
        paths[-1].write_bytes(item.data)
    return paths


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> str:
    return load_spec(tiny_clip_dir / SPEC_FILE).name


def test_embed_prints_one_unit_vector_per_file(tiny_server: Served, files: list[Path], clip: str) -> None:
    done = embedder(
        "embed",
        *files,
        "--model",
        clip,
        "--normalize",
        "--aggregate",
        "mean",
        "--server",
        tiny_server.address,
        "--no-progress",
    )

    assert done.returncode == 0, done.stderr
    *lines, last = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(f) for f in files]
    assert {line["model"] for line in lines} == {clip}
    printed = np.array([line["embedding"] for line in lines], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(printed.astype(np.float64), axis=1), 1.0, rtol=0, atol=1e-6)
    expected = tiny_server.client.embed(clip, files, normalize=True).embeddings
    np.testing.assert_array_equal(printed, expected)
    assert last["aggregate"] == "mean" and last["count"] == len(files)
    np.testing.assert_allclose(last["embedding"], expected.astype(np.float64).mean(0), rtol=0, atol=1e-6)


def test_embed_with_an_unknown_model_fails_with_not_found(tiny_server: Served, files: list[Path]) -> None:
    done = embedder(
        "embed", files[0], "--model", "no-such-model", "--server", tiny_server.address, "--no-progress"
    )
    assert done.returncode != 0
    assert "NOT_FOUND" in done.stderr and "no-such-model" in done.stderr
    assert done.stdout == ""


def test_models_prints_json(tiny_server: Served, tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> None:
    done = embedder("models", "--server", tiny_server.address)
    assert done.returncode == 0, done.stderr
    models = {m["info"]["name"]: m for m in json.loads(done.stdout)}
    for directory in (tiny_clip_dir, tiny_dinov2_dir):
        spec = load_spec(directory / SPEC_FILE)
        info = models[spec.name]["info"]
        assert (info["dim"], info["onnx_sha256"], info["weights"]) == (
            spec.embedding_dim,
            spec.onnx_sha256,
            "random-init",
        )
        assert models[spec.name]["state"] in ("MODEL_STATE_AVAILABLE", "MODEL_STATE_SERVING")
    assert len(models) == 2


def test_health_exit_codes(serve: Callable[..., Served], tiny_models: Path, clip: str) -> None:
    served = serve(tiny_models)
    serving = embedder("health", "--server", served.address, "--timeout", "5")
    assert (serving.returncode, serving.stdout.strip()) == (0, "SERVING")
    cold = embedder("health", "--model", clip, "--server", served.address, "--timeout", "5")
    assert (cold.returncode, cold.stdout.strip()) == (1, "NOT_SERVING")

    nobody = embedder("health", "--server", f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert nobody.returncode != 0
    assert "UNAVAILABLE" in nobody.stderr


@pytest.fixture
def serve_process(tiny_models: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`start(models_dir, **env)` -> an `embedder serve` subprocess configured only by EMBEDDER_*
    variables; stopped after the test if still running."""
    started: list[ServerProcess] = []

    def start(models_dir: Path = tiny_models, **env: str) -> ServerProcess:
        started.append(
            ServerProcess(models_dir, tmp_path / f"serve-{len(started)}.log", env=env, via_env=True)
        )
        return started[-1]

    yield start
    for server in started:
        server.stop()


def test_serve_from_env_becomes_serving_and_exits_0_on_sigterm(
    serve_process: Callable[..., ServerProcess], clip: str, files: list[Path]
) -> None:
    server = serve_process(EMBEDDER_PRELOAD="1", EMBEDDER_SHUTDOWN_GRACE_S="2")
    process, address = server.process, server.address

    deadline = time.monotonic() + 60
    while (health := embedder("health", "--server", address, "--timeout", "1")).returncode != 0:
        assert process.poll() is None, server.log()
        assert time.monotonic() < deadline, health.stderr
        time.sleep(0.1)
    preloaded = embedder("health", "--model", clip, "--server", address, "--timeout", "5")
    assert preloaded.stdout.strip() == "SERVING"  # EMBEDDER_PRELOAD=1 was read
    embedded = embedder("embed", files[0], "--model", clip, "--server", address, "--no-progress")
    assert embedded.returncode == 0 and len(embedded.stdout.splitlines()) == 1, embedded.stderr

    process.send_signal(signal.SIGTERM)
    process.wait(30)
    log = server.log()

    assert process.returncode == 0, log
    assert "received SIGTERM" in log and "stopped" in log


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMBEDDER_MAX_LOADED": "0"}, "invalid settings"),
        ({"EMBEDDER_MODELS_DIR": "/nonexistent/models"}, "cannot start"),
    ],
)
def test_serve_refuses_to_start_on_bad_configuration(
    serve_process: Callable[..., ServerProcess], env: dict[str, str], message: str
) -> None:
    server = serve_process(**env)
    process = server.process
    process.wait(30)
    log = server.log()
    assert process.returncode == 2
    assert message in log


@pytest.mark.slow
def test_full_size_clip_preloaded_serves_both_graphs_at_its_first_serving(
    serve_process: Callable[..., ServerProcess], clip_b32_dir: Path, tmp_path: Path
) -> None:
    """Process start -> first SERVING health answer with the full-size CLIP: by then both graphs
    are loaded, warmed and self-checked (their own health SERVING, the log's load lines written).
    How long that takes is a figure of `make bench` (cold start), not a budget here."""
    models = tmp_path / "models"
    models.mkdir()
    (models / clip_b32_dir.name).symlink_to(clip_b32_dir, target_is_directory=True)  # read-only use
    server = serve_process(models, EMBEDDER_PRELOAD="1")
    server.wait_serving(poll_s=0.01)
    with grpc.insecure_channel(server.address) as channel:
        for service in (clip_b32_dir.name, f"{clip_b32_dir.name}/text"):
            request = health_pb2.HealthCheckRequest(service=service)
            status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING, service  # preloaded
    log = server.log()
    for graph in (clip_b32_dir.name, f"{clip_b32_dir.name} (text)"):
        assert re.search(rf"model {re.escape(graph)} loaded in .*golden self-check passed", log), log
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    assert server.process.returncode == 0


# --- settings: flags over EMBEDDER_* over defaults ------------------------------------------------


def serve_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *flags])


def test_settings_come_from_env() -> None:
    environ = {
        "EMBEDDER_MAX_BATCH_SIZE": "8",
        "EMBEDDER_MODELS_DIR": "/srv/models",
        "EMBEDDER_PRELOAD": "1",
        "EMBEDDER_IDLE_TTL_S": "2.5",
        "EMBEDDER_IMAGE_ROOT": "",
    }
    settings = settings_from(serve_args(), environ)
    assert settings.max_batch_size == 8
    assert settings.models_dir == Path("/srv/models")
    assert settings.preload is True
    assert settings.idle_ttl_s == 2.5
    assert settings.image_root is None  # an empty variable counts as unset
    assert settings.max_loaded == 4  # the default


def test_a_flag_wins_over_env() -> None:
    environ = {"EMBEDDER_MAX_BATCH_SIZE": "8", "EMBEDDER_ADDRESS": "0.0.0.0:1", "EMBEDDER_PRELOAD": "false"}
    args = serve_args("--max-batch-size", "4", "--address", "127.0.0.1:2", "--preload")
    settings = settings_from(args, environ)
    assert (settings.max_batch_size, settings.address, settings.preload) == (4, "127.0.0.1:2", True)


def test_only_the_given_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_MAX_BATCH_SIZE", "9")
    assert settings_from(serve_args(), {}).max_batch_size == Settings().max_batch_size
    assert settings_from(serve_args()).max_batch_size == 9


@pytest.mark.parametrize(
    ("flags", "environ", "field"),
    [
        ((), {"EMBEDDER_MAX_BATCH_SIZE": "lots"}, "max_batch_size"),
        ((), {"EMBEDDER_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
        (("--max-loaded", "0"), {}, "max_loaded"),
        (("--log-format", "xml"), {"EMBEDDER_LOG_FORMAT": "json"}, "log_format"),
        ((), {"EMBEDDER_PRELOAD": "maybe"}, "preload"),
        ((), {"EMBEDDER_TLS_CERT": "/etc/cert.pem"}, "tls_cert and tls_key go together"),
    ],
)
def test_invalid_values_are_validation_errors(
    flags: tuple[str, ...], environ: dict[str, str], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        settings_from(serve_args(*flags), environ)
