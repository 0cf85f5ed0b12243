"""Server interceptors: bearer-token authentication.

Errors are mapped to status codes by the method handlers themselves (see
``handlers``), because an aio interceptor sees a streaming handler only as a
function to call.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from editstore.server.logs import RateLimitedLog

logger = logging.getLogger(__name__)
# A client with a wrong token may retry without pause, so rejections are
# logged at most once a second, with the count of the others.
_rejections = RateLimitedLog(logger, 1.0, "rejected calls")

# Load balancers and orchestrators probe health without credentials.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _rejecting_handler(
    handler: grpc.RpcMethodHandler, message: str
) -> grpc.RpcMethodHandler:
    async def reject(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def reject_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject_stream, **options)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject_stream, **options)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject, **options)
    return grpc.unary_unary_rpc_method_handler(reject, **options)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Reject calls without ``authorization: Bearer <token>`` of a known token.

    Tokens are compared in constant time and never logged.
    """

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(token.encode() for token in tokens)

    def _allowed(self, metadata: tuple[Any, ...] | None) -> bool:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer":
                return False
            presented = token.strip().encode()
            return any(hmac.compare_digest(presented, known) for known in self._tokens)
        return False

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if self._allowed(handler_call_details.invocation_metadata):
            return handler
        _rejections.info("rejected %s: missing or unknown bearer token", method)
        return _rejecting_handler(
            handler,
            "missing or unknown bearer token: send metadata "
            "'authorization: Bearer <token>' with a token the daemon was given",
        )
