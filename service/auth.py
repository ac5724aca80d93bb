"""Bearer-token authentication for the public API (one shared token, from a file).

Health checks, reflection and the worker channel (which has per-job tokens) are exempt.
A missing or wrong token is UNAUTHENTICATED (the caller has no valid credential; PERMISSION
DENIED is for a valid one that does not grant the call). Raised errors reach the client
through ``ErrorInterceptor``, which must come before this one in the server's chain.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

import grpc

from service.errors import Unauthenticated

__all__ = ["BearerTokenInterceptor", "PROTECTED_PREFIX", "token_matches"]

PROTECTED_PREFIX = "/teacherspet.v1.CompressService/"


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison. Both sides are hashed first so that neither the content nor
    the length of the expected token shows in the time taken."""
    return hmac.compare_digest(_digest(given), _digest(expected))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).digest()


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, protected_prefix: str = PROTECTED_PREFIX):
        if not token:
            raise ValueError("an empty token would let every caller in")
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

    def _check(self, metadata: dict[str, Any]) -> Exception | None:
        header = metadata.get("authorization", "")
        scheme, _, given = str(header).partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return Unauthenticated("this server needs a token: pass --token-file (or "
                                   "--token, $TPET_TOKEN, $TPET_TOKEN_FILE)")
        if not token_matches(given.strip(), self.token):
            return Unauthenticated("the token is not valid for this server; check the token "
                                   "you pass against the server's auth_token_file")
        return None
