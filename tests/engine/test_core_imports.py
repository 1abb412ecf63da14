"""The core is transport-free: every module of `embedder` but the front ends and the client side
imports and works in an interpreter where grpc and the generated stubs cannot be imported."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import embedder

PACKAGE = Path(embedder.__file__).parent
# The gRPC front end (servicer, its auth interceptor, the server lifecycle that hosts it) and the
# client side (client, CLI and the jobs the CLI runs over a client).
GRPC_SIDE = {
    "auth",
    "cli",
    "client",
    "grpc_api",
    "server",
    "wire",
    "embed_job",
    "search",
    "verify",
    "__main__",
}
TRANSPORTS = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "fastapi", "starlette", "uvicorn")


def core_modules() -> list[str]:
    names = sorted(p.stem for p in PACKAGE.glob("*.py"))
    return [n for n in names if n not in GRPC_SIDE and n != "__init__" and not n.startswith("http")]


def test_core_imports_with_no_transport_installed() -> None:
    modules = core_modules()
    assert {"calls", "engine", "batcher", "sessions", "errors", "spec", "text"} <= set(modules)
    blocked = [*TRANSPORTS, "embedder.v1"]
    script = textwrap.dedent(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # `import name` now raises ImportError
        import importlib
        for module in {modules!r}:
            importlib.import_module("embedder." + module)
        from embedder.errors import Kind, ModelNotFound
        from embedder.calls import request_id
        assert ModelNotFound("x").kind is Kind.NOT_FOUND and request_id(None)
        loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("grpc", "fastapi", "uvicorn"))
        assert not loaded, loaded
        print("core ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "core ok" in done.stdout, done.stderr


def test_no_core_module_names_a_transport() -> None:
    """Also by reading the sources: no import of a transport, even inside a function."""
    offenders = []
    for name in core_modules():
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [("." * node.level) + (node.module or "")]
            else:
                continue
            for target in targets:
                if target.startswith(TRANSPORTS) or target.lstrip(".").startswith(("v1", "grpc_api", "http")):
                    offenders.append(f"{name}: {target}")
    assert not offenders, offenders
