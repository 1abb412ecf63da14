"""Transport security, bearer tokens, path inputs and model files, each against a real server.

- TLS and mutual TLS with a PKI generated in the test (certs.py);
- bearer tokens from the setting and from a file; health stays open; no token in any log line;
- `Image.path` confined to `image_root`: traversal, absolute paths, symlink escapes, FIFOs,
  directories, missing files all refused with a reason that does not reveal the server's layout;
- model files are data: strict JSON schema, no pickle, no eval, no custom-op libraries.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.client import EmbedderClient
from embedder.server import EmbedderServer
from embedder.settings import Settings
from embedder.spec import SPEC_FILE, SpecError, load_spec
from embedder.v1 import embedder_pb2 as pb
from tests.hardening.certs import Pki, make_pki
from tests.support import REPO
from tests.support.commands import run_module
from tests.support.images import encode, picture
from tests.support.inprocess import Served
from tests.support.models import CLIP
from tests.support.processes import ServerProcess, clean_env

Serve = Callable[..., Served]
EMBEDDER_SOURCE = REPO / "embedder"
TOKENS = ("tok-alpha-4f9c2e7b1d", "tok-beta-8a3d6c0e5f")
FILE_TOKENS = ("tok-gamma-2b7e9f4a1c", "tok-delta-6d1f3b8e0a")
WRONG_TOKEN = "tok-wrong-9e8d7c6b5a"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def pem_files(tmp_path: Path, pki: Pki) -> dict[str, Path]:
    files = {"ca": pki.ca.cert, "server_cert": pki.server.cert, "server_key": pki.server.key}
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    return {name: tmp_path / f"{name}.pem" for name in files}


def client(served: Served, **config: object) -> EmbedderClient:
    return EmbedderClient(served.address, retries=0, timeout=10.0, **config)


def embeds(served: Served, image: bytes, **config: object) -> bool:
    """True if an Embed call with this client configuration succeeds; False if the connection
    (TLS handshake) is refused. Any other failure is raised."""
    with client(served, **config) as c:
        try:
            return c.embed(CLIP, [image]).embeddings.shape == (1, 16)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return False
            raise


# --- TLS ---------------------------------------------------------------------------------------


def test_tls_with_the_right_root_works_and_plaintext_or_wrong_root_fails(
    serve: Serve, pki: Pki, pem_files: dict[str, Path], good_jpeg: bytes
) -> None:
    served = serve(tls_cert=pem_files["server_cert"], tls_key=pem_files["server_key"])
    assert embeds(served, good_jpeg, root_ca=pki.ca.cert)
    assert not embeds(served, good_jpeg)  # plaintext to a TLS port
    assert not embeds(served, good_jpeg, root_ca=pki.rogue_ca.cert)  # server cert from an unknown CA
    with client(served, root_ca=pki.ca.cert) as c:
        assert c.health() == "SERVING"


def test_mutual_tls_accepts_only_clients_certified_by_the_ca(
    serve: Serve, pki: Pki, pem_files: dict[str, Path], good_jpeg: bytes
) -> None:
    served = serve(
        tls_cert=pem_files["server_cert"], tls_key=pem_files["server_key"], tls_client_ca=pem_files["ca"]
    )
    assert embeds(
        served, good_jpeg, root_ca=pki.ca.cert, client_cert=pki.client.cert, client_key=pki.client.key
    )
    assert not embeds(served, good_jpeg, root_ca=pki.ca.cert)  # no client certificate
    assert not embeds(
        served,
        good_jpeg,
        root_ca=pki.ca.cert,
        client_cert=pki.rogue_client.cert,
        client_key=pki.rogue_client.key,
    )
    assert not embeds(served, good_jpeg)  # plaintext
    # The server is unharmed by the refused handshakes.
    assert embeds(
        served, good_jpeg, root_ca=pki.ca.cert, client_cert=pki.client.cert, client_key=pki.client.key
    )


def test_tls_settings_come_in_pairs() -> None:
    with pytest.raises(ValueError, match="go together"):
        Settings(tls_cert=Path("cert.pem"))
    with pytest.raises(ValueError, match="needs tls_cert"):
        Settings(tls_client_ca=Path("ca.pem"))


# --- bearer tokens -----------------------------------------------------------------------------


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text(f"{FILE_TOKENS[0]}\n\n   {FILE_TOKENS[1]}   \n", encoding="utf-8")
    return path


def assert_tokens_enforced(served: Served, accepted: tuple[str, ...], image: bytes) -> None:
    for token in (None, WRONG_TOKEN, accepted[0][:-1], accepted[0] + "x", f"{accepted[0]},{accepted[-1]}"):
        with client(served, token=token) as c, pytest.raises(grpc.RpcError) as caught:
            c.embed(CLIP, [image])
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
        assert "token" in caught.value.details() and (token is None or token not in caught.value.details())
    for token in accepted:
        with client(served, token=token) as c:
            assert c.embed(CLIP, [image]).embeddings.shape == (1, 16)
            assert len(c.list_models()) == 2
    with client(served) as c:
        assert c.health() == "SERVING"  # probes need no token
        assert c.health(CLIP) in ("SERVING", "NOT_SERVING")
    # Scheme is case-insensitive; any other scheme is refused.
    with pytest.raises(grpc.RpcError) as caught:
        served.stub.Embed(
            pb.EmbedRequest(model=CLIP, images=[pb.Image(data=image)]),
            timeout=10,
            metadata=[("authorization", f"Basic {accepted[0]}")],
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    served.stub.Embed(
        pb.EmbedRequest(model=CLIP, images=[pb.Image(data=image)]),
        timeout=10,
        metadata=[("authorization", f"bearer {accepted[0]}")],
    )


def test_tokens_from_the_setting(serve: Serve, good_jpeg: bytes) -> None:
    assert_tokens_enforced(serve(auth_tokens=",".join(TOKENS)), TOKENS, good_jpeg)


def test_tokens_from_a_file(serve: Serve, tmp_path: Path, good_jpeg: bytes) -> None:
    assert_tokens_enforced(serve(auth_tokens_file=token_file(tmp_path)), FILE_TOKENS, good_jpeg)


def test_tokens_from_both_are_all_accepted(serve: Serve, tmp_path: Path, good_jpeg: bytes) -> None:
    served = serve(auth_tokens=TOKENS[0], auth_tokens_file=token_file(tmp_path))
    assert_tokens_enforced(served, (TOKENS[0], *FILE_TOKENS), good_jpeg)


def test_no_token_in_the_log_in_process(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture, good_jpeg: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    served = serve(auth_tokens=TOKENS[0], auth_tokens_file=token_file(tmp_path))
    assert_tokens_enforced(served, (TOKENS[0], *FILE_TOKENS), good_jpeg)
    text = caplog.text + "".join(repr(vars(record)) for record in caplog.records)  # extras included
    assert "Embed model=" in text  # the access log was captured, so the check means something
    for secret in (*TOKENS, *FILE_TOKENS, WRONG_TOKEN):
        assert secret not in text
    assert TOKENS[0] not in repr(served.server.settings) and TOKENS[0] not in str(served.server.settings)


def test_no_token_in_the_log_of_a_serve_process(
    spawn: Callable[..., ServerProcess], tmp_path: Path, good_jpeg: bytes
) -> None:
    server = spawn(
        "--auth-tokens",
        TOKENS[0],
        "--auth-tokens-file",
        str(token_file(tmp_path)),
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
    )
    with EmbedderClient(server.address, retries=0, timeout=10.0, token=FILE_TOKENS[1]) as c:
        c.embed(CLIP, [good_jpeg])
    for token in (WRONG_TOKEN, None):
        with (
            EmbedderClient(server.address, retries=0, timeout=10.0, token=token) as c,
            pytest.raises(grpc.RpcError),
        ):
            c.embed(CLIP, [good_jpeg])
    server.stop()
    log = server.log()
    assert '"status": "OK"' in log, log[-2000:]  # the access log is there (refused calls never reach it)
    for secret in (*TOKENS, *FILE_TOKENS, WRONG_TOKEN):
        assert secret not in log


def test_settings_error_does_not_print_the_token(tiny_models: Path, tmp_path: Path) -> None:
    flags = ["--models-dir", tiny_models, "--auth-tokens", TOKENS[0], "--tls-cert", tmp_path / "cert.pem"]
    # no --tls-key: invalid
    done = run_module("embedder", "serve", *flags, env=clean_env(), timeout=60)
    assert done.returncode == 2 and "tls_cert and tls_key go together" in done.stderr, done.stderr
    assert TOKENS[0] not in done.stdout + done.stderr


# --- path inputs -------------------------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """root/{photo.jpg, sub/other.png, alias.jpg -> photo.jpg, escape.jpg -> ../outside/secret.jpg,
    outside_dir -> ../outside, pipe.jpg (a FIFO), loop_a.jpg <-> loop_b.jpg, big.jpg (over 1 MB)}."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "photo.jpg").write_bytes(encode(picture(64, 48, 1), "JPEG"))
    (root / "sub" / "other.png").write_bytes(encode(picture(40, 30, 2), "PNG"))
    (outside / "secret.jpg").write_bytes(encode(picture(64, 48, 3), "JPEG"))
    (root / "alias.jpg").symlink_to("photo.jpg")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "outside_dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "pipe.jpg")
    (root / "loop_a.jpg").symlink_to("loop_b.jpg")
    (root / "loop_b.jpg").symlink_to("loop_a.jpg")
    (root / "big.jpg").write_bytes(encode(picture(64, 48, 4), "JPEG") + bytes(1_100_000))
    return root


