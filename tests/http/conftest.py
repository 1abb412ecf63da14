"""The HTTP front end of a real server: `serve(...)` of tests/conftest.py (an in-process
`EmbedderServer` over the tiny exports, gRPC and HTTP on ephemeral ports), spoken to over real
sockets: with the official `openai` SDK, and with a plain HTTP/1.1 client where a test needs the
raw status, headers and body (or a misbehaving connection)."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.support.inprocess import Served, serving

Serve = Callable[..., Served]
TIMEOUT_S = 60.0


def data_uri(data: bytes, subtype: str = "png") -> str:
    return f"data:image/{subtype};base64,{base64.b64encode(data).decode()}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        error = self.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return str(error["message"])


def http_port(served: Served) -> int:
    port = served.server.http_port
    assert port is not None, "the server has no HTTP front end"
    return port


def request(
    served: Served,
    method: str,
    path: str,
    body: bytes | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> Answer:
    """One HTTP/1.1 request on a fresh connection; a mapping body is sent as JSON."""
    payload = json.dumps(body).encode() if isinstance(body, Mapping) else body
    connection = http.client.HTTPConnection("127.0.0.1", http_port(served), timeout=timeout)
    try:
        sent = {"content-type": "application/json", **(headers or {})}
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def embeddings(served: Served, body: bytes | Mapping[str, Any], **headers: str) -> Answer:
    return request(
        served, "POST", "/v1/embeddings", body, {k.replace("_", "-"): v for k, v in headers.items()}
    )


def openai_client(served: Served, api_key: str = "unused", **options: Any) -> OpenAI:
    """The official SDK on the server, without retries: every status reaches the test as sent."""
    return OpenAI(
        base_url=f"http://127.0.0.1:{http_port(served)}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=TIMEOUT_S,
        **options,
    )


@pytest.fixture(scope="module")
def http_server(tiny_models: Path) -> Iterator[Served]:
    """One server (both tiny models, HTTP on a free port) for a module's read-only tests."""
    with serving(tiny_models, http_address="127.0.0.1:0") as served:
        yield served
