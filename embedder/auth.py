"""Optional bearer-token auth from call metadata (`authorization: Bearer <token>`).

Tokens are compared in constant time against every configured token and never logged. Health
checks and reflection stay open so probes and tooling work without a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: frozenset[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _valid(self, presented: str) -> bool:
        candidate = presented.encode()
        matched = False
        for token in self._tokens:  # no early exit: time does not depend on which token matched
            matched |= hmac.compare_digest(candidate, token)
        return matched

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:  # fmt: skip
        if details.method.startswith(OPEN_METHODS):
            return continuation(details)
        metadata = dict(details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and presented and self._valid(presented.strip()):
            return continuation(details)
        return grpc.unary_unary_rpc_method_handler(_deny)