def path_answer(served: Served, path: str) -> tuple[str, str]:
    try:
        served.stub.Embed(pb.EmbedRequest(model=CLIP, images=[pb.Image(path=path)]), timeout=10.0)
    except grpc.RpcError as exc:
        return exc.code().name, str(exc.details())
    return "OK", ""


REFUSED_PATHS = {
    "../outside/secret.jpg": "without '..'",
    "sub/../../outside/secret.jpg": "without '..'",
    "sub/../photo.jpg": "without '..'",  # even when it would stay inside: no '..' at all
    "{root}/photo.jpg": "must be relative",
    "/etc/passwd": "must be relative",
    "escape.jpg": "escapes the image root",
    "outside_dir/secret.jpg": "escapes the image root",
    "missing.jpg": "not found",
    "loop_a.jpg": "not found",
    "sub": "not a regular file",
    ".": "not a regular file",
    "pipe.jpg": "not a regular file",  # reading a FIFO would block a worker for ever
    "": "must be relative",
    "photo.jpg\x00.png": "must be relative",
    "big.jpg": "exceeds max_image_bytes=1000000",
}


def test_path_inputs_confined_to_the_image_root(serve: Serve, image_root: Path) -> None:
    served = serve(image_root=image_root, max_image_bytes=1_000_000)
    for path, data in (
        ("photo.jpg", "photo.jpg"),
        ("./photo.jpg", "photo.jpg"),
        ("sub/other.png", "sub/other.png"),
        ("alias.jpg", "photo.jpg"),
        ("sub//other.png", "sub/other.png"),
    ):
        response = served.stub.Embed(pb.EmbedRequest(model=CLIP, images=[pb.Image(path=path)]), timeout=10.0)
        got = np.array(response.embeddings[0].values, np.float32)
        np.testing.assert_array_equal(
            got, served.vectors((image_root / data).read_bytes(), model=CLIP)[0], err_msg=path
        )
    answers = {}
    for template, reason in REFUSED_PATHS.items():
        path = template.format(root=image_root)
        code, details = answers[template] = path_answer(served, path)
        assert code == "INVALID_ARGUMENT" and details.startswith("image 0: ") and reason in details, (
            path,
            details,
        )
        assert str(image_root.parent) not in details.replace(path, ""), (
            f"{details!r} reveals the server's layout"
        )
    print("\n" + "\n".join(f"  path {p!r}: {code} {details}" for p, (code, details) in answers.items()))
    # After every refusal (the FIFO included, which would block a worker that read it) a path
    # input is still served, and still as the bytes of the file it names.
    after = served.stub.Embed(pb.EmbedRequest(model=CLIP, images=[pb.Image(path="photo.jpg")]), timeout=10.0)
    np.testing.assert_array_equal(
        np.array(after.embeddings[0].values, np.float32),
        served.vectors((image_root / "photo.jpg").read_bytes(), model=CLIP)[0],
    )


