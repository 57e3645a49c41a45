"""What the server's interceptors share (the gate, server/auth.py; the call metrics,
server/metrics.py): each takes the method handler gRPC found for a call and gives back one of the
same kind that serves the call otherwise, and gRPC has one handler constructor per kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

#: (request streaming, response streaming) → gRPC's constructor of that kind of handler.
_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function that serves ``handler``'s calls, whatever its kind."""
    serve: Callable[..., Any] = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return serve


def rebuilt(
    handler: grpc.RpcMethodHandler, serve: Callable[..., Any], *, raw_requests: bool = False
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind and serializers whose calls ``serve`` serves.
    ``raw_requests``: served as a stream of undecoded request messages whatever the method's kind
    (the gate reads and parses each request itself)."""
    make = _MAKERS[raw_requests or handler.request_streaming, handler.response_streaming]
    return make(
        serve,
        request_deserializer=None if raw_requests else handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class HandlerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """An interceptor that serves a call with another handler (:meth:`intercept`, given the one
    gRPC found; a method the server does not have stays unanswered here, for gRPC to refuse)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        return None if handler is None else self.intercept(handler, details)

    def intercept(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        raise NotImplementedError
