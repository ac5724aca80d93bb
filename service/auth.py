"""Bearer-token authentication for the public API (one shared token, from a file).

Health checks, reflection and the worker channel (which has per-job tokens) are exempt.
Raised errors reach the client through ``ErrorInterceptor``, which must come first in the
server's interceptor chain.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable

import grpc

from service.errors import PermissionDenied, Unauthenticated

__all__ = ["BearerTokenInterceptor", "PROTECTED_PREFIX"]

PROTECTED_PREFIX = "/teacherspet.v1.CompressService/"


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, protected_prefix: str = PROTECTED_PREFIX):
        self.token = token
        self.prefix = protected_prefix

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        error = self._check(dict(handler_call_details.invocation_metadata or ()))
        if error is None:
            return handler

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            raise error

        if handler.unary_stream:
            return handler._replace(unary_stream=deny)
        return handler._replace(unary_unary=deny)

    def _check(self, metadata: dict[str, str]) -> Exception | None:
        header = metadata.get("authorization", "")
        if not header.startswith("Bearer "):
            return Unauthenticated("this server needs a token: pass --token or set TPET_TOKEN")
        if not hmac.compare_digest(header.removeprefix("Bearer ").encode(), self.token.encode()):
            return PermissionDenied("the token is not valid for this server")
        return None
