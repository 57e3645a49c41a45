"""The gRPC servicer: protobuf in, :class:`FaceService` calls (in worker threads), protobuf out.

It translates and nothing more: names are parsed here, every domain error becomes
its status code with the domain's message, and anything unexpected becomes
INTERNAL with a reference to the log line — never a traceback.  Biometric data
(photos, embeddings) is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

import grpc
import numpy as np

from faceid.engine.detect import Box, Detection
from faceid.engine.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FaceIdError,
    FailedPreconditionError,
    InvalidInputError,
    ModelError,
    NotFoundError,
    UnavailableError,
)
from faceid.engine.index import SearchParams
from faceid.engine.limits import check_batch_size, parse_attributes
from faceid.engine.pipeline import Face
from faceid.engine.service import (
    EmbeddingInput,
    EnrolledFace,
    EnrollItem,
    FaceMatches,
    FaceService,
    Match,
    is_unavailable,
)
from faceid.engine.store import Identity
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc
from faceid.server.batching import MicroBatcher
from faceid.server.config import MIB, ServerConfig

log = logging.getLogger("faceid.server")
T = TypeVar("T")
BULK_BATCH = 500  # embedding items enrolled in one transaction
BULK_WAIT = 0.005  # seconds to wait for more items before enrolling those already received
#: Seconds of a call's deadline kept for what follows a COMMIT (the index, the answer): a write
#: that would start later is not started (``CommitGuard``); plus this much per item of a batch.
COMMIT_MARGIN = 0.05
COMMIT_MARGIN_PER_ITEM = 50e-6

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
]
#: Server faults logged once (by kind), not at every call they fail.
_LOGGED: set[str] = set()


MAX_MESSAGE = 1000  # characters: a message travels in HTTP/2 trailers, which gRPC caps at 16 KiB


def shorten(message: str) -> str:
    """A message that echoes a huge field is cut, so that it still reaches the caller."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for an exception."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, shorten(str(exc))
    if is_unavailable(exc):
        return grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry later"
    if isinstance(exc, ModelError):  # the server's installation, not the request
        if "model" not in _LOGGED:
            _LOGGED.add("model")
            log.error(
                "the face model cannot be loaded: calls that need it (photos) get INTERNAL until the "
                "model files are fixed and the server is restarted: %s",
                exc,
                exc_info=exc,
            )
        return grpc.StatusCode.INTERNAL, (
            "the server's face model files are missing or damaged: a fault of the server, not of the "
            "request (calls with ready embeddings still work); tell the server's operator"
        )
    if isinstance(exc, FaceIdError):
        return grpc.StatusCode.INVALID_ARGUMENT, shorten(str(exc))
    ref = uuid.uuid4().hex[:12]
    log.error("internal error %s: %s", ref, type(exc).__name__, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (reference {ref} in the server log)"


class Backoff:
    """The retry delay asked of refused callers, adapted to the overload.

    Calls queue in gRPC core before the server can see them, and a refusal waits in that queue
    too; only callers that stay away keep it short.  Each quarter second with refusals multiplies
    the delay by 1.5 (up to ``max_ms``), each one without halves it (down to ``base_ms``): under
    sustained overload the callers asked to wait grow until the rest fit the server's capacity.
    """

    WINDOW = 0.25  # seconds

    def __init__(self, base_ms: float, max_ms: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_ms, self.max_ms, self.ms = base_ms, max(max_ms, base_ms), base_ms
        self._clock = clock
        self._window = clock()
        self._refusals = 0

    def refused(self) -> float:
        """Count a refusal; the delay (ms) to ask of its caller."""
        now = self._clock()
        windows = int((now - self._window) / self.WINDOW)
        if windows >= 1:
            if self._refusals:
                self.ms = min(self.ms * 1.5, self.max_ms)
                windows -= 1
            self.ms = max(self.ms * 0.5**windows, self.base_ms)
            self._window, self._refusals = now, 0
        self._refusals += 1
        return self.ms


def rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn domain errors into status codes for a unary method."""

    @functools.wraps(method)
    async def wrapper(self: FaceIdServicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        size = request.ByteSize()
        refusal = self.admit(size)
        if refusal:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, self.pushback())
        self.inflight_bytes += size
        self.inflight_calls += 1
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
            raise AssertionError("unreachable") from None  # abort raises
        finally:
            self.inflight_bytes -= size
            self.inflight_calls -= 1

    return wrapper


# ---- names ---------------------------------------------------------------------------------
def gallery_of(name: str, field: str = "name") -> str:
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "galleries" or not parts[1]:
        raise InvalidInputError(f"{field} must be 'galleries/{{gallery}}'; got {name!r}")
    return parts[1]


def identity_of(name: str) -> tuple[str, str]:
    parts = name.split("/", 3)
    if len(parts) != 4 or parts[0] != "galleries" or parts[2] != "identities" or not parts[1] or not parts[3]:
        raise InvalidInputError(f"name must be 'galleries/{{gallery}}/identities/{{identity}}'; got {name!r}")
    return parts[1], unquote(parts[3])


def face_of(name: str) -> tuple[str, int]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "galleries" or parts[2] != "faces" or not parts[3]:
        raise InvalidInputError(f"name must be 'galleries/{{gallery}}/faces/{{face_id}}'; got {name!r}")
    digits = parts[3]
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19 and 0 < int(digits) < 2**63):
        raise InvalidInputError(f"face_id must be a whole number from 1 to 2^63 - 1; got {digits!r}")
    return parts[1], int(digits)


def identity_name(gallery: str, external_id: str) -> str:
    return f"galleries/{gallery}/identities/{quote(external_id, safe='')}"


# ---- translation -----------------------------------------------------------------------------
def box_pb(box: Box | None) -> pb.Box | None:
    return None if box is None else pb.Box(left=box.left, top=box.top, right=box.right, bottom=box.bottom)


def embedding_in(message: pb.Embedding) -> EmbeddingInput:
    return EmbeddingInput(np.asarray(message.values, dtype=np.float32), message.model)


def detected_pb(d: Detection) -> pb.DetectedFace:
    return pb.DetectedFace(
        box=box_pb(d.box), score=d.score, landmarks=[pb.Point(x=float(x), y=float(y)) for x, y in d.landmarks]
    )


def match_pb(gallery: str, m: Match) -> pb.Match:
    return pb.Match(
        identity=identity_name(gallery, m.external_id),
        identity_id=m.external_id,
        display_name=m.display_name,
        attributes_json=json.dumps(m.attributes) if m.attributes else "",
        face_id=m.face_id,
        distance=m.distance,
        similarity=m.similarity,
        is_match=m.is_match,
    )


def identity_pb(gallery: str, i: Identity) -> pb.Identity:
    return pb.Identity(
        name=identity_name(gallery, i.external_id),
        identity_id=i.external_id,
        display_name=i.display_name,
        attributes_json=json.dumps(i.attributes) if i.attributes else "",
        face_ids=list(i.face_ids),
        create_time=i.created_at.isoformat(),
        update_time=i.updated_at.isoformat(),
    )


def enrolled_pb(gallery: str, f: EnrolledFace) -> pb.EnrolledFace:
    return pb.EnrolledFace(
        name=f"galleries/{gallery}/faces/{f.face_id}",
        face_id=f.face_id,
        box=box_pb(f.box),
        detection_score=f.detection_score or 0.0,
        already_enrolled=f.already_enrolled,
    )


@dataclass(frozen=True)
class Malformed:
    """A streamed item whose bytes are not the method's message (see ``server/auth.py``): it
    fails alone, with this message, and the stream goes on."""

    message: str


def error_result(index: int, exc: BaseException) -> pb.BulkEnrollResult:
    """A failed item's result: its status code and message."""
    code, message = status_of(exc)
    return pb.BulkEnrollResult(index=index, error_code=code.value[0], error_message=message)


class CommitGuard:
    """Keeps a call from committing a write once it can no longer be answered as a success.

    :meth:`check` (the service's ``Proceed``) runs in the worker thread under the gallery's lock,
    before the write's transaction starts and again right before its COMMIT, and raises
    :class:`DeadlineExceededError` (the transaction rolls back, nothing is written) once the call
    was cancelled (the caller went away, or gRPC cancelled the handler at the deadline), or when
    less than ``COMMIT_MARGIN`` (+ ``COMMIT_MARGIN_PER_ITEM`` per item) is left before the
    deadline: what follows a COMMIT (the index update, the answer) must fit in that margin.  A
    COMMIT once sent is not stopped; the margin is what keeps its answer inside the deadline.
    """

    def __init__(self, time_remaining: float | None, items: int = 1) -> None:
        margin = COMMIT_MARGIN + COMMIT_MARGIN_PER_ITEM * items
        self.deadline = None if time_remaining is None else time.monotonic() + time_remaining - margin
        self.cancelled = threading.Event()

    @classmethod
    @contextlib.contextmanager
    def of(cls, context: Any, items: int = 1) -> Iterator[CommitGuard]:
        """A guard for the call of ``context`` (its deadline), cancelled when the handler is."""
        guard = cls(context.time_remaining(), items)
        try:
            yield guard
        except asyncio.CancelledError:
            guard.cancelled.set()
            raise

    def check(self) -> None:
        if self.cancelled.is_set():
            raise DeadlineExceededError("the call was cancelled before its enrolment was committed")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceededError(
                "too little of the call's deadline was left to commit the enrolment, so nothing was "
                "written: send it again with a longer deadline (or fewer items)"
            )


@dataclass(frozen=True)
class _StreamEnd:
    """The end of a request stream: cleanly (``error`` None) or with the reader's exception."""

    error: Exception | None


def _runs(requests: list[pb.EnrollRequest]) -> list[list[pb.EnrollRequest]]:
    """Consecutive embedding items of one gallery together; each photo item alone."""
    runs: list[list[pb.EnrollRequest]] = []
    for r in requests:
        embedding = not isinstance(r, Malformed) and r.probe.WhichOneof("kind") == "embedding"
        last = runs[-1] if runs else None
        if (
            last is not None
            and embedding
            and not isinstance(last[0], Malformed)
            and last[0].probe.WhichOneof("kind") == "embedding"
            and last[0].parent == r.parent
        ):
            last.append(r)
        else:
            runs.append([r])
    return runs


class FaceIdServicer(pb_grpc.FaceIdServicer):
    """``faceid.v1.FaceId`` over a :class:`FaceService`."""

    def __init__(self, service: FaceService, config: ServerConfig) -> None:
        self.service = service
        self.config = config
        #: Unary calls being served and their bytes (photos, mostly), bounded by max_concurrent_rpcs and
        #: max_inflight_bytes.  Counted here, on the event loop, not only by gRPC's own limiter.
        self.inflight_calls = 0
        self.inflight_bytes = 0
        self.backoff = Backoff(config.overload_pushback_ms, config.overload_pushback_max_ms)
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="faceid-worker")
        window = config.batch_window_ms / 1000
        self.search_batcher: MicroBatcher[tuple[EmbeddingInput, int], list[Match]] = MicroBatcher(
            self._search_batch, self.executor, window, config.max_batch, config.batch_inflight
        )
        self.embed_batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
            self._embed_batch, self.executor, window, config.max_batch, config.batch_inflight
        )

    def admit(self, size: int) -> str:
        """Why a call of ``size`` bytes must be refused now ("" when it may go ahead): load shedding."""
        if self.inflight_calls >= self.config.max_concurrent_rpcs:
            return (
                f"the server is at its limit of {self.inflight_calls} calls in progress; retry with backoff"
            )
        if self.inflight_bytes and self.inflight_bytes + size > self.config.max_inflight_bytes:
            return (
                f"the server holds {self.inflight_bytes / MIB:.0f} MiB of requests in progress; retry later"
            )
        return ""

    def pushback(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata for a refused call: when to retry (jittered ±50 %)."""
        ms = round(self.backoff.refused() * random.uniform(0.5, 1.5))
        return (("grpc-retry-pushback-ms", str(ms)),)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    # ---- batch functions (worker threads) ---------------------------------------------------------
    def _search_batch(self, key: Hashable, items: list[tuple[EmbeddingInput, int]]) -> list[list[Match]]:
        gallery, threshold, nprobe, rerank = cast(tuple[str, float, int, int], key)
        top = max(k for _, k in items)
        params = SearchParams(nprobe=nprobe or None, rerank_factor=rerank or None)
        results = self.service.identify_embeddings(
            gallery, [e for e, _ in items], top, threshold or None, params
        )
        return [r[:k] for r, (_, k) in zip(results, items, strict=True)]

    def _embed_batch(self, key: Hashable, chips: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.service.pipeline.embedder.embed(np.stack(chips)))

    async def _faces(self, photo: bytes) -> list[Face]:
        """Detect and align in a worker thread; embed in a network batch shared with other calls."""
        pipeline = self.service.pipeline

        def detect() -> tuple[list[Detection], np.ndarray]:
            image = pipeline.decode(photo)
            found = pipeline.detect(image)
            return found, pipeline.align(image, found)

        found, chips = await self._call(detect)
        if not found:
            return []
        embeddings = await self.embed_batcher.submit("embed", list(chips))
        return [Face(d, e) for d, e in zip(found, embeddings, strict=True)]

    # ---- galleries -------------------------------------------------------------------------------
    def _gallery_pb(self, name: str) -> pb.Gallery:
        s = self.service.stats(name)
        return pb.Gallery(
            name=f"galleries/{name}",
            model=f"{s.gallery.model_name}/{s.gallery.model_version}",
            dimension=s.gallery.dim,
            identity_count=s.identities,
            face_count=s.faces,
            index_kind=s.index.kind,
            index_training=s.index.training,
            index_memory_bytes=s.index.memory_bytes,
            index_device=s.index.device,
            index_gpu_memory_bytes=s.index.gpu_memory_bytes,
            create_time=s.gallery.created_at.isoformat(),
        )

    @rpc
    async def CreateGallery(self, request: pb.CreateGalleryRequest, context: Any) -> pb.Gallery:
        gallery = request.gallery_id
        await self._call(self.service.create_gallery, gallery)
        return await self._call(self._gallery_pb, gallery)

    @rpc
    async def GetGallery(self, request: pb.GetGalleryRequest, context: Any) -> pb.Gallery:
        return await self._call(self._gallery_pb, gallery_of(request.name))

    @rpc
    async def ListGalleries(self, request: pb.ListGalleriesRequest, context: Any) -> pb.ListGalleriesResponse:
        names = [g.name for g in self.service.list_galleries()]
        galleries = [await self._call(self._gallery_pb, n) for n in names]
        return pb.ListGalleriesResponse(galleries=galleries)

    @rpc
    async def DeleteGallery(self, request: pb.DeleteGalleryRequest, context: Any) -> pb.DeleteGalleryResponse:
        await self._call(self.service.delete_gallery, gallery_of(request.name))
        return pb.DeleteGalleryResponse()

    # ---- enrolment -------------------------------------------------------------------------------
    async def _enroll(
        self, request: pb.EnrollRequest | Malformed, guard: CommitGuard | None = None
    ) -> list[pb.EnrolledFace]:
        """One item; with a ``guard``, nothing is committed once the call cannot be answered."""
        proceed = guard.check if guard is not None else None
        if isinstance(request, Malformed):
            raise InvalidInputError(request.message)
        gallery = gallery_of(request.parent, "parent")
        attributes = parse_attributes(request.attributes_json)
        name = request.display_name or None
        kind = request.probe.WhichOneof("kind")
        if kind == "photo":
            faces = await self._call(
                self.service.enroll_photo,
                gallery,
                request.identity_id,
                request.probe.photo,
                request.all_faces,
                name,
                attributes,
                proceed,
            )
        elif kind == "embedding":
            faces = await self._call(
                self.service.enroll_embeddings,
                gallery,
                [request.identity_id],
                [embedding_in(request.probe.embedding)],
                name,
                attributes,
                proceed,
            )
        else:
            raise InvalidInputError("probe must hold a photo or an embedding")
        return [enrolled_pb(gallery, f) for f in faces]

    @rpc
    async def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:
        with CommitGuard.of(context) as guard:
            return pb.EnrollResponse(faces=await self._enroll(request, guard))

    async def _enroll_embeddings(
        self, requests: list[pb.EnrollRequest], first: int, guard: CommitGuard | None = None
    ) -> list[pb.BulkEnrollResult]:
        """A run of embedding items of one gallery: every item is checked first, then the good
        ones are enrolled in one transaction; each bad item gets its own error result.  An error
        of the run as a whole (no such gallery, the database down) is every item's result."""
        results: list[pb.BulkEnrollResult | None] = [None] * len(requests)
        items: list[EnrollItem] = []
        positions: list[int] = []
        try:
            gallery = gallery_of(requests[0].parent, "parent")  # the run's items share their parent
        except FaceIdError as exc:
            return [error_result(first + i, exc) for i in range(len(requests))]
        for i, r in enumerate(requests):
            try:
                attributes = parse_attributes(r.attributes_json)
            except FaceIdError as exc:
                results[i] = error_result(first + i, exc)
                continue
            items.append(
                EnrollItem(r.identity_id, embedding_in(r.probe.embedding), r.display_name or None, attributes)
            )
            positions.append(i)
        if items:
            proceed = guard.check if guard is not None else None
            try:
                outcomes = await self._call(self.service.enroll_each, gallery, items, proceed)
            except DeadlineExceededError:
                raise  # the call fails as a whole: nothing of this run was written
            except Exception as exc:
                failed = error_result(0, exc)
                for i in positions:
                    results[i] = pb.BulkEnrollResult(
                        index=first + i, error_code=failed.error_code, error_message=failed.error_message
                    )
            else:
                for i, outcome in zip(positions, outcomes, strict=True):
                    results[i] = (
                        error_result(first + i, outcome)
                        if isinstance(outcome, FaceIdError)
                        else pb.BulkEnrollResult(index=first + i, faces=[enrolled_pb(gallery, outcome)])
                    )
        return [r for r in results if r is not None]

    async def _enroll_runs(
        self, requests: list[pb.EnrollRequest], first: int, guard: CommitGuard | None = None
    ) -> AsyncIterator[list[pb.BulkEnrollResult]]:
        """One result per request, in order, a run at a time: each run of embedding items of one
        gallery is checked item by item and its good items enrolled in one transaction; photos
        (and items without a probe) one by one, each with its own result."""
        index = first
        for run in _runs(requests):
            if not isinstance(run[0], Malformed) and run[0].probe.WhichOneof("kind") == "embedding":
                yield await self._enroll_embeddings(run, index, guard)
            else:
                yield [await self._enroll_result(run[0], index, guard)]
            index += len(run)

    @rpc
    async def EnrollBatch(self, request: pb.EnrollBatchRequest, context: Any) -> pb.EnrollBatchResponse:
        """Items are checked before anything is written; then each run of embedding items of one
        gallery is one transaction, each photo item another.  Nothing is committed once the call
        was cancelled or too little of its deadline is left (``CommitGuard``): a single-gallery
        batch of embeddings is then written whole or not at all."""
        check_batch_size(len(request.items))
        with CommitGuard.of(context, len(request.items)) as guard:
            runs = self._enroll_runs(list(request.items), 0, guard)
            return pb.EnrollBatchResponse(results=[result async for results in runs for result in results])

    async def _enroll_result(
        self, request: pb.EnrollRequest, index: int, guard: CommitGuard | None = None
    ) -> pb.BulkEnrollResult:
        try:
            return pb.BulkEnrollResult(index=index, faces=await self._enroll(request, guard))
        except (asyncio.CancelledError, DeadlineExceededError):
            raise
        except Exception as exc:
            return error_result(index, exc)

    async def BulkEnroll(
        self, request_iterator: AsyncIterator[pb.EnrollRequest], context: Any
    ) -> AsyncIterator[pb.BulkEnrollResult]:
        """Results in request order.  A reader task keeps receiving while batches are enrolled;
        consecutive embedding items for one gallery are enrolled together (what has arrived, up to
        ``BULK_BATCH``, waiting at most ``BULK_WAIT`` seconds for more); photos one by one."""
        queue: asyncio.Queue[pb.EnrollRequest | _StreamEnd] = asyncio.Queue(maxsize=4 * BULK_BATCH)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await queue.put(request)
                await queue.put(_StreamEnd(None))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the stream was aborted: the handler raises it in turn
                await queue.put(_StreamEnd(exc))

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        index = 0
        try:
            end: _StreamEnd | None = None
            while end is None:
                items = [await queue.get()]
                deadline = loop.time() + BULK_WAIT
                while len(items) < BULK_BATCH and not isinstance(items[-1], _StreamEnd):
                    try:
                        items.append(queue.get_nowait())
                    except asyncio.QueueEmpty:
                        if loop.time() >= deadline:
                            break
                        try:
                            items.append(await asyncio.wait_for(queue.get(), deadline - loop.time()))
                        except TimeoutError:
                            break
                if isinstance(items[-1], _StreamEnd):
                    end = items.pop()
                requests = cast(list[pb.EnrollRequest], items)
                async for results in self._enroll_runs(requests, index):
                    for result in results:
                        yield result
                index += len(requests)
            if end.error is not None:
                raise end.error
        finally:
            reader.cancel()

    # ---- identify and verify ---------------------------------------------------------------------
    @rpc
    async def Identify(self, request: pb.IdentifyRequest, context: Any) -> pb.IdentifyResponse:
        gallery = gallery_of(request.parent, "parent")
        top_k = request.top_k or 5
        self.service.check_top_k(top_k)  # here, not in the batch: a bad call must not fail its batch-mates
        threshold = self.service.decision_threshold(request.threshold or None)
        if not -1 <= request.min_similarity <= 1:
            raise InvalidInputError("min_similarity must be between -1 and 1")
        if request.nprobe < 0 or request.rerank_factor < 0:
            raise InvalidInputError("nprobe and rerank_factor must not be negative")
        key = (gallery, threshold, request.nprobe, request.rerank_factor)
        kind = request.probe.WhichOneof("kind")
        results: list[FaceMatches]
        if kind == "embedding":
            [matches] = await self.search_batcher.submit(
                key, [(embedding_in(request.probe.embedding), top_k)]
            )
            results = [FaceMatches(None, None, matches)]
        elif kind == "photo":
            self.service.gallery(gallery)  # NOT_FOUND before the photo is decoded
            faces = await self._faces(request.probe.photo)
            inputs = [(EmbeddingInput(f.embedding), top_k) for f in faces]
            lists = await self.search_batcher.submit(key, inputs) if inputs else []
            results = [FaceMatches(f.box, f.detection.score, m) for f, m in zip(faces, lists, strict=True)]
        else:
            raise InvalidInputError("probe must hold a photo or an embedding")
        return pb.IdentifyResponse(
            threshold=threshold,
            faces=[
                pb.FaceMatches(
                    box=box_pb(r.box),
                    detection_score=r.detection_score or 0.0,
                    matches=[
                        match_pb(gallery, m)
                        for m in r.matches
                        if m.similarity >= request.min_similarity or not request.min_similarity
                    ],
                )
                for r in results
            ],
        )

    def _probe(self, probe: pb.Probe) -> bytes | EmbeddingInput:
        kind = probe.WhichOneof("kind")
        if kind == "photo":
            return bytes(probe.photo)
        if kind == "embedding":
            return embedding_in(probe.embedding)
        raise InvalidInputError("probe must hold a photo or an embedding")

    @rpc
    async def Verify(self, request: pb.VerifyRequest, context: Any) -> pb.VerifyResponse:
        gallery = gallery_of(request.parent, "parent")
        threshold = request.threshold or None
        against = request.WhichOneof("against")
        if against == "identity":
            target = request.identity
            if target.startswith("galleries/"):
                owner, target = identity_of(target)
                if owner != gallery:
                    raise InvalidInputError("identity must belong to the gallery named in parent")
            v = await self._call(
                self.service.verify_identity, gallery, self._probe(request.probe), target, threshold
            )
        elif against == "other":
            v = await self._call(
                self.service.verify_pair,
                gallery,
                self._probe(request.probe),
                self._probe(request.other),
                threshold,
            )
        else:
            raise InvalidInputError("give an identity or a second probe to verify against")
        return pb.VerifyResponse(
            distance=v.distance,
            similarity=v.similarity,
            is_match=v.is_match,
            threshold=v.threshold,
            face_id=v.face_id or 0,
        )

    # ---- identities ------------------------------------------------------------------------------
    @rpc
    async def GetIdentity(self, request: pb.GetIdentityRequest, context: Any) -> pb.Identity:
        gallery, external_id = identity_of(request.name)
        return identity_pb(gallery, await self._call(self.service.get_identity, gallery, external_id))

    @rpc
    async def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: Any
    ) -> pb.ListIdentitiesResponse:
        gallery = gallery_of(request.parent, "parent")
        page, token = await self._call(
            self.service.list_identities, gallery, request.page_size or 100, request.page_token
        )
        return pb.ListIdentitiesResponse(
            identities=[identity_pb(gallery, i) for i in page], next_page_token=token
        )

    @rpc
    async def UpdateIdentity(self, request: pb.UpdateIdentityRequest, context: Any) -> pb.Identity:
        gallery, external_id = identity_of(request.name)
        name = request.display_name if request.HasField("display_name") else None
        attributes = (
            parse_attributes(request.attributes_json) if request.HasField("attributes_json") else None
        )
        if request.HasField("attributes_json") and attributes is None:
            attributes = {}
        updated = await self._call(self.service.update_identity, gallery, external_id, name, attributes)
        return identity_pb(gallery, updated)

    @rpc
    async def DeleteIdentity(
        self, request: pb.DeleteIdentityRequest, context: Any
    ) -> pb.DeleteIdentityResponse:
        gallery, external_id = identity_of(request.name)
        removed = await self._call(self.service.delete_identity, gallery, external_id)
        return pb.DeleteIdentityResponse(face_ids=removed)

    @rpc
    async def DeleteFace(self, request: pb.DeleteFaceRequest, context: Any) -> pb.DeleteFaceResponse:
        gallery, face_id = face_of(request.name)
        await self._call(self.service.delete_face, gallery, face_id)
        return pb.DeleteFaceResponse()

    # ---- utilities -------------------------------------------------------------------------------
    @rpc
    async def Detect(self, request: pb.DetectRequest, context: Any) -> pb.DetectResponse:
        pipeline = self.service.pipeline

        def detect() -> tuple[list[Detection], tuple[int, ...]]:
            image = pipeline.decode(request.photo)
            return pipeline.detect(image), image.shape

        found, shape = await self._call(detect)
        return pb.DetectResponse(faces=[detected_pb(d) for d in found], width=shape[1], height=shape[0])

    @rpc
    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        model = self.service.model.id
        if request.aligned:
            [vector] = await self._call(self.service.pipeline.embed_chips, [request.photo])
            return pb.EmbedResponse(
                faces=[pb.EmbeddedFace(embedding=pb.Embedding(values=vector.tolist(), model=model))]
            )
        faces = await self._faces(request.photo)
        return pb.EmbedResponse(
            faces=[
                pb.EmbeddedFace(
                    face=detected_pb(f.detection),
                    embedding=pb.Embedding(values=f.embedding.tolist(), model=model),
                )
                for f in faces
            ]
        )
