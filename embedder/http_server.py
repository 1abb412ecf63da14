"""Hosting the HTTP front end: uvicorn on the server's event loop, with the connection limits the
ASGI app cannot enforce itself.

uvicorn (httptools) bounds neither the size of a request's headers nor the time they take to
arrive, and arms its keep-alive timer only after a first response: a client could hold a
connection forever by sending nothing, or a header byte at a time. `BoundedProtocol` adds both
bounds; the body's size and arrival time are bounded by the app (http_api.py), connections at
once by uvicorn's `limit_concurrency`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0


def parse_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` -> (host, port); raises ValueError naming the address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"http_address {address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind(address: str) -> socket.socket:
    """The listening socket, bound here so that a taken port fails `start` with an OSError, as the
    gRPC port does, and port 0 yields the port the kernel chose."""
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise OSError(str(exc)) from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a response's headers and body (two writes) wait out the client's delayed ACK: +40 ms each.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # "[::]" serves IPv4 too, as gRPC's does
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind HTTP {address}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class HeadersTooLarge(Exception):
    pass


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound on each request's headers."""

    header_timeout_s = 10.0
    max_header_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed, like an idle keep-alive one

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "request headers not received in time")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            raise HeadersTooLarge  # httptools stops parsing; uvicorn then answers 400 (see below)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, f"request headers exceed http_max_header_bytes={self.max_header_bytes}")
        else:
            super().send_400_response(msg)

    def _refuse(self, status: int, message: str) -> None:
        """A short plain-text answer, then the connection closes (no request was read)."""
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = message.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()


def protocol_for(settings: Settings) -> type[BoundedProtocol]:
    """`BoundedProtocol` with this server's limits (uvicorn builds protocols from a class)."""
    return type(
        "BoundedProtocol",
        (BoundedProtocol,),
        {
            "header_timeout_s": settings.http_header_timeout_s,
            "max_header_bytes": settings.http_max_header_bytes,
        },
    )


class HttpHost:
    """uvicorn serving `app` on an already-bound socket, started and stopped on the running loop."""

    def __init__(self, app: Any, settings: Settings, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        s = settings
        mtls = s.tls_client_ca is not None
        config = uvicorn.Config(
            app,
            http=protocol_for(s),
            lifespan="off",
            log_config=None,
            access_log=False,  # calls.py writes the access log, the same line for both front ends
            server_header=False,
            timeout_keep_alive=int(max(1, round(s.http_keep_alive_s))),
            limit_concurrency=s.http_max_connections,
            timeout_graceful_shutdown=int(s.shutdown_grace_s),
            ssl_certfile=str(s.tls_cert) if s.tls_cert else None,
            ssl_keyfile=str(s.tls_key) if s.tls_key else None,
            ssl_ca_certs=str(s.tls_client_ca) if mtls else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if mtls else ssl.CERT_NONE,
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Returns once uvicorn accepts connections; raises OSError if it cannot start."""
        self._task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        async with asyncio.timeout(START_TIMEOUT_S):
            while not self.server.started:
                if self._task.done():
                    failure = self._task.exception() if not self._task.cancelled() else None
                    raise OSError(f"HTTP front end did not start: {failure!r}")
                await asyncio.sleep(0.01)

    async def stop(self, grace: float) -> None:
        """Closes the listener and idle connections, lets requests in progress answer within
        `grace` (their connections close after the answer), then ends."""
        if self._task is None:
            return
        self.server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]
        self.server.should_exit = True
        done, _ = await asyncio.wait({self._task}, timeout=grace + 2.0)  # main loop ticks every 0.1 s
        if not done:
            log.warning("HTTP front end still busy %.1f s past the grace: cancelling it", grace)
            self.server.force_exit = True
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await self._task
