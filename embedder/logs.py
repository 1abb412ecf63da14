"""Log setup: plain text for people, one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO

# Attributes every LogRecord has; anything else passed via `extra=` is structured context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def capture_native_stderr() -> IO[str]:
    """Route file descriptor 2 through the log: C libraries (libtiff warns about hostile TIFFs
    there) write to it directly, which would break a one-JSON-object-per-line stream.
    Returns a stream on the original stderr for the log handler itself."""
    original = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    native = logging.getLogger("embedder.native")

    def pump() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                if line.strip():
                    native.warning(line.rstrip())

    threading.Thread(target=pump, name="native-stderr", daemon=True).start()
    return original


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    if fmt == "json":
        handler = logging.StreamHandler(capture_native_stderr())
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
