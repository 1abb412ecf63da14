"""The sync and the asyncio client open their channels the same way (embedder.client.open_channel):
both reach a mutual-TLS server with the CA and a client certificate, and both are refused without
the certificate or over plaintext."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest

from embedder.client import AsyncEmbedderClient, EmbedderClient
from tests.hardening.certs import Pki, make_pki
from tests.support.images import encode, picture
from tests.support.models import CLIP

if TYPE_CHECKING:
    from tests.support.inprocess import Served

IMAGE = encode(picture(48, 32, seed=3), "PNG")


def sync_embed(address: str, **config: Any) -> np.ndarray:
    with EmbedderClient(address, retries=0, timeout=10.0, **config) as client:
        return client.embed(CLIP, [IMAGE]).embeddings


def async_embed(address: str, **config: Any) -> np.ndarray:
    async def call() -> np.ndarray:
        async with AsyncEmbedderClient(address, retries=0, timeout=10.0, **config) as client:
            return (await client.embed(CLIP, [IMAGE])).embeddings

    return asyncio.run(call())


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def mtls_server(serve: Callable[..., Served], pki: Pki, tmp_path: Path) -> Served:
    pems = {"ca": pki.ca.cert, "cert": pki.server.cert, "key": pki.server.key}
    for name, data in pems.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    return serve(
        tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem", tls_client_ca=tmp_path / "ca.pem"
    )


@pytest.mark.parametrize("embed", [sync_embed, async_embed], ids=["sync", "asyncio"])
def test_both_clients_speak_mutual_tls_and_only_with_a_certificate(
    embed: Callable[..., np.ndarray], mtls_server: Served, tiny_server: Served, pki: Pki
) -> None:
    certified = {"root_ca": pki.ca.cert, "client_cert": pki.client.cert, "client_key": pki.client.key}
    vectors = embed(mtls_server.address, **certified)
    np.testing.assert_array_equal(vectors, tiny_server.embed(CLIP, [IMAGE]))  # a plaintext server's
    for refused in ({"root_ca": pki.ca.cert}, {}):  # no client certificate; plaintext
        with pytest.raises(grpc.RpcError) as caught:
            embed(mtls_server.address, **refused)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
