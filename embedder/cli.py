"""`embedder` command line: serve, embed, embed-text, search, verify, models, health.

Every `serve` flag is also an environment variable: --max-batch-size <-> EMBEDDER_MAX_BATCH_SIZE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import ValidationError

from .settings import Settings

ENV_PREFIX = "EMBEDDER_"
DEFAULT_SERVER = os.environ.get(f"{ENV_PREFIX}SERVER", "127.0.0.1:50051")
log = logging.getLogger("embedder")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        help_text = f"{field.description} [env {env}; default {field.default}]"
        if field.annotation is bool:
            parser.add_argument(_flag(name), dest=name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, default=None, metavar=name.upper(), help=help_text)


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Flags over EMBEDDER_* variables over defaults; pydantic converts and validates the strings."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None and env_value != "":
            values[name] = env_value
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
    return Settings.model_validate(values)


def cmd_serve(args: argparse.Namespace) -> int:
    from .logs import configure_logging
    from .server import EmbedderServer
    from .spec import SpecError

    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"embedder serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        server = EmbedderServer(settings)
        server.start()
    except (SpecError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    server.stop()
    return 0


def _client(args: argparse.Namespace, retries: int = 4) -> Any:
    from .client import EmbedderClient

    token = os.environ.get(f"{ENV_PREFIX}TOKEN")
    root_ca = Path(args.tls_ca).read_bytes() if getattr(args, "tls_ca", None) else None
    return EmbedderClient(args.server, timeout=args.timeout, token=token, root_ca=root_ca, retries=retries)


def cmd_embed_text(args: argparse.Namespace) -> int:
    texts = [line.rstrip("\n") for line in sys.stdin] if args.texts == ["-"] else args.texts
    with _client(args) as client:
        result = client.embed_text(args.model, texts, normalize=args.normalize)
    for text, vector in zip(texts, result.embeddings, strict=True):
        print(json.dumps({"text": text, "model": result.model.name, "embedding": vector.tolist()}))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with _client(args) as client:
        models = [MessageToDict(m, preserving_proto_field_name=True) for m in client.list_models()]
    print(json.dumps(models, indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when SERVING (the Docker HEALTHCHECK and scripts rely on this), 1 otherwise."""
    with _client(args, retries=0) as client:  # a probe answers now, within --timeout
        status = client.health(args.model or "")
    print(status)
    return 0 if status == "SERVING" else 1


Command = Callable[[argparse.Namespace], int]


def _with_client(run: Callable[[Any, argparse.Namespace], int]) -> Command:
    """A command that runs `run(client, args)` with a client of the command's flags."""

    def command(args: argparse.Namespace) -> int:
        with _client(args) as client:
            return run(client, args)

    return command


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"host:port [env {ENV_PREFIX}SERVER]")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    parser.add_argument("--tls-ca", help="PEM CA to verify a TLS server (token from EMBEDDER_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedder",
        description="Image and text embeddings (CLIP, DINOv2, SigLIP) over gRPC and HTTP",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (gRPC, and HTTP with OpenAI's /v1/embeddings)")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    from .embed_job import add_embed_flags, run_embed_job
    from .search import add_search_flags, run_search
    from .verify import add_verify_flags, run_verify

    def client_command(name: str, help: str, command: Command) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        _client_flags(sub)
        sub.set_defaults(func=command)
        return sub

    add_embed_flags(
        client_command(
            "embed", "embed image files, folders or globs; print JSON lines", _with_client(run_embed_job)
        )
    )
    embed_text = client_command(
        "embed-text", "embed texts (CLIP's text tower); print JSON lines", cmd_embed_text
    )
    embed_text.add_argument(
        "texts", nargs="+", metavar="TEXT", help="texts to embed; - reads one per line from stdin"
    )
    embed_text.add_argument("--model", required=True, help="model name or alias (one with a text tower)")
    embed_text.add_argument("--normalize", action="store_true", help="L2-normalise each vector")
    add_search_flags(
        client_command(
            "search", "the images of a folder that best match a sentence", _with_client(run_search)
        )
    )
    add_verify_flags(
        client_command(
            "verify", "exit 0 iff the server's vectors match the golden sets", _with_client(run_verify)
        )
    )
    client_command("models", "list the server's models as JSON", cmd_models)
    health = client_command("health", "exit 0 if the server (or --model) is SERVING", cmd_health)
    health.add_argument("--model", help="a model name: its own health")
    return parser


# `embedder embed ... | head`: the reader left. 128 + SIGPIPE is the status a shell reports for a
# tool the signal ended (`yes | head` under `set -o pipefail`), so scripts see what they know.
EXIT_BROKEN_PIPE = 128 + 13


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's final flush of what is still buffered
    does not print a second BrokenPipeError on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except grpc.RpcError as exc:
        print(f"embedder {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
