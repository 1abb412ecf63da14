"""Request ids: the caller's `x-request-id` (or a generated one) comes back in the trailing
metadata of every answer, errors included, and names the call in the access log."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from embedder.client import build_request
from embedder.spec import SPEC_FILE, load_spec
from export.images import ParityImage

if TYPE_CHECKING:
    from tests.support.inprocess import Served

KEY = "x-request-id"


def echoed(call: grpc.Call) -> str | None:
    return dict(call.trailing_metadata() or ()).get(KEY)


@pytest.fixture
def request_bytes(parity_set: list[ParityImage]) -> bytes:
    return parity_set[0].data


def test_given_id_is_echoed_and_logged(
    tiny_server: Served, tiny_clip_dir: Path, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    model = load_spec(tiny_clip_dir / SPEC_FILE).name
    with caplog.at_level(logging.INFO, logger="embedder.access"):
        response, call = tiny_server.stub.Embed.with_call(
            build_request(model, [request_bytes]), metadata=((KEY, "pipeline-clip-42"),), timeout=60.0
        )
    assert len(response.embeddings) == 1
    assert echoed(call) == "pipeline-clip-42"
    assert any(
        "id=pipeline-clip-42" in r.getMessage() and "status=OK" in r.getMessage() for r in caplog.records
    )


def test_error_answers_carry_the_id_too(tiny_server: Served, request_bytes: bytes) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        tiny_server.stub.Embed(
            build_request("no-such-model", [request_bytes]), metadata=((KEY, "lost-1"),), timeout=60.0
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert echoed(caught.value) == "lost-1"


def test_generated_ids_are_distinct(tiny_server: Served, tiny_clip_dir: Path, request_bytes: bytes) -> None:
    model = load_spec(tiny_clip_dir / SPEC_FILE).name
    ids = []
    for _ in range(3):
        _, call = tiny_server.stub.Embed.with_call(build_request(model, [request_bytes]), timeout=60.0)
        ids.append(echoed(call))
    assert all(i is not None and re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids
    assert len(set(ids)) == 3
