"""Authentication and authorization: a server interceptor in front of every ``faceid.v1.FaceId`` call.

Each method has a rule (:data:`RULES`): the least role it needs and the galleries the
request touches.  The interceptor reads ``authorization: Bearer <key>`` from the call's
metadata, checks the key in constant time (:class:`faceid.engine.keys.KeyRing`), then
the role, then the galleries: a key of gallery A asking about gallery B gets
PERMISSION_DENIED whether or not B exists, so it learns nothing about B, and
ListGalleries shows it only its own galleries.  A method without a rule is refused
(fail closed).  Health checking and reflection need no key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from faceid.engine.errors import FaceIdError
from faceid.engine.keys import ApiKey, KeyRing, Role
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.server.servicer import face_of, gallery_of, identity_of

log = logging.getLogger("faceid.auth")
SERVICE = "/faceid.v1.FaceId/"

Galleries = Callable[[Any], list[str]]


def _none(request: Any) -> list[str]:
    return []


def _gallery_id(request: Any) -> list[str]:
    return [request.gallery_id]


def _name(request: Any) -> list[str]:
    return [gallery_of(request.name)]


def _parent(request: Any) -> list[str]:
    return [gallery_of(request.parent, "parent")]


def _identity(request: Any) -> list[str]:
    return [identity_of(request.name)[0]]


def _face(request: Any) -> list[str]:
    return [face_of(request.name)[0]]


def _items(request: Any) -> list[str]:
    return sorted({gallery_of(item.parent, "parent") for item in request.items})


@dataclass(frozen=True)
class Rule:
    role: Role
    galleries: Galleries  # the galleries a request touches ([] = none)


RULES: dict[str, Rule] = {
    "CreateGallery": Rule(Role.ADMIN, _gallery_id),
    "DeleteGallery": Rule(Role.ADMIN, _name),
    "GetGallery": Rule(Role.READER, _name),
    "ListGalleries": Rule(Role.READER, _none),  # the answer is filtered to the key's galleries
    "Enroll": Rule(Role.WRITER, _parent),
    "BulkEnroll": Rule(Role.WRITER, _none),  # each streamed item is checked
    "EnrollBatch": Rule(Role.WRITER, _items),  # every item's gallery, before any is enrolled
    "Identify": Rule(Role.READER, _parent),
    "Verify": Rule(Role.READER, _parent),
    "GetIdentity": Rule(Role.READER, _identity),
    "ListIdentities": Rule(Role.READER, _parent),
    "UpdateIdentity": Rule(Role.WRITER, _identity),
    "DeleteIdentity": Rule(Role.WRITER, _identity),
    "DeleteFace": Rule(Role.WRITER, _face),
    "Detect": Rule(Role.READER, _none),
    "Embed": Rule(Role.READER, _none),
}

NO_KEY = (
    "this server needs an API key: send the metadata 'authorization: Bearer faceid_…' "
    "(`faceid keys create` makes one; the first start printed an admin key)"
)
BAD_KEY = "the API key is not valid: unknown, mistyped or revoked"


def bearer(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer …`` header, else None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def out_of_scope(key: ApiKey, galleries: list[str]) -> str | None:
    """The first gallery the key may not reach, else None."""
    return next((g for g in galleries if not key.may_reach(g)), None)


def _refuse(code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover  (makes this an async generator)

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **codec)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **codec)
    return grpc.stream_unary_rpc_method_handler(abort, **codec)


def _denied(key: ApiKey, gallery: str) -> str:
    return f"key {key.key_id} may not use gallery {gallery!r}"


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks the caller's key, role and galleries before a FaceId method runs."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE):
            return handler
        method = details.method[len(SERVICE) :]
        rule = RULES.get(method)
        if rule is None:
            return _refuse(grpc.StatusCode.PERMISSION_DENIED, f"{method} has no access rule", handler)
        token = bearer(details.invocation_metadata)
        if not token:
            return _refuse(grpc.StatusCode.UNAUTHENTICATED, NO_KEY, handler)
        key = self.keys.authenticate(token)
        if key is None:
            log.warning("refused %s: invalid API key", method)
            return _refuse(grpc.StatusCode.UNAUTHENTICATED, BAD_KEY, handler)
        if key.role < rule.role:
            role, needs = key.role.name.lower(), rule.role.name.lower()
            message = f"key {key.key_id} is a {role} key; {method} needs {needs}"
            return _refuse(grpc.StatusCode.PERMISSION_DENIED, message, handler)
        if key.all_galleries:
            return handler
        if method == "ListGalleries":
            return _list_galleries(handler, key)
        if method == "BulkEnroll":
            return _bulk_enroll(handler, key)
        return _scoped(handler, key, rule)


def _scoped(handler: grpc.RpcMethodHandler, key: ApiKey, rule: Rule) -> grpc.RpcMethodHandler:
    """A unary method that first checks the galleries its request names."""
    behavior = handler.unary_unary

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            gallery = out_of_scope(key, rule.galleries(request))
        except FaceIdError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if gallery is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _denied(key, gallery))
        return await behavior(request, context)

    return _unary(checked, handler)


def _unary(behavior: Callable[..., Awaitable[Any]], like: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A unary handler running ``behavior`` with the (de)serializers of ``like``."""
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=like.request_deserializer, response_serializer=like.response_serializer
    )


def _list_galleries(handler: grpc.RpcMethodHandler, key: ApiKey) -> grpc.RpcMethodHandler:
    behavior = handler.unary_unary

    async def filtered(request: Any, context: grpc.aio.ServicerContext) -> pb.ListGalleriesResponse:
        response: pb.ListGalleriesResponse = await behavior(request, context)
        mine = [g for g in response.galleries if key.may_reach(g.name.removeprefix("galleries/"))]
        return pb.ListGalleriesResponse(galleries=mine)

    return _unary(filtered, handler)


def _bulk_enroll(handler: grpc.RpcMethodHandler, key: ApiKey) -> grpc.RpcMethodHandler:
    """Each streamed item's gallery is checked as it arrives; one outside the key's ends the stream."""
    behavior = handler.stream_stream

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def items() -> AsyncIterator[Any]:
            async for request in requests:
                try:
                    gallery = out_of_scope(key, [gallery_of(request.parent, "parent")])
                except FaceIdError:
                    gallery = None  # a malformed name fails that item alone, in the servicer
                if gallery is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, _denied(key, gallery))
                yield request

        async for result in behavior(items(), context):
            yield result

    return grpc.stream_stream_rpc_method_handler(
        checked,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