def test_path_inputs_are_off_without_an_image_root(serve: Serve, image_root: Path) -> None:
    served = serve()
    for path in ("photo.jpg", str(image_root / "photo.jpg"), "/etc/passwd"):
        code, details = path_answer(served, path)
        assert code == "INVALID_ARGUMENT" and "path inputs are disabled" in details, details


def test_unreadable_path_input_is_invalid_argument_not_internal(serve: Serve) -> None:
    """/proc/<pid>/mem passes every check (relative, inside the root, a regular file of size 0)
    and then fails to read with EIO: the same path as a file that is unreadable to the server's
    user (chmod 000 under a non-root server) or deleted between the checks and the read."""
    served = serve(image_root=Path("/proc/self"))
    code, details = path_answer(served, "mem")
    assert code == "INVALID_ARGUMENT" and details.startswith("image 0: "), (code, details)


# --- model files -------------------------------------------------------------------------------


def spec_with(tmp_path: Path, source: Path, **changes: object) -> Path:
    models = tmp_path / "models"
    target = models / source.name
    shutil.copytree(source, target)
    spec = json.loads((target / SPEC_FILE).read_text())
    spec.update(changes)
    (target / SPEC_FILE).write_text(json.dumps(spec))
    return models


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"__class__": {"py/object": "os.system", "args": ["id"]}}, "__class__"),
        ({"__reduce__": "posix.system"}, "__reduce__"),
        ({"onnx_file": "../../../../etc/passwd"}, "onnx_file"),
        ({"onnx_file": "/abs/model.onnx"}, "onnx_file"),
        ({"embedding_dim": "16"}, "embedding_dim"),  # strict: no coercion of strings
        ({"preprocessing": {"processor_class": "x", "resample": "eval(1)"}}, "preprocessing"),
    ],
)
def test_model_json_is_strict_data(
    tmp_path: Path, tiny_clip_dir: Path, changes: dict[str, object], field: str
) -> None:
    models = spec_with(tmp_path, tiny_clip_dir, **changes)
    with pytest.raises(SpecError, match=field):
        load_spec(models / tiny_clip_dir.name / SPEC_FILE)
    with pytest.raises(SpecError, match=SPEC_FILE):  # the server refuses to start, naming the file
        EmbedderServer(Settings(address="127.0.0.1:0", models_dir=models))


