"""The gRPC servicer of ``faceid.v1.FaceId``: each method parses its request
(:mod:`~faceid.server.names`, :mod:`~faceid.server.convert`), awaits the
:class:`~faceid.engine.service.Engine`, and converts the answer; :func:`~faceid.server.admission.rpc`
sheds load and turns errors into status codes (:mod:`~faceid.server.status`).  No engine work runs
here: the engine owns the worker threads, the batching and the photo stages.

BulkEnroll is the one method with more to it, all of it about the stream: a reader task keeps
receiving while items are enrolled, and consecutive embedding items for one gallery go to the
engine together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from faceid.engine.domain.errors import DeadlineExceededError, FaceIdError, InvalidInputError
from faceid.engine.domain.limits import check_batch_size, parse_attributes
from faceid.engine.domain.records import NewIdentity
from faceid.engine.domain.results import EnrollItem
from faceid.engine.domain.search import SearchParams
from faceid.engine.service import CommitGuard, Engine
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc
from faceid.server.admission import Admission, Refused, rpc
from faceid.server.config import ServerConfig
from faceid.server.convert import (
    Malformed,
    cluster_action_pb,
    clustering_pb,
    clustering_run_pb,
    detected_pb,
    embedded_pb,
    embedding_in,
    enrolled_pb,
    error_result,
    face_matches_pb,
    gallery_cluster_pb,
    gallery_pb,
    identify_batch_pb,
    identity_pb,
    probe_in,
    probe_or_error,
)
from faceid.server.names import cluster_of, clustering_of, face_of, gallery_of, identity_of


def _search_params(
    request: pb.IdentifyRequest | pb.IdentifyBatchRequest | pb.SearchFacesRequest,
) -> SearchParams:
    """The search knobs of a request (0: the index's defaults)."""
    return SearchParams(nprobe=request.nprobe or None, rerank_factor=request.rerank_factor or None)


BULK_BATCH = 500  # embedding items enrolled in one transaction
BULK_WAIT = 0.005  # seconds to wait for more items before enrolling those already received


@dataclass(frozen=True)
class _StreamEnd:
    """The end of a request stream: cleanly (``error`` None) or with the reader's exception."""

    error: Exception | None


def _is_embedding(r: pb.EnrollRequest | Malformed) -> bool:
    return not isinstance(r, Malformed) and r.probe.WhichOneof("kind") == "embedding"


def _runs(requests: list[pb.EnrollRequest | Malformed]) -> list[list[pb.EnrollRequest | Malformed]]:
    """Consecutive embedding items of one gallery together; each photo item alone."""
    runs: list[list[pb.EnrollRequest | Malformed]] = []
    for r in requests:
        last = runs[-1] if runs else None
        if (
            last is not None
            and _is_embedding(r)
            and _is_embedding(last[0])
            and cast(pb.EnrollRequest, last[0]).parent == cast(pb.EnrollRequest, r).parent
        ):
            last.append(r)
        else:
            runs.append([r])
    return runs


class FaceIdServicer(pb_grpc.FaceIdServicer):
    """``faceid.v1.FaceId`` over an :class:`Engine`."""

    def __init__(self, engine: Engine, config: ServerConfig, refused: Refused | None = None) -> None:
        """``refused``: told of each call the admission sheds (the server's metrics)."""
        self.engine = engine
        self.config = config
        self.admission = Admission(config, refused)

    # ---- galleries -------------------------------------------------------------------------------
    @rpc
    async def CreateGallery(self, request: pb.CreateGalleryRequest, context: Any) -> pb.Gallery:
        return gallery_pb(await self.engine.create_gallery(request.gallery_id))

    @rpc
    async def GetGallery(self, request: pb.GetGalleryRequest, context: Any) -> pb.Gallery:
        return gallery_pb(await self.engine.gallery(gallery_of(request.name)))

    @rpc
    async def ListGalleries(self, request: pb.ListGalleriesRequest, context: Any) -> pb.ListGalleriesResponse:
        return pb.ListGalleriesResponse(galleries=[gallery_pb(s) for s in await self.engine.list_galleries()])

    @rpc
    async def DeleteGallery(self, request: pb.DeleteGalleryRequest, context: Any) -> pb.DeleteGalleryResponse:
        await self.engine.delete_gallery(gallery_of(request.name))
        return pb.DeleteGalleryResponse()

    # ---- enrolment -------------------------------------------------------------------------------
    async def _enroll(
        self, request: pb.EnrollRequest | Malformed, guard: CommitGuard | None = None
    ) -> list[pb.EnrolledFace]:
        """One item; with a ``guard``, nothing is committed once the call cannot be answered."""
        if isinstance(request, Malformed):
            raise InvalidInputError(request.message)
        gallery = gallery_of(request.parent, "parent")
        faces = await self.engine.enroll(
            gallery,
            request.identity_id,
            probe_in(request.probe),
            request.all_faces,
            request.display_name or None,
            parse_attributes(request.attributes_json),
            guard.check if guard is not None else None,
        )
        return [enrolled_pb(gallery, f) for f in faces]

    @rpc
    async def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:
        with CommitGuard.of(context.time_remaining()) as guard:
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
            try:
                outcomes = await self.engine.enroll_each(
                    gallery, items, guard.check if guard is not None else None
                )
            except DeadlineExceededError:
                raise  # the call fails as a whole: nothing of this run was written
            except Exception as exc:
                for i in positions:
                    results[i] = error_result(first + i, exc)
            else:
                for i, outcome in zip(positions, outcomes, strict=True):
                    results[i] = (
                        error_result(first + i, outcome)
                        if isinstance(outcome, FaceIdError)
                        else pb.BulkEnrollResult(index=first + i, faces=[enrolled_pb(gallery, outcome)])
                    )
        return [r for r in results if r is not None]

    async def _enroll_runs(
        self, requests: list[pb.EnrollRequest | Malformed], first: int, guard: CommitGuard | None = None
    ) -> AsyncIterator[list[pb.BulkEnrollResult]]:
        """One result per request, in order, a run at a time: each run of embedding items of one
        gallery is checked item by item and its good items enrolled in one transaction; photos
        (and items without a probe) one by one, each with its own result."""
        index = first
        for run in _runs(requests):
            if _is_embedding(run[0]):
                yield await self._enroll_embeddings(cast(list[pb.EnrollRequest], run), index, guard)
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
        with CommitGuard.of(context.time_remaining(), len(request.items)) as guard:
            runs = self._enroll_runs(list(request.items), 0, guard)
            return pb.EnrollBatchResponse(results=[result async for results in runs for result in results])

    async def _enroll_result(
        self, request: pb.EnrollRequest | Malformed, index: int, guard: CommitGuard | None = None
    ) -> pb.BulkEnrollResult:
        try:
            return pb.BulkEnrollResult(index=index, faces=await self._enroll(request, guard))
        except (asyncio.CancelledError, DeadlineExceededError):
            raise
        except Exception as exc:
            return error_result(index, exc)

    async def BulkEnroll(
        self, request_iterator: AsyncIterator[pb.EnrollRequest | Malformed], context: Any
    ) -> AsyncIterator[pb.BulkEnrollResult]:
        """Results in request order.  A reader task keeps receiving while batches are enrolled;
        consecutive embedding items for one gallery are enrolled together (what has arrived, up to
        ``BULK_BATCH``, waiting at most ``BULK_WAIT`` seconds for more); photos one by one."""
        queue: asyncio.Queue[pb.EnrollRequest | Malformed | _StreamEnd] = asyncio.Queue(
            maxsize=4 * BULK_BATCH
        )

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
                last = items[-1]
                if isinstance(last, _StreamEnd):
                    end = last
                    items.pop()
                requests = cast(list[pb.EnrollRequest | Malformed], items)
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
        answer = await self.engine.identify(
            gallery,
            probe_in(request.probe),
            request.top_k or 5,
            request.threshold or None,
            request.min_similarity,
            _search_params(request),
        )
        return pb.IdentifyResponse(
            threshold=answer.threshold, faces=[face_matches_pb(gallery, r) for r in answer.faces]
        )

    @rpc
    async def IdentifyBatch(self, request: pb.IdentifyBatchRequest, context: Any) -> pb.IdentifyBatchResponse:
        gallery = gallery_of(request.parent, "parent")
        threshold, results = await self.engine.identify_batch(
            gallery,
            [probe_or_error(p) for p in request.probes],
            request.top_k or 5,
            request.threshold or None,
            request.min_similarity,
            _search_params(request),
        )
        return identify_batch_pb(gallery, threshold, results)

    @rpc
    async def SearchFaces(self, request: pb.SearchFacesRequest, context: Any) -> pb.IdentifyBatchResponse:
        gallery = gallery_of(request.parent, "parent")
        threshold, results = await self.engine.search_faces(
            gallery,
            list(request.face_ids),
            request.top_k or 5,
            request.threshold or None,
            request.min_similarity,
            _search_params(request),
        )
        return identify_batch_pb(gallery, threshold, results)

    @rpc
    async def ClusterFaces(self, request: pb.ClusterFacesRequest, context: Any) -> pb.ClusterFacesResponse:
        clustering = await self.engine.cluster_faces(
            gallery_of(request.parent, "parent"),
            [probe_or_error(p) for p in request.probes],
            request.strict_distance or None,
            request.loose_distance or None,
        )
        return clustering_pb(clustering)

    @rpc
    async def StartClustering(self, request: pb.StartClusteringRequest, context: Any) -> pb.Clustering:
        gallery = gallery_of(request.parent, "parent")
        base = None
        if request.update_of:
            of_gallery, base = clustering_of(request.update_of, "update_of")
            if of_gallery != gallery:
                raise InvalidInputError(
                    f"update_of must be a clustering of gallery {gallery!r}; got {request.update_of!r}"
                )
        run = await self.engine.start_clustering(
            gallery,
            request.strict_distance or None,
            request.loose_distance or None,
            base,
            request.identity_prefix,
        )
        return clustering_run_pb(gallery, run)

    @rpc
    async def GetClustering(self, request: pb.GetClusteringRequest, context: Any) -> pb.Clustering:
        gallery, run_id = clustering_of(request.name)
        return clustering_run_pb(gallery, await self.engine.clustering(gallery, run_id))

    @rpc
    async def ListClusterings(
        self, request: pb.ListClusteringsRequest, context: Any
    ) -> pb.ListClusteringsResponse:
        gallery = gallery_of(request.parent, "parent")
        runs = await self.engine.clusterings(gallery)
        return pb.ListClusteringsResponse(clusterings=[clustering_run_pb(gallery, r) for r in runs])

    @rpc
    async def ListClusters(self, request: pb.ListClustersRequest, context: Any) -> pb.ListClustersResponse:
        gallery, run_id = clustering_of(request.parent, "parent")
        page, token = await self.engine.clusters(
            gallery, run_id, request.page_size or 100, request.page_token, max(request.min_size, 1)
        )
        return pb.ListClustersResponse(
            clusters=[gallery_cluster_pb(gallery, run_id, c) for c in page], next_page_token=token
        )

    @rpc
    async def PromoteCluster(
        self, request: pb.PromoteClusterRequest, context: Any
    ) -> pb.ClusterActionResponse:
        gallery, run_id, rank = cluster_of(request.name)
        new = NewIdentity(request.display_name or None, parse_attributes(request.attributes_json))
        moved = await self.engine.cluster_to_identity(gallery, run_id, rank, request.identity_id, new)
        return cluster_action_pb(gallery, moved)

    @rpc
    async def MergeCluster(self, request: pb.MergeClusterRequest, context: Any) -> pb.ClusterActionResponse:
        gallery, run_id, rank = cluster_of(request.name)
        moved = await self.engine.cluster_to_identity(gallery, run_id, rank, request.identity_id)
        return cluster_action_pb(gallery, moved)

    @rpc
    async def DeleteClustering(
        self, request: pb.DeleteClusteringRequest, context: Any
    ) -> pb.DeleteClusteringResponse:
        gallery, run_id = clustering_of(request.name)
        await self.engine.delete_clustering(gallery, run_id)
        return pb.DeleteClusteringResponse()

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
            v = await self.engine.verify_identity(gallery, probe_in(request.probe), target, threshold)
        elif against == "other":
            v = await self.engine.verify_pair(
                gallery, probe_in(request.probe), probe_in(request.other), threshold
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
        return identity_pb(gallery, await self.engine.get_identity(gallery, external_id))

    @rpc
    async def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: Any
    ) -> pb.ListIdentitiesResponse:
        gallery = gallery_of(request.parent, "parent")
        page, token = await self.engine.list_identities(gallery, request.page_size or 100, request.page_token)
        return pb.ListIdentitiesResponse(
            identities=[identity_pb(gallery, i) for i in page], next_page_token=token
        )

    @rpc
    async def UpdateIdentity(self, request: pb.UpdateIdentityRequest, context: Any) -> pb.Identity:
        gallery, external_id = identity_of(request.name)
        name = request.display_name if request.HasField("display_name") else None
        attributes = None
        if request.HasField("attributes_json"):
            attributes = parse_attributes(request.attributes_json) or {}
        updated = await self.engine.update_identity(gallery, external_id, name, attributes)
        return identity_pb(gallery, updated)

    @rpc
    async def DeleteIdentity(
        self, request: pb.DeleteIdentityRequest, context: Any
    ) -> pb.DeleteIdentityResponse:
        gallery, external_id = identity_of(request.name)
        return pb.DeleteIdentityResponse(face_ids=await self.engine.delete_identity(gallery, external_id))

    @rpc
    async def DeleteFace(self, request: pb.DeleteFaceRequest, context: Any) -> pb.DeleteFaceResponse:
        gallery, face_id = face_of(request.name)
        await self.engine.delete_face(gallery, face_id)
        return pb.DeleteFaceResponse()

    # ---- utilities -------------------------------------------------------------------------------
    @rpc
    async def Detect(self, request: pb.DetectRequest, context: Any) -> pb.DetectResponse:
        found = await self.engine.detect(request.photo)
        return pb.DetectResponse(
            faces=[detected_pb(d) for d in found.faces], width=found.width, height=found.height
        )

    @rpc
    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        faces = await self.engine.embed(request.photo, request.aligned)
        return pb.EmbedResponse(faces=[embedded_pb(f, self.engine.model_id) for f in faces])
