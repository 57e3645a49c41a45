"""Protobuf to domain types and back: the servicer's parse and convert steps."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from faceid.engine.domain.errors import FaceIdError, InvalidInputError
from faceid.engine.domain.faces import Box, Detection, FaceChoice, FaceRule
from faceid.engine.domain.records import ClusteringRun, Identity, Moved, StoredCluster
from faceid.engine.domain.results import (
    Clustering,
    EmbeddedFace,
    EmbeddingInput,
    EnrolledFace,
    FaceCluster,
    FaceMatches,
    GalleryStats,
    Match,
    PhotoInput,
)
from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.server.names import clustering_name, identity_name
from faceid.server.status import status_of


@dataclass(frozen=True)
class Malformed:
    """A streamed item whose bytes are not the method's message (see ``server/auth.py``): it
    fails alone, with this message, and the stream goes on."""

    message: str


# ---- in ------------------------------------------------------------------------------------------
def embedding_in(message: pb.Embedding) -> EmbeddingInput:
    return EmbeddingInput(np.asarray(message.values, dtype=np.float32), message.model)


_RULES: dict[int, FaceRule | None] = {
    pb.FaceChoice.RULE_UNSPECIFIED: None,
    pb.FaceChoice.RULE_LARGEST: "largest",
    pb.FaceChoice.RULE_CENTRE: "centre",
}


def face_choice_in(message: pb.FaceChoice) -> FaceChoice:
    if message.rule not in _RULES:
        raise InvalidInputError(
            f"face.rule {message.rule} is not a rule; send RULE_LARGEST (1), RULE_CENTRE (2) or leave it "
            f"unset"
        )
    if message.HasField("box"):
        if message.rule:
            raise InvalidInputError("face: send a rule or a box, not both")
        b = message.box
        return FaceChoice(box=Box(b.left, b.top, b.right, b.bottom))
    return FaceChoice(rule=_RULES[message.rule])


def probe_in(probe: pb.Probe) -> PhotoInput | EmbeddingInput:
    """A probe's photo (with the face it means) or its embedding."""
    kind = probe.WhichOneof("kind")
    choice = face_choice_in(probe.face) if probe.HasField("face") else None
    if kind == "photo":
        return PhotoInput(bytes(probe.photo), choice)
    if kind == "embedding":
        if choice is not None:
            raise InvalidInputError("probe.face chooses a face of a photo; an embedding probe takes none")
        return embedding_in(probe.embedding)
    raise InvalidInputError("probe must hold a photo or an embedding")


# ---- out -----------------------------------------------------------------------------------------
def box_pb(box: Box | None) -> pb.Box | None:
    return None if box is None else pb.Box(left=box.left, top=box.top, right=box.right, bottom=box.bottom)


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


def face_matches_pb(gallery: str, r: FaceMatches) -> pb.FaceMatches:
    return pb.FaceMatches(
        box=box_pb(r.box),
        detection_score=r.detection_score or 0.0,
        matches=[match_pb(gallery, m) for m in r.matches],
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


def embedded_pb(f: EmbeddedFace, model: str) -> pb.EmbeddedFace:
    embedding = pb.Embedding(values=f.embedding.tolist(), model=model)
    if f.detection is None:
        return pb.EmbeddedFace(embedding=embedding)
    return pb.EmbeddedFace(face=detected_pb(f.detection), embedding=embedding)


def gallery_pb(s: GalleryStats) -> pb.Gallery:
    return pb.Gallery(
        name=f"galleries/{s.gallery.name}",
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


def probe_or_error(probe: pb.Probe) -> PhotoInput | EmbeddingInput | FaceIdError:
    """A probe of a batch, or why it cannot be read (it then fails alone)."""
    try:
        return probe_in(probe)
    except FaceIdError as exc:
        return exc


def identify_batch_pb(
    gallery: str, threshold: float, results: list[list[FaceMatches] | FaceIdError]
) -> pb.IdentifyBatchResponse:
    """IdentifyBatch's and SearchFaces' answer: each probe's faces, or its own status."""
    return pb.IdentifyBatchResponse(
        threshold=threshold, results=[_batch_result(gallery, i, r) for i, r in enumerate(results)]
    )


def _batch_result(
    gallery: str, index: int, result: list[FaceMatches] | FaceIdError
) -> pb.IdentifyBatchResult:
    if isinstance(result, FaceIdError):
        code, message = status_of(result)
        return pb.IdentifyBatchResult(index=index, error_code=code.value[0], error_message=message)
    return pb.IdentifyBatchResult(index=index, faces=[face_matches_pb(gallery, r) for r in result])


def clustering_pb(c: Clustering) -> pb.ClusterFacesResponse:
    """ClusterFaces' answer: the clusters, then each probe that gave no face with its status."""
    return pb.ClusterFacesResponse(
        clusters=[_cluster_pb(k) for k in c.clusters],
        errors=[_batch_result("", i, e) for i, e in c.errors],
        strict_distance=c.strict_distance,
        loose_distance=c.loose_distance,
    )


def _cluster_pb(k: FaceCluster) -> pb.FaceCluster:
    return pb.FaceCluster(
        faces=[
            pb.ClusteredFace(
                index=f.index,
                box=box_pb(f.box),
                identity_id=f.match.external_id if f.match else "",
                similarity=f.match.similarity if f.match else 0.0,
            )
            for f in k.faces
        ],
        representative=k.representative,
        cohesion=k.cohesion or 0.0,
        singleton=k.singleton,
        identity_id=k.identity or "",
    )


_RUN_STATES = {
    "running": pb.Clustering.RUNNING,
    "succeeded": pb.Clustering.SUCCEEDED,
    "failed": pb.Clustering.FAILED,
}


def clustering_run_pb(gallery: str, r: ClusteringRun) -> pb.Clustering:
    return pb.Clustering(
        name=clustering_name(gallery, r.id),
        state=_RUN_STATES[r.state],
        phase=r.phase,
        done=r.done,
        total=r.total,
        face_count=r.faces,
        cluster_count=r.clusters,
        singleton_count=r.singletons,
        strict_distance=r.strict_distance,
        loose_distance=r.loose_distance,
        neighbours=r.neighbours,
        error=r.error,
        create_time=r.created_at.isoformat(),
        update_time=r.updated_at.isoformat(),
        finish_time=r.finished_at.isoformat() if r.finished_at else "",
        update_of=clustering_name(gallery, r.based_on) if r.based_on else "",
        identity_prefix=r.identity_prefix,
    )


def gallery_cluster_pb(gallery: str, run_id: int, c: StoredCluster) -> pb.GalleryCluster:
    return pb.GalleryCluster(
        name=f"{clustering_name(gallery, run_id)}/clusters/{c.rank}",
        rank=c.rank,
        face_ids=[m.face_id for m in c.members],
        identity_ids=[m.external_id for m in c.members],
        representative_face_id=c.representative_face_id,
        cohesion=c.cohesion or 0.0,
        singleton=len(c.members) == 1,
        identity_id=c.identity,
    )


def cluster_action_pb(gallery: str, m: Moved) -> pb.ClusterActionResponse:
    return pb.ClusterActionResponse(
        identity=identity_pb(gallery, m.identity),
        moved_face_ids=m.face_ids,
        emptied_identity_ids=m.emptied,
    )


def error_result(index: int, exc: BaseException) -> pb.BulkEnrollResult:
    """A failed item's result: its status code and message."""
    code, message = status_of(exc)
    return pb.BulkEnrollResult(index=index, error_code=code.value[0], error_message=message)