FORBIDDEN_IMPORTS = {
    "pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shelve",
    "torch",
    "yaml",
    "transformers",
    "export",
}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "register_custom_ops_library", "load_library"}


def python_files() -> list[Path]:
    return sorted(
        p for p in EMBEDDER_SOURCE.rglob("*.py") if "v1" not in p.relative_to(EMBEDDER_SOURCE).parts
    )


def test_embedder_has_no_code_execution_path_from_data() -> None:
    """By AST, not by grep: imports of pickle-style loaders, eval/exec and friends, ORT custom-op
    libraries, and `np.load(..., allow_pickle=True)` appear nowhere in `embedder/`."""
    problems = []
    files = python_files()
    assert len(files) > 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [
                    f"{path.name}:{node.lineno} imports {n}"
                    for n in names
                    if n.split(".")[0] in FORBIDDEN_IMPORTS
                ]
            elif isinstance(node, ast.Call):
                func = node.func
                name = (
                    func.id
                    if isinstance(func, ast.Name)
                    else func.attr
                    if isinstance(func, ast.Attribute)
                    else ""
                )
                # re.compile builds a regular expression, not code: the one attribute call allowed.
                is_regex = isinstance(func, ast.Attribute) and ast.unparse(func) == "re.compile"
                if name in FORBIDDEN_CALLS and not is_regex:
                    problems.append(f"{path.name}:{node.lineno} calls {name}")
                if any(k.arg == "allow_pickle" for k in node.keywords):
                    problems.append(f"{path.name}:{node.lineno} passes allow_pickle")
    assert not problems


def test_model_specs_are_read_as_json_only() -> None:
    source = (EMBEDDER_SOURCE / "spec.py").read_text(encoding="utf-8")
    assert "model_validate_json" in source
    for loader in ("yaml", "pickle", "literal_eval", "toml"):
        assert loader not in source
