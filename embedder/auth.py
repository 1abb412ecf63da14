"""Optional bearer-token auth from call metadata (`authorization: Bearer <token>`).

Tokens are compared in constant time against every configured token and never logged. Health
checks and reflection stay open so probes and tooling work without a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


async def _deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


_DENY: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(_deny)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: frozenset[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _valid(self, presented: str) -> bool:
        candidate = presented.encode()
        matched = False
        for token in self._tokens:  # no early exit: time does not depend on which token matched
            matched |= hmac.compare_digest(candidate, token)
        return matched

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if details.method.startswith(OPEN_METHODS):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and presented and self._valid(presented.strip()):
            return await continuation(details)
        return _DENY
