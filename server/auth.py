"""The gate: a server interceptor in front of every ``faceid.v1.FaceId`` call.

It admits a call in three steps, each before the next costs the server anything:

1. **From the headers alone**: the key (``authorization: Bearer <key>``, checked in constant time
   by :class:`faceid.engine.service.access.KeyRing`) and the method's role (:data:`RULES`).  A refused call
   ends at once, before its request message is read: an independent audit held 128 keyless
   unary calls that sent headers and never their message, and while gRPC read (waiting for)
   those messages every other call, health checks included, got RESOURCE_EXHAUSTED for 300 s.
   Every handler the gate returns therefore reads the request stream itself (a unary method is
   served as a request-streaming one that takes the first message), so gRPC never waits for a
   message on the gate's behalf.
2. **The request message**, read within ``request_arrival_seconds`` (10 s; a call whose message
   does not arrive in time ends with DEADLINE_EXCEEDED) and parsed here: bytes that are not the
   method's protobuf get INVALID_ARGUMENT with what was wrong, never UNKNOWN and a traceback.
   Streams: each BulkEnroll item must arrive within ``stream_idle_seconds`` of the one before;
   a malformed item fails alone (its result says why) and the stream goes on; the key is checked
   again for each item, so a key revoked while a stream is open stops it within the key refresh
   period, as it does unary calls.
3. **The galleries** the request names: a key of gallery A asking about gallery B gets
   PERMISSION_DENIED whether or not B exists, so it learns nothing about B, and ListGalleries
   shows it only its own galleries.  A method without a rule is refused (fail closed).

gRPC's own concurrent-call limit (``maximum_concurrent_rpcs``) is not used: it counts calls from
their headers on, health checks included, so whoever can open calls can fill it.  Work is bounded
instead where it costs: the servicer sheds engine calls beyond ``max_concurrent_rpcs`` and
``max_inflight_bytes`` (with a retry hint); a call waiting for its message holds no engine slot
and ends after ``request_arrival_seconds``; each connection carries at most
``max_streams_per_connection`` calls (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS: more wait in the
client), which bounds the memory held calls cost.  Measured with the audit's attack (1,000 calls
that never send their message, keyless or keyed): a light caller's identify p99 stays under
50 ms and health checks answer SERVING throughout (tests/test_gate.py).  Health checking and reflection
need no key and pass the gate untouched.  Log lines about refused calls are rate-limited
(:class:`QuietLog`): garbage from an unauthenticated client cannot fill a disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from faceid.engine.domain.access import ApiKey, Role
from faceid.engine.domain.errors import FaceIdError
from faceid.engine.service.access import KeyRing
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.server.convert import Malformed
from faceid.server.handlers import HandlerInterceptor, rebuilt
from faceid.server.names import cluster_of, clustering_of, face_of, gallery_of, identity_of

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


def _clustering(request: Any) -> list[str]:
    return [clustering_of(request.name)[0]]


def _cluster(request: Any) -> list[str]:
    return [cluster_of(request.name)[0]]


def _clustering_parent(request: Any) -> list[str]:
    return [clustering_of(request.parent, "parent")[0]]


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
    "IdentifyBatch": Rule(Role.READER, _parent),
    "SearchFaces": Rule(Role.READER, _parent),
    "ClusterFaces": Rule(Role.READER, _parent),
    # A run writes only its own results, but it takes the machine's cores for minutes: a writer's.
    "StartClustering": Rule(Role.WRITER, _parent),
    "GetClustering": Rule(Role.READER, _clustering),
    "ListClusterings": Rule(Role.READER, _parent),
    "ListClusters": Rule(Role.READER, _clustering_parent),
    "DeleteClustering": Rule(Role.WRITER, _clustering),
    "PromoteCluster": Rule(Role.WRITER, _cluster),
    "MergeCluster": Rule(Role.WRITER, _cluster),
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
REQUEST = "the request message"


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


@dataclass(frozen=True)
class GateLimits:
    """How long the gate waits for what a caller owes it (seconds)."""

    #: A call's request message must arrive within this long of its headers.
    request_arrival: float = 10.0
    #: Each item of a request stream within this long of the one before.
    stream_idle: float = 60.0


class QuietLog:
    """At most one line per ``period`` seconds for each kind of event, with the count left out.

    An unauthenticated client can send thousands of bad calls a second; each refusal logged in
    full would be the attacker's way to fill the disk.
    """

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self.logger, self.period = logger, period
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.period) < self.period:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        self._last[kind] = now
        more = f" (and {skipped} more like it in the last {self.period:.0f} s)" if skipped else ""
        self.logger.warning(message + more, *args)


def _refuse(code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler that ends the call at once, without reading its request."""

    async def abort(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover  (makes this an async generator)

    return rebuilt(handler, abort_stream if handler.response_streaming else abort, raw_requests=True)


def _denied(key: ApiKey, gallery: str) -> str:
    return f"key {key.key_id} may not use gallery {gallery!r}"


def _parse(parse: Callable[[bytes], Any], raw: bytes, method: str) -> Any:
    """The request message from its bytes, or :class:`Malformed` saying why it is not one."""
    try:
        return parse(raw)
    except Exception as exc:  # protobuf's DecodeError, and whatever a broken message raises
        what = str(exc) or type(exc).__name__
        return Malformed(f"the request is not a valid {method} message ({what}); send the .proto's message")


class AuthInterceptor(HandlerInterceptor):
    """The gate (module docstring): key and role from the headers, then the request read with a
    time limit and parsed, then its galleries.  ``keys`` None: no authentication (``--no-auth``).
    ``starting``: while the server opens its galleries, why it cannot serve yet ("" once it can);
    every call meanwhile ends at once with UNAVAILABLE and that message, before any key check
    (it tells nothing about the data)."""

    def __init__(
        self,
        keys: KeyRing | None,
        limits: GateLimits | None = None,
        starting: Callable[[], str] | None = None,
    ) -> None:
        self.keys = keys
        self.limits = limits or GateLimits()
        self.quiet = QuietLog(log)
        self.starting = starting

    def intercept(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if not details.method.startswith(SERVICE):
            return handler
        method = details.method[len(SERVICE) :]
        if self.starting is not None and (not_yet := self.starting()):
            return _refuse(grpc.StatusCode.UNAVAILABLE, not_yet, handler)
        rule = RULES.get(method)
        if rule is None:
            return _refuse(grpc.StatusCode.PERMISSION_DENIED, f"{method} has no access rule", handler)
        token, key = "", None
        if self.keys is not None:
            token = bearer(details.invocation_metadata) or ""
            if not token:
                self.quiet.warning("no-key", "refused %s: no API key", method)
                return _refuse(grpc.StatusCode.UNAUTHENTICATED, NO_KEY, handler)
            key = self.keys.authenticate(token)
            if key is None:
                self.quiet.warning("bad-key", "refused %s: invalid API key", method)
                return _refuse(grpc.StatusCode.UNAUTHENTICATED, BAD_KEY, handler)
            if key.role < rule.role:
                role, needs = key.role.name.lower(), rule.role.name.lower()
                message = f"key {key.key_id} is a {role} key; {method} needs {needs}"
                return _refuse(grpc.StatusCode.PERMISSION_DENIED, message, handler)
        if handler.request_streaming:
            return self._stream(handler, method, token, key)
        return self._unary(handler, method, rule, key)

    async def _arrival(self, requests: AsyncIterator[Any], wait: float, context: Any, what: str) -> Any:
        """The next raw message of ``requests`` (``what``: the request message, within ``wait`` of
        the call's start, or the next item, within ``wait`` of the one before); None at the end."""
        try:
            return await asyncio.wait_for(anext(requests), wait)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            self.quiet.warning("slow", "ended a call: %s did not arrive within %.0f s", what, wait)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{what} did not arrive within {wait:g} s "
                f"{'of the call' if what == REQUEST else 'of the item before'}; send it at once",
            )

    def _unary(
        self, handler: grpc.RpcMethodHandler, method: str, rule: Rule, key: ApiKey | None
    ) -> grpc.RpcMethodHandler:
        """A unary method, served as request-streaming so that the gate reads (and times) the request."""
        behavior = handler.unary_unary
        parse = handler.request_deserializer
        limits = self.limits

        async def gated(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            raw = await self._arrival(aiter(requests), limits.request_arrival, context, REQUEST)
            if raw is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method} needs a request message")
            request = _parse(parse, raw, method)
            if isinstance(request, Malformed):
                self.quiet.warning("malformed", "refused %s: malformed request", method)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            if key is not None and not key.all_galleries:
                try:
                    gallery = out_of_scope(key, rule.galleries(request))
                except FaceIdError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                if gallery is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, _denied(key, gallery))
            response = await behavior(request, context)
            if method == "ListGalleries" and key is not None and not key.all_galleries:
                mine = [g for g in response.galleries if key.may_reach(g.name.removeprefix("galleries/"))]
                response = pb.ListGalleriesResponse(galleries=mine)
            return response

        return rebuilt(handler, gated, raw_requests=True)

    def _stream(
        self, handler: grpc.RpcMethodHandler, method: str, token: str, key: ApiKey | None
    ) -> grpc.RpcMethodHandler:
        """A request stream (BulkEnroll): each item read within ``stream_idle`` seconds, parsed (a
        malformed one reaches the servicer as :class:`Malformed`, to fail alone), its key checked
        again (revocation reaches open streams) and its gallery checked (one outside the key's
        scope ends the stream)."""
        behavior = handler.stream_stream
        parse = handler.request_deserializer
        limits, keys = self.limits, self.keys

        async def checked(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async def items() -> AsyncIterator[Any]:
                stream = aiter(requests)
                while (
                    raw := await self._arrival(stream, limits.stream_idle, context, "the next item")
                ) is not None:
                    if keys is not None and keys.authenticate(token) is None:
                        await context.abort(
                            grpc.StatusCode.UNAUTHENTICATED, f"{BAD_KEY}; items after this one were not read"
                        )
                    request = _parse(parse, raw, "EnrollRequest")
                    if key is not None and not key.all_galleries and not isinstance(request, Malformed):
                        try:
                            gallery = out_of_scope(key, [gallery_of(request.parent, "parent")])
                        except FaceIdError:
                            gallery = None  # a malformed name fails that item alone, in the servicer
                        if gallery is not None:
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _denied(key, gallery))
                    yield request

            async for result in behavior(items(), context):
                yield result

        return rebuilt(handler, checked, raw_requests=True)
