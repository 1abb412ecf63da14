"""The HTTP front end's connections: one engine with gRPC (shared batches), TLS and mutual TLS with
the gRPC certificate, a client that goes away has its queued work dropped, drain on stop and
SIGTERM, and the bounds on slow bodies, slow or huge headers and idle connections."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embedder.client import build_request
from tests.hardening.certs import Pki, make_pki
from tests.http.conftest import Answer, Serve, data_uri, embeddings, http_port
from tests.support.images import encode, photo_jpeg, picture
from tests.support.inprocess import Served
from tests.support.models import CLIP
from tests.support.polling import wait_until
from tests.support.processes import ServerProcess

PNG = encode(picture(40, 30, 5), "PNG")


def raw(served: Served, data: bytes, wait_s: float = 10.0) -> tuple[bytes, float]:
    """Sends `data` and reads until the server closes: its answer and how long that took."""
    with socket.create_connection(("127.0.0.1", http_port(served)), timeout=wait_s) as sock:
        started = time.monotonic()
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer, time.monotonic() - started


# -- one engine ----------------------------------------------------------------------------------


def test_both_front_ends_share_the_batches(serve: Serve) -> None:
    """Eight gRPC and eight HTTP one-image requests at once, batches of up to sixteen that wait
    for company: a batch of more than eight images holds requests of both front ends."""
    served = serve(http_address="127.0.0.1:0", max_batch_size=16, max_batch_delay_ms=2000)
    images = [photo_jpeg(160, 120, seed) for seed in range(16)]
    served.vectors(images[0], model=CLIP)  # loaded and warm

    def mixed_batch() -> float:
        over_eight = served.metric("embedder_batch_size_count", model=CLIP) - served.metric(
            "embedder_batch_size_bucket", model=CLIP, le="8.0"
        )
        return over_eight

    answers: list[object] = []
    for _round in range(3):
        start = threading.Barrier(16)

        def grpc_call(i: int, start: threading.Barrier = start) -> None:
            start.wait()
            answers.append(served.vectors(images[i], model=CLIP))

        def http_call(i: int, start: threading.Barrier = start) -> None:
            start.wait()
            answers.append(
                embeddings(served, {"model": CLIP, "input": [data_uri(images[i])], "normalize": False})
            )

        threads = [threading.Thread(target=grpc_call, args=(i,)) for i in range(8)]
        threads += [threading.Thread(target=http_call, args=(i,)) for i in range(8, 16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if mixed_batch() > 0:
            break
    assert mixed_batch() > 0, "no batch held more than one front end's requests"
    for front in ("grpc", "http"):
        assert served.metric("embedder_requests_total", model=CLIP, frontend=front, code="OK") >= 8
    assert all(isinstance(a, np.ndarray) or (isinstance(a, Answer) and a.status == 200) for a in answers)


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _write(tmp_path: Path, **pems: bytes) -> dict[str, Path]:
    for name, data in pems.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    return {name: tmp_path / f"{name}.pem" for name in pems}


def _https(served: Served, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", http_port(served), context=context, timeout=10)
    try:
        body = json.dumps({"model": CLIP, "input": "a cat"})
        connection.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_tls_uses_the_servers_certificate(serve: Serve, pki: Pki, tmp_path: Path) -> None:
    files = _write(
        tmp_path, cert=pki.server.cert, key=pki.server.key, ca=pki.ca.cert, rogue=pki.rogue_ca.cert
    )
    served = serve(http_address="127.0.0.1:0", tls_cert=files["cert"], tls_key=files["key"])
    assert _https(served, ssl.create_default_context(cafile=files["ca"])) == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        _https(served, ssl.create_default_context(cafile=files["rogue"]))
    answer, _ = raw(served, b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
    assert not answer.startswith(b"HTTP/1.1 200"), "plaintext HTTP answered on a TLS port"


def test_mutual_tls_requires_a_client_certificate(serve: Serve, pki: Pki, tmp_path: Path) -> None:
    files = _write(
        tmp_path,
        cert=pki.server.cert,
        key=pki.server.key,
        ca=pki.ca.cert,
        client_cert=pki.client.cert,
        client_key=pki.client.key,
        rogue_cert=pki.rogue_client.cert,
        rogue_key=pki.rogue_client.key,
    )
    served = serve(
        http_address="127.0.0.1:0", tls_cert=files["cert"], tls_key=files["key"], tls_client_ca=files["ca"]
    )
    context = ssl.create_default_context(cafile=files["ca"])
    context.load_cert_chain(files["client_cert"], files["client_key"])
    assert _https(served, context) == 200
    for cert, key in ((None, None), (files["rogue_cert"], files["rogue_key"])):
        context = ssl.create_default_context(cafile=files["ca"])
        if cert is not None:
            context.load_cert_chain(cert, key)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _https(served, context)


# -- a client that goes away ---------------------------------------------------------------------


def test_disconnected_client_has_its_queued_work_dropped(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", max_batch_size=1, max_batch_delay_ms=0, max_queue_images=256)
    small = [data_uri(encode(picture(32, 24, seed), "JPEG")) for seed in range(250)]
    embeddings(served, {"model": CLIP, "input": small[:1]})
    ran_before = served.metric("embedder_batch_size_sum", model=CLIP)
    body = json.dumps({"model": CLIP, "input": small}).encode()
    sock = socket.create_connection(("127.0.0.1", http_port(served)), timeout=30)
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    depth = served.server.engine.queue_depths
    assert wait_until(lambda: depth().get((CLIP, "image"), 0) > 0, 60.0, step=0.001), "never queued"
    sock.close()
    assert wait_until(lambda: depth()[(CLIP, "image")] == 0, 10.0)
    ran = served.metric("embedder_batch_size_sum", model=CLIP) - ran_before
    assert ran < len(small), "every image ran: the disconnect freed nothing"
    assert wait_until(
        lambda: served.metric("embedder_requests_total", frontend="http", code="CANCELLED") == 1, 5.0
    )
    assert embeddings(served, {"model": CLIP, "input": small}).status == 200  # the slots are free


# -- drain ---------------------------------------------------------------------------------------


def test_stop_lets_requests_in_progress_answer_then_refuses(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", max_batch_size=1)
    body = {"model": CLIP, "input": [data_uri(photo_jpeg(800, 600, seed)) for seed in range(24)]}
    answers: list[Answer] = []
    call = threading.Thread(target=lambda: answers.append(embeddings(served, body)))
    call.start()
    depth = served.server.engine.queue_depths
    assert wait_until(lambda: depth().get((CLIP, "image"), 0) > 0, 60.0, step=0.001)
    stopping = threading.Thread(target=served.server.stop, args=(30.0,))
    stopping.start()
    call.join(60)
    stopping.join(60)
    assert not stopping.is_alive()
    assert [a.status for a in answers] == [200] and len(answers[0].json()["data"]) == 24
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", http_port(served)), timeout=5)


def test_sigterm_drains_http_and_exits_zero(tmp_path: Path, tiny_models: Path) -> None:
    """SIGTERM while an HTTP request is queued: it is answered 200, then the process exits 0."""
    server = ServerProcess(tiny_models, tmp_path / "server.log", "--max-batch-size", "1", metrics=True)
    port = server.http_port  # --http-address 127.0.0.1:<a free port>
    try:
        server.wait_serving()
        images = [data_uri(photo_jpeg(800, 600, seed)) for seed in range(32)]
        body = json.dumps({"model": CLIP, "input": images}).encode()
        answers: list[tuple[int, int]] = []

        def post() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, len(json.loads(response.read())["data"])))

        call = threading.Thread(target=post)
        call.start()
        assert wait_until(lambda: server.metric("embedder_queue_depth", model=CLIP) > 0, 60.0), "never queued"
        server.sigterm()
        call.join(120)
        assert server.process.wait(60) == 0, server.log()
        assert answers == [(200, 32)], server.log()
        assert f"HTTP on 127.0.0.1:{port}" in server.log()
    finally:
        server.stop()


# -- bounds on connections -----------------------------------------------------------------------


def test_slow_body_is_408(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", http_body_timeout_s=0.5)
    answer, took = raw(served, b'POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"mo')
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"http_body_timeout_s=0.5" in answer and 0.4 < took < 5


def test_silent_or_slow_headers_are_cut_off(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", http_header_timeout_s=0.5)
    silent, took = raw(served, b"")
    assert silent.startswith(b"HTTP/1.1 408") and 0.4 < took < 5, silent[:200]
    # A header byte every 0.1 s: the connection is busy, the headers never end.
    with socket.create_connection(("127.0.0.1", http_port(served)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health/live HTTP/1.1\r\nx-slow: ")
        closed = False
        while time.monotonic() - started < 5 and not closed:
            time.sleep(0.1)
            try:
                sock.sendall(b"a")
            except OSError:
                closed = True
        assert closed or sock.recv(100).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 3


def test_huge_headers_are_431(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", http_max_header_bytes=4096)
    answer, _ = raw(served, b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 10_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and b"http_max_header_bytes=4096" in answer, answer[:200]
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(1000))
    answer, _ = raw(served, b"GET /health/live HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    fine, _ = raw(served, b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert fine.startswith(b"HTTP/1.1 200")


def test_idle_keep_alive_connection_is_closed(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", http_keep_alive_s=1.0)
    with socket.create_connection(("127.0.0.1", http_port(served)), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"live"}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert 0.5 < time.monotonic() - started < 5


def test_connections_past_the_limit_are_refused_503(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", http_max_connections=4, http_header_timeout_s=30)
    idle = [socket.create_connection(("127.0.0.1", http_port(served)), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.2)
        answer, _ = raw(served, b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(
        lambda: raw(served, b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")[
            0
        ].startswith(b"HTTP/1.1 200"),
        5.0,
        step=0.1,
    )
    assert served.vectors(PNG, model=CLIP).shape == (1, 16)  # gRPC is not affected


# -- the address ---------------------------------------------------------------------------------


def test_http_off_and_port_zero_rule(serve: Serve, tiny_models: Path) -> None:
    off = serve(http_address="off")
    assert off.server.http_port is None
    # A throwaway server (gRPC on port 0) with the HTTP address left unset takes a free port.
    default = serve()
    assert default.server.http_port not in (None, 8000)
    assert embeddings(default, {"model": CLIP, "input": "a cat"}).status == 200
    taken = serve(http_address="127.0.0.1:0")
    with pytest.raises(OSError, match="cannot bind HTTP"):
        serve(http_address=f"127.0.0.1:{http_port(taken)}")
    assert build_request(CLIP, [PNG])  # the module's gRPC helpers stay importable


def test_accepted_connections_send_without_delay(serve: Serve) -> None:
    """TCP_NODELAY on every accepted connection: without it a response's two writes (headers,
    body) wait out the client's delayed ACK, +40 ms a request (docs/http.md, design choices)."""
    served = serve(http_address="127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", http_port(served)), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        host = served.server._http
        assert host is not None
        connections = list(host.server.server_state.connections)
        assert connections
        for connection in connections:
            accepted = connection.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
