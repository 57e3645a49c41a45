"""Python clients for faceid's gRPC API: :class:`FaceIdClient` (blocking) and :class:`AsyncFaceIdClient`.

Both return plain dataclasses, never protobuf messages; reuse one channel for all
calls; give every call a default deadline; and retry through gRPC's own retry policy:
UNAVAILABLE with exponential backoff on the calls that are safe to repeat (reads,
identify, verify, deletes), and the server's load-shedding refusals (RESOURCE_EXHAUSTED)
on every call, after the delay the server asks for.  Errors raise :class:`FaceIdClientError` with the
status code's name and the server's message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc

from faceid.proto.faceid.v1 import faceid_pb2 as pb
from faceid.proto.faceid.v1 import faceid_pb2_grpc as pb_grpc

MIB = 1024 * 1024
_IDEMPOTENT = [
    "GetGallery",
    "ListGalleries",
    "DeleteGallery",
    "Identify",
    "Verify",
    "GetIdentity",
    "ListIdentities",
    "DeleteIdentity",
    "DeleteFace",
    "Detect",
    "Embed",
]
_OTHERS = ["CreateGallery", "Enroll", "BulkEnroll", "EnrollBatch", "UpdateIdentity"]


def _retry(codes: list[str]) -> dict[str, Any]:
    return {
        "maxAttempts": 4,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": codes,
    }


# The server refuses with RESOURCE_EXHAUSTED only before it has done anything (load shedding) and
# says when to come back (grpc-retry-pushback-ms, which gRPC's retries honour): every method may
# retry it.  UNAVAILABLE may have come after the work, so only the safe-to-repeat methods retry that.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "faceid.v1.FaceId", "method": m} for m in _IDEMPOTENT],
                "retryPolicy": _retry(["UNAVAILABLE", "RESOURCE_EXHAUSTED"]),
            },
            {
                "name": [{"service": "faceid.v1.FaceId", "method": m} for m in _OTHERS],
                "retryPolicy": _retry(["RESOURCE_EXHAUSTED"]),
            },
        ]
    }
)


def channel_options(max_message_bytes: int = 32 * MIB, retries: bool = True) -> list[tuple[str, Any]]:
    """Channel arguments: message limits, keepalive, and (``retries``) the retry policy above;
    load generators turn retries off to see each refusal."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", int(retries)),
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.keepalive_time_ms", 60_000),
    ]


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS to the server: trust ``ca_file`` (default: the system's roots); with ``cert_file`` and
    ``key_file``, also show a client certificate (mutual TLS)."""

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        return Path(path).read_bytes()

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def call_metadata(api_key: str | None, metadata: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The metadata sent with every call: the API key as ``authorization: Bearer …`` when given."""
    return [*metadata, *([("authorization", f"Bearer {api_key}")] if api_key else [])]


def _connect(
    api: Any, target: str, credentials: grpc.ChannelCredentials | None, connections: int
) -> tuple[list[Any], Iterator[Any]]:
    """``connections`` channels from ``grpc`` or ``grpc.aio``, each its own TCP connection (a
    server of several processes deals out connections, not calls), and their stubs in turn: TLS
    with ``credentials``, else plaintext."""
    if connections < 1:
        raise ValueError("connections must be at least 1")
    options = channel_options()
    if connections > 1:
        options.append(("grpc.use_local_subchannel_pool", 1))  # no connection shared between them
    if credentials:
        channels = [api.secure_channel(target, credentials, options) for _ in range(connections)]
    else:
        channels = [api.insecure_channel(target, options) for _ in range(connections)]
    return channels, itertools.cycle([pb_grpc.FaceIdStub(c) for c in channels])


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def code_name(value: int) -> str:
    """The name of a google.rpc.Code value, as a batch result's ``error_code`` carries it."""
    return _CODE_NAMES.get(value, "UNKNOWN") if value else "OK"


class FaceIdClientError(Exception):
    """A call failed: ``code`` is the status name (``"NOT_FOUND"``, …), ``message`` the server's words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _error(exc: grpc.RpcError) -> FaceIdClientError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return FaceIdClientError(code.name if code else "UNKNOWN", details or "")


# ---- plain results ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class Gallery:
    name: str
    model: str
    identity_count: int
    face_count: int
    index_kind: str
    index_training: bool
    index_memory_bytes: int
    index_device: str = "cpu"
    index_gpu_memory_bytes: int = 0


@dataclass(frozen=True)
class EnrolledFace:
    face_id: int
    box: Box | None
    #: The face was there before the request: the identity already held a face enrolled from the
    #: same photo bytes (or embedding values), and none was added (enrolment is safe to retry).
    already_enrolled: bool = False


@dataclass(frozen=True)
class Match:
    identity_id: str
    display_name: str
    attributes: dict[str, Any]
    face_id: int
    distance: float
    similarity: float
    is_match: bool


@dataclass(frozen=True)
class FaceMatches:
    box: Box | None
    detection_score: float
    matches: list[Match]
    #: The distance threshold the server applied (``is_match`` is distance below it).
    threshold: float = 0.0


@dataclass(frozen=True)
class Verification:
    distance: float
    similarity: float
    is_match: bool
    threshold: float
    face_id: int


@dataclass(frozen=True)
class Identity:
    identity_id: str
    display_name: str
    attributes: dict[str, Any]
    face_ids: list[int]
    create_time: str
    update_time: str


@dataclass(frozen=True)
class DetectedFace:
    box: Box
    score: float
    landmarks: list[tuple[float, float]]
    embedding: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class BulkResult:
    index: int
    faces: list[EnrolledFace]
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class BatchMatches:
    """One probe's result in an IdentifyBatch answer: its faces' matches, or its own error."""

    index: int
    faces: list[FaceMatches]
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class ClusteredFace:
    """A face of a ClusterFaces answer: its probe's position, its box (None for an embedding) and
    the enrolled identity it matches ("" for none) with the similarity."""

    index: int
    box: Box | None
    identity_id: str
    similarity: float


@dataclass(frozen=True)
class FaceCluster:
    """A group of faces of one person: ``faces[representative]`` is a face to show for it;
    ``cohesion`` the mean similarity of its pairs of members (0 for a singleton); ``identity_id``
    the identity most of its faces match ("" for none)."""

    faces: list[ClusteredFace]
    representative: int
    cohesion: float
    singleton: bool
    identity_id: str


@dataclass(frozen=True)
class Clustering:
    """A ClusterFaces answer: clusters largest first, then singletons; the probes that gave no face
    (each with its error); the distances applied."""

    clusters: list[FaceCluster]
    errors: list[BatchMatches]
    strict_distance: float
    loose_distance: float


@dataclass(frozen=True)
class ClusteringRun:
    """A gallery clustering run (StartClustering, GetClustering): ``state`` "RUNNING",
    "SUCCEEDED" or "FAILED" (``error`` says why); progress as ``phase`` and ``done`` of ``total``."""

    name: str
    run_id: int
    state: str
    phase: str
    done: int
    total: int
    face_count: int
    cluster_count: int
    singleton_count: int
    strict_distance: float
    loose_distance: float
    neighbours: int
    error: str
    create_time: str
    update_time: str
    finish_time: str
    #: For an update: the run id it started from (0: a full run).
    update_of: int = 0
    #: The run's scope: the faces of identities whose id starts with it ("": every face).
    identity_prefix: str = ""


@dataclass(frozen=True)
class GalleryCluster:
    """A cluster of a gallery run: its faces and the identity each is enrolled under now."""

    rank: int
    face_ids: list[int]
    identity_ids: list[str]
    representative_face_id: int
    cohesion: float
    singleton: bool
    identity_id: str


@dataclass(frozen=True)
class ClusterAction:
    """PromoteCluster's and MergeCluster's answer: the identity the cluster's faces are under now,
    the faces that moved, and the identities they left that now hold no face."""

    identity: Identity
    moved_face_ids: list[int]
    emptied_identity_ids: list[str]


# ---- translation -----------------------------------------------------------------------------
def _embedded(response: pb.EmbedResponse, aligned: bool) -> list[DetectedFace | list[float]]:
    """An Embed answer: the chip's embedding, or each face found with its embedding."""
    if aligned:
        return [list(f.embedding.values) for f in response.faces]
    return [_detected(f.face, f.embedding.values) for f in response.faces]


def _box(message: pb.Box, present: bool = True) -> Box | None:
    return Box(message.left, message.top, message.right, message.bottom) if present else None


def _gallery(m: pb.Gallery) -> Gallery:
    return Gallery(
        m.name.split("/", 1)[1],
        m.model,
        m.identity_count,
        m.face_count,
        m.index_kind,
        m.index_training,
        m.index_memory_bytes,
        m.index_device,
        m.index_gpu_memory_bytes,
    )


def _attrs(text: str) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _identity(m: pb.Identity) -> Identity:
    return Identity(
        m.identity_id,
        m.display_name,
        _attrs(m.attributes_json),
        list(m.face_ids),
        m.create_time,
        m.update_time,
    )


def _enrolled(m: pb.EnrolledFace) -> EnrolledFace:
    return EnrolledFace(m.face_id, _box(m.box, m.HasField("box")), m.already_enrolled)


def _bulk_result(m: pb.BulkEnrollResult) -> BulkResult:
    code = code_name(m.error_code) if m.error_code else ""
    return BulkResult(m.index, [_enrolled(f) for f in m.faces], code, m.error_message)


def _batch_matches(m: pb.IdentifyBatchResult, threshold: float = 0.0) -> BatchMatches:
    code = code_name(m.error_code) if m.error_code else ""
    return BatchMatches(m.index, [_face_matches(f, threshold) for f in m.faces], code, m.error_message)


def _clustering(m: pb.ClusterFacesResponse) -> Clustering:
    return Clustering(
        [
            FaceCluster(
                [
                    ClusteredFace(f.index, _box(f.box, f.HasField("box")), f.identity_id, f.similarity)
                    for f in c.faces
                ],
                c.representative,
                c.cohesion,
                c.singleton,
                c.identity_id,
            )
            for c in m.clusters
        ],
        [_batch_matches(e) for e in m.errors],
        m.strict_distance,
        m.loose_distance,
    )


def _run(m: pb.Clustering) -> ClusteringRun:
    return ClusteringRun(
        m.name,
        int(m.name.rsplit("/", 1)[-1]),
        pb.Clustering.State.Name(m.state),
        m.phase,
        m.done,
        m.total,
        m.face_count,
        m.cluster_count,
        m.singleton_count,
        m.strict_distance,
        m.loose_distance,
        m.neighbours,
        m.error,
        m.create_time,
        m.update_time,
        m.finish_time,
        int(m.update_of.rsplit("/", 1)[-1]) if m.update_of else 0,
        m.identity_prefix,
    )


def _gallery_cluster(m: pb.GalleryCluster) -> GalleryCluster:
    return GalleryCluster(
        m.rank,
        list(m.face_ids),
        list(m.identity_ids),
        m.representative_face_id,
        m.cohesion,
        m.singleton,
        m.identity_id,
    )


def clustering_name(gallery: str, run_id: int) -> str:
    return f"{gallery_name(gallery)}/clusterings/{run_id}"


def start_clustering_request(
    gallery: str,
    strict_distance: float = 0.0,
    loose_distance: float = 0.0,
    update_of: int = 0,
    identity_prefix: str = "",
) -> pb.StartClusteringRequest:
    return pb.StartClusteringRequest(
        parent=gallery_name(gallery),
        strict_distance=strict_distance,
        loose_distance=loose_distance,
        update_of=clustering_name(gallery, update_of) if update_of else "",
        identity_prefix=identity_prefix,
    )


def cluster_name(gallery: str, run_id: int, rank: int) -> str:
    return f"{clustering_name(gallery, run_id)}/clusters/{rank}"


def _action(m: pb.ClusterActionResponse) -> ClusterAction:
    return ClusterAction(_identity(m.identity), list(m.moved_face_ids), list(m.emptied_identity_ids))


def promote_request(
    gallery: str,
    run_id: int,
    rank: int,
    identity_id: str,
    display_name: str = "",
    attributes: dict[str, Any] | None = None,
) -> pb.PromoteClusterRequest:
    return pb.PromoteClusterRequest(
        name=cluster_name(gallery, run_id, rank),
        identity_id=identity_id,
        display_name=display_name,
        attributes_json=json.dumps(attributes) if attributes else "",
    )


def _face_matches(m: pb.FaceMatches, threshold: float = 0.0) -> FaceMatches:
    return FaceMatches(
        _box(m.box, m.HasField("box")),
        m.detection_score,
        [
            Match(
                x.identity_id,
                x.display_name,
                _attrs(x.attributes_json),
                x.face_id,
                x.distance,
                x.similarity,
                x.is_match,
            )
            for x in m.matches
        ],
        threshold,
    )


def _detected(m: pb.DetectedFace, embedding: Sequence[float] = ()) -> DetectedFace:
    return DetectedFace(
        Box(m.box.left, m.box.top, m.box.right, m.box.bottom),
        m.score,
        [(p.x, p.y) for p in m.landmarks],
        list(embedding),
    )


#: Which face of a photo a call means: "largest", "centre", or a box (left, top, right, bottom) in
#: pixels of the upright photo; None: the server's default (every face for identify).
FaceArg = str | Box | tuple[float, float, float, float] | None
_RULES = {"largest": pb.FaceChoice.RULE_LARGEST, "centre": pb.FaceChoice.RULE_CENTRE}


def face_choice(face: FaceArg) -> pb.FaceChoice | None:
    """The .proto's FaceChoice for ``face`` (see :data:`FaceArg`)."""
    if face is None:
        return None
    if isinstance(face, str):
        if face not in _RULES:
            raise ValueError(
                f"face must be 'largest', 'centre' or a box (left, top, right, bottom); got {face!r}"
            )
        return pb.FaceChoice(rule=_RULES[face])
    if isinstance(face, Box):
        face = (face.left, face.top, face.right, face.bottom)
    left, top, right, bottom = face
    return pb.FaceChoice(box=pb.Box(left=left, top=top, right=right, bottom=bottom))


def _probe(
    photo: bytes | None, embedding: Sequence[float] | None, model: str = "", face: FaceArg = None
) -> pb.Probe:
    if (photo is None) == (embedding is None):
        raise ValueError("give exactly one of photo and embedding")
    if photo is not None:
        return pb.Probe(photo=photo, face=face_choice(face))
    assert embedding is not None  # one of the two, checked above
    values = [float(x) for x in embedding]
    return pb.Probe(embedding=pb.Embedding(values=values, model=model), face=face_choice(face))


def gallery_name(gallery: str) -> str:
    return f"galleries/{gallery}"


def identity_name(gallery: str, identity_id: str) -> str:
    return f"galleries/{gallery}/identities/{quote(identity_id, safe='')}"


def enroll_request(
    gallery: str,
    identity_id: str,
    photo: bytes | None = None,
    embedding: Sequence[float] | None = None,
    all_faces: bool = False,
    display_name: str = "",
    attributes: dict[str, Any] | None = None,
    face: FaceArg = None,
) -> pb.EnrollRequest:
    return pb.EnrollRequest(
        parent=gallery_name(gallery),
        identity_id=identity_id,
        probe=_probe(photo, embedding, face=face),
        all_faces=all_faces,
        display_name=display_name,
        attributes_json=json.dumps(attributes) if attributes else "",
    )


def identify_request(
    gallery: str,
    photo: bytes | None = None,
    embedding: Sequence[float] | None = None,
    top_k: int = 5,
    threshold: float = 0.0,
    min_similarity: float = 0.0,
    nprobe: int = 0,
    rerank_factor: int = 0,
    face: FaceArg = None,
) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(
        parent=gallery_name(gallery),
        probe=_probe(photo, embedding, face=face),
        top_k=top_k,
        threshold=threshold,
        min_similarity=min_similarity,
        nprobe=nprobe,
        rerank_factor=rerank_factor,
    )


#: A probe of :func:`identify_batch_request`: photo bytes, or an embedding (any sequence of floats).
ProbeArg = bytes | Sequence[float]


def _probes(probes: Sequence[ProbeArg], face: FaceArg) -> list[pb.Probe]:
    """Photo bytes or embeddings as probes; ``face`` applies to every photo."""
    return [_probe(p, None, face=face) if isinstance(p, bytes) else _probe(None, p) for p in probes]


def identify_batch_request(
    gallery: str,
    probes: Sequence[ProbeArg],
    top_k: int = 5,
    threshold: float = 0.0,
    min_similarity: float = 0.0,
    nprobe: int = 0,
    rerank_factor: int = 0,
    face: FaceArg = None,
) -> pb.IdentifyBatchRequest:
    """An IdentifyBatch request; ``face`` applies to every photo probe."""
    return pb.IdentifyBatchRequest(
        parent=gallery_name(gallery),
        probes=_probes(probes, face),
        top_k=top_k,
        threshold=threshold,
        min_similarity=min_similarity,
        nprobe=nprobe,
        rerank_factor=rerank_factor,
    )


def cluster_faces_request(
    gallery: str,
    probes: Sequence[ProbeArg],
    strict_distance: float = 0.0,
    loose_distance: float = 0.0,
    face: FaceArg = None,
) -> pb.ClusterFacesRequest:
    """A ClusterFaces request; ``face`` applies to every photo probe (None: every face found)."""
    return pb.ClusterFacesRequest(
        parent=gallery_name(gallery),
        probes=_probes(probes, face),
        strict_distance=strict_distance,
        loose_distance=loose_distance,
    )


def search_faces_request(
    gallery: str,
    face_ids: Sequence[int],
    top_k: int = 5,
    threshold: float = 0.0,
    min_similarity: float = 0.0,
    nprobe: int = 0,
    rerank_factor: int = 0,
) -> pb.SearchFacesRequest:
    return pb.SearchFacesRequest(
        parent=gallery_name(gallery),
        face_ids=list(face_ids),
        top_k=top_k,
        threshold=threshold,
        min_similarity=min_similarity,
        nprobe=nprobe,
        rerank_factor=rerank_factor,
    )


def verify_request(
    gallery: str,
    photo: bytes | None = None,
    embedding: Sequence[float] | None = None,
    identity_id: str | None = None,
    other_photo: bytes | None = None,
    other_embedding: Sequence[float] | None = None,
    threshold: float = 0.0,
    face: FaceArg = None,
    other_face: FaceArg = None,
) -> pb.VerifyRequest:
    request = pb.VerifyRequest(
        parent=gallery_name(gallery), probe=_probe(photo, embedding, face=face), threshold=threshold
    )
    if identity_id is not None:
        request.identity = identity_name(gallery, identity_id)
    else:
        request.other.CopyFrom(_probe(other_photo, other_embedding, face=other_face))
    return request


def update_request(
    gallery: str, identity_id: str, display_name: str | None, attributes: dict[str, Any] | None
) -> pb.UpdateIdentityRequest:
    request = pb.UpdateIdentityRequest(name=identity_name(gallery, identity_id))
    if display_name is not None:
        request.display_name = display_name
    if attributes is not None:
        request.attributes_json = json.dumps(attributes)
    return request


class FaceIdClient:
    """Blocking client: ``with FaceIdClient(address, api_key=…) as c: c.identify("staff", photo=…)``.

    ``api_key`` is sent with every call; ``credentials`` (see :func:`tls_credentials`) make the
    channel TLS.  ``connections`` > 1 opens that many connections and takes turns among them, for
    a server of several processes (``faceid serve --processes N``) to share the calls.
    """

    def __init__(
        self,
        target: str,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str | None = None,
        connections: int = 1,
    ) -> None:
        self.channels, self._stubs = _connect(grpc, target, credentials, connections)
        self.channel = self.channels[0]
        self.stub = pb_grpc.FaceIdStub(self.channel)
        self.timeout = timeout
        self.metadata = call_metadata(api_key, metadata)

    def __enter__(self) -> FaceIdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(next(self._stubs), method)(
                request, timeout=timeout or self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # galleries
    def create_gallery(self, gallery: str) -> Gallery:
        return _gallery(self._call("CreateGallery", pb.CreateGalleryRequest(gallery_id=gallery)))

    def get_gallery(self, gallery: str) -> Gallery:
        return _gallery(self._call("GetGallery", pb.GetGalleryRequest(name=gallery_name(gallery))))

    def list_galleries(self) -> list[Gallery]:
        return [_gallery(g) for g in self._call("ListGalleries", pb.ListGalleriesRequest()).galleries]

    def delete_gallery(self, gallery: str) -> None:
        self._call("DeleteGallery", pb.DeleteGalleryRequest(name=gallery_name(gallery)))

    # enrolment
    def enroll(
        self,
        gallery: str,
        identity_id: str,
        photo: bytes | None = None,
        embedding: Sequence[float] | None = None,
        *,
        all_faces: bool = False,
        display_name: str = "",
        attributes: dict[str, Any] | None = None,
        face: FaceArg = None,
    ) -> list[EnrolledFace]:
        request = enroll_request(
            gallery, identity_id, photo, embedding, all_faces, display_name, attributes, face
        )
        return [_enrolled(f) for f in self._call("Enroll", request).faces]

    def bulk_enroll(
        self, requests: Iterable[pb.EnrollRequest], timeout: float | None = None
    ) -> Iterator[BulkResult]:
        """One result per request, in order; build requests with :func:`enroll_request`."""
        try:
            for r in self.stub.BulkEnroll(iter(requests), timeout=timeout, metadata=self.metadata):
                yield _bulk_result(r)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def enroll_batch(
        self, requests: Sequence[pb.EnrollRequest], timeout: float | None = None
    ) -> list[BulkResult]:
        """One call for up to 10,000 requests (build them with :func:`enroll_request`); one result
        per request, in order.  For ready embeddings, far cheaper per face than :meth:`bulk_enroll`."""
        response = self._call("EnrollBatch", pb.EnrollBatchRequest(items=requests), timeout)
        return [_bulk_result(r) for r in response.results]

    # identify / verify
    def identify(
        self,
        gallery: str,
        photo: bytes | None = None,
        embedding: Sequence[float] | None = None,
        top_k: int = 5,
        **options: Any,
    ) -> list[FaceMatches]:
        response = self._call("Identify", identify_request(gallery, photo, embedding, top_k, **options))
        return [_face_matches(f, response.threshold) for f in response.faces]

    def identify_batch(
        self, gallery: str, probes: Sequence[ProbeArg], top_k: int = 5, **options: Any
    ) -> list[BatchMatches]:
        """Up to 1,024 probes (photo bytes or embeddings) in one call; one result per probe, in
        order, a bad probe failing alone (its ``error_code``)."""
        response = self._call("IdentifyBatch", identify_batch_request(gallery, probes, top_k, **options))
        return [_batch_matches(r, response.threshold) for r in response.results]

    def search_faces(
        self, gallery: str, face_ids: Sequence[int], top_k: int = 5, **options: Any
    ) -> list[BatchMatches]:
        """Enrolled faces as probes, each without itself: up to 1,024 face ids, one result each."""
        response = self._call("SearchFaces", search_faces_request(gallery, face_ids, top_k, **options))
        return [_batch_matches(r, response.threshold) for r in response.results]

    def cluster_faces(self, gallery: str, probes: Sequence[ProbeArg], **options: Any) -> Clustering:
        """Up to 20,000 faces (embeddings, and the faces found in photos) grouped into people;
        ``strict_distance``, ``loose_distance`` and ``face`` as :func:`cluster_faces_request`."""
        return _clustering(self._call("ClusterFaces", cluster_faces_request(gallery, probes, **options)))

    def start_clustering(
        self,
        gallery: str,
        strict_distance: float = 0.0,
        loose_distance: float = 0.0,
        update_of: int = 0,
        identity_prefix: str = "",
    ) -> ClusteringRun:
        """Start clustering every face of ``gallery`` in the background (or, ``update_of`` a run
        id, only the faces that run has not seen, from its clusters; ``identity_prefix``: only the
        faces of identities whose id starts with it); the run, "RUNNING"."""
        request = start_clustering_request(
            gallery, strict_distance, loose_distance, update_of, identity_prefix
        )
        return _run(self._call("StartClustering", request))

    def get_clustering(self, gallery: str, run_id: int) -> ClusteringRun:
        return _run(
            self._call("GetClustering", pb.GetClusteringRequest(name=clustering_name(gallery, run_id)))
        )

    def wait_clustering(
        self,
        gallery: str,
        run_id: int,
        poll: float = 1.0,
        timeout: float | None = None,
        progress: Callable[[ClusteringRun], None] | None = None,
    ) -> ClusteringRun:
        """Poll a run until it is no longer "RUNNING" (``progress`` sees each answer); TimeoutError
        after ``timeout`` seconds (the run goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_clustering(gallery, run_id)
            if progress is not None:
                progress(run)
            if run.state != "RUNNING":
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"clustering {run_id} still runs ({run.phase}, {run.done:,} of {run.total:,})"
                )
            time.sleep(poll)

    def list_clusterings(self, gallery: str) -> list[ClusteringRun]:
        response = self._call("ListClusterings", pb.ListClusteringsRequest(parent=gallery_name(gallery)))
        return [_run(r) for r in response.clusterings]

    def list_clusters(
        self, gallery: str, run_id: int, min_size: int = 1, page_size: int = 100
    ) -> Iterator[GalleryCluster]:
        """A finished run's clusters, largest first (``min_size`` 2: no singletons), paged."""
        token = ""
        while True:
            request = pb.ListClustersRequest(
                parent=clustering_name(gallery, run_id),
                page_size=page_size,
                page_token=token,
                min_size=min_size,
            )
            page = self._call("ListClusters", request)
            yield from (_gallery_cluster(c) for c in page.clusters)
            token = page.next_page_token
            if not token:
                return

    def promote_cluster(
        self, gallery: str, run_id: int, rank: int, identity_id: str, **metadata: Any
    ) -> ClusterAction:
        """A cluster's faces moved to a new identity (``display_name``, ``attributes``)."""
        return _action(
            self._call("PromoteCluster", promote_request(gallery, run_id, rank, identity_id, **metadata))
        )

    def merge_cluster(self, gallery: str, run_id: int, rank: int, identity_id: str) -> ClusterAction:
        """A cluster's faces moved into an existing identity."""
        request = pb.MergeClusterRequest(name=cluster_name(gallery, run_id, rank), identity_id=identity_id)
        return _action(self._call("MergeCluster", request))

    def delete_clustering(self, gallery: str, run_id: int) -> None:
        self._call("DeleteClustering", pb.DeleteClusteringRequest(name=clustering_name(gallery, run_id)))

    def verify(
        self,
        gallery: str,
        photo: bytes | None = None,
        embedding: Sequence[float] | None = None,
        **against: Any,
    ) -> Verification:
        r = self._call("Verify", verify_request(gallery, photo, embedding, **against))
        return Verification(r.distance, r.similarity, r.is_match, r.threshold, r.face_id)

    # identities
    def get_identity(self, gallery: str, identity_id: str) -> Identity:
        return _identity(
            self._call("GetIdentity", pb.GetIdentityRequest(name=identity_name(gallery, identity_id)))
        )

    def list_identities(self, gallery: str, page_size: int = 100) -> Iterator[Identity]:
        """Every identity, fetched a page at a time."""
        token = ""
        while True:
            page = self._call(
                "ListIdentities",
                pb.ListIdentitiesRequest(parent=gallery_name(gallery), page_size=page_size, page_token=token),
            )
            yield from (_identity(i) for i in page.identities)
            token = page.next_page_token
            if not token:
                return

    def update_identity(
        self,
        gallery: str,
        identity_id: str,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Identity:
        return _identity(
            self._call("UpdateIdentity", update_request(gallery, identity_id, display_name, attributes))
        )

    def delete_identity(self, gallery: str, identity_id: str) -> list[int]:
        request = pb.DeleteIdentityRequest(name=identity_name(gallery, identity_id))
        return list(self._call("DeleteIdentity", request).face_ids)

    def delete_face(self, gallery: str, face_id: int) -> None:
        self._call("DeleteFace", pb.DeleteFaceRequest(name=f"galleries/{gallery}/faces/{face_id}"))

    # utilities
    def detect(self, photo: bytes) -> list[DetectedFace]:
        return [_detected(f) for f in self._call("Detect", pb.DetectRequest(photo=photo)).faces]

    def embed(self, photo: bytes, aligned: bool = False) -> list[DetectedFace | list[float]]:
        return _embedded(self._call("Embed", pb.EmbedRequest(photo=photo, aligned=aligned)), aligned)


class AsyncFaceIdClient:
    """asyncio client with the same methods as :class:`FaceIdClient` (awaitable; the streams are
    async iterators).  tests/test_servicer.py checks that the two classes offer the same calls."""

    def __init__(
        self,
        target: str,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str | None = None,
        connections: int = 1,
    ) -> None:
        self.channels, self._stubs = _connect(grpc.aio, target, credentials, connections)
        self.channel = self.channels[0]
        self.stub = pb_grpc.FaceIdStub(self.channel)
        self.timeout = timeout
        self.metadata = call_metadata(api_key, metadata)

    async def __aenter__(self) -> AsyncFaceIdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def _call(self, method: str, request: Any) -> Any:
        try:
            stub = next(self._stubs)
            return await getattr(stub, method)(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    async def create_gallery(self, gallery: str) -> Gallery:
        return _gallery(await self._call("CreateGallery", pb.CreateGalleryRequest(gallery_id=gallery)))

    async def get_gallery(self, gallery: str) -> Gallery:
        return _gallery(await self._call("GetGallery", pb.GetGalleryRequest(name=gallery_name(gallery))))

    async def enroll(
        self,
        gallery: str,
        identity_id: str,
        photo: bytes | None = None,
        embedding: Sequence[float] | None = None,
        **options: Any,
    ) -> list[EnrolledFace]:
        request = enroll_request(gallery, identity_id, photo, embedding, **options)
        return [_enrolled(f) for f in (await self._call("Enroll", request)).faces]

    async def enroll_batch(self, requests: Sequence[pb.EnrollRequest]) -> list[BulkResult]:
        """:meth:`FaceIdClient.enroll_batch` for asyncio."""
        response = await self._call("EnrollBatch", pb.EnrollBatchRequest(items=requests))
        return [_bulk_result(r) for r in response.results]

    async def identify(
        self,
        gallery: str,
        photo: bytes | None = None,
        embedding: Sequence[float] | None = None,
        top_k: int = 5,
        **options: Any,
    ) -> list[FaceMatches]:
        response = await self._call("Identify", identify_request(gallery, photo, embedding, top_k, **options))
        return [_face_matches(f, response.threshold) for f in response.faces]

    async def identify_batch(
        self, gallery: str, probes: Sequence[ProbeArg], top_k: int = 5, **options: Any
    ) -> list[BatchMatches]:
        """:meth:`FaceIdClient.identify_batch` for asyncio."""
        request = identify_batch_request(gallery, probes, top_k, **options)
        response = await self._call("IdentifyBatch", request)
        return [_batch_matches(r, response.threshold) for r in response.results]

    async def search_faces(
        self, gallery: str, face_ids: Sequence[int], top_k: int = 5, **options: Any
    ) -> list[BatchMatches]:
        """:meth:`FaceIdClient.search_faces` for asyncio."""
        request = search_faces_request(gallery, face_ids, top_k, **options)
        response = await self._call("SearchFaces", request)
        return [_batch_matches(r, response.threshold) for r in response.results]

    async def cluster_faces(self, gallery: str, probes: Sequence[ProbeArg], **options: Any) -> Clustering:
        """:meth:`FaceIdClient.cluster_faces` for asyncio."""
        request = cluster_faces_request(gallery, probes, **options)
        return _clustering(await self._call("ClusterFaces", request))

    async def start_clustering(
        self,
        gallery: str,
        strict_distance: float = 0.0,
        loose_distance: float = 0.0,
        update_of: int = 0,
        identity_prefix: str = "",
    ) -> ClusteringRun:
        """:meth:`FaceIdClient.start_clustering` for asyncio."""
        request = start_clustering_request(
            gallery, strict_distance, loose_distance, update_of, identity_prefix
        )
        return _run(await self._call("StartClustering", request))

    async def get_clustering(self, gallery: str, run_id: int) -> ClusteringRun:
        request = pb.GetClusteringRequest(name=clustering_name(gallery, run_id))
        return _run(await self._call("GetClustering", request))

    async def wait_clustering(
        self,
        gallery: str,
        run_id: int,
        poll: float = 1.0,
        timeout: float | None = None,
        progress: Callable[[ClusteringRun], None] | None = None,
    ) -> ClusteringRun:
        """:meth:`FaceIdClient.wait_clustering` for asyncio."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.get_clustering(gallery, run_id)
            if progress is not None:
                progress(run)
            if run.state != "RUNNING":
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"clustering {run_id} still runs ({run.phase}, {run.done:,} of {run.total:,})"
                )
            await asyncio.sleep(poll)

    async def list_clusterings(self, gallery: str) -> list[ClusteringRun]:
        response = await self._call(
            "ListClusterings", pb.ListClusteringsRequest(parent=gallery_name(gallery))
        )
        return [_run(r) for r in response.clusterings]

    async def list_clusters(
        self, gallery: str, run_id: int, min_size: int = 1, page_size: int = 100
    ) -> AsyncIterator[GalleryCluster]:
        """:meth:`FaceIdClient.list_clusters` for asyncio."""
        token = ""
        while True:
            request = pb.ListClustersRequest(
                parent=clustering_name(gallery, run_id),
                page_size=page_size,
                page_token=token,
                min_size=min_size,
            )
            page = await self._call("ListClusters", request)
            for c in page.clusters:
                yield _gallery_cluster(c)
            token = page.next_page_token
            if not token:
                return

    async def promote_cluster(
        self, gallery: str, run_id: int, rank: int, identity_id: str, **metadata: Any
    ) -> ClusterAction:
        """:meth:`FaceIdClient.promote_cluster` for asyncio."""
        request = promote_request(gallery, run_id, rank, identity_id, **metadata)
        return _action(await self._call("PromoteCluster", request))

    async def merge_cluster(self, gallery: str, run_id: int, rank: int, identity_id: str) -> ClusterAction:
        """:meth:`FaceIdClient.merge_cluster` for asyncio."""
        request = pb.MergeClusterRequest(name=cluster_name(gallery, run_id, rank), identity_id=identity_id)
        return _action(await self._call("MergeCluster", request))

    async def delete_clustering(self, gallery: str, run_id: int) -> None:
        request = pb.DeleteClusteringRequest(name=clustering_name(gallery, run_id))
        await self._call("DeleteClustering", request)

    async def verify(
        self,
        gallery: str,
        photo: bytes | None = None,
        embedding: Sequence[float] | None = None,
        **against: Any,
    ) -> Verification:
        r = await self._call("Verify", verify_request(gallery, photo, embedding, **against))
        return Verification(r.distance, r.similarity, r.is_match, r.threshold, r.face_id)

    async def get_identity(self, gallery: str, identity_id: str) -> Identity:
        request = pb.GetIdentityRequest(name=identity_name(gallery, identity_id))
        return _identity(await self._call("GetIdentity", request))

    async def list_identities(self, gallery: str, page_size: int = 100) -> AsyncIterator[Identity]:
        token = ""
        while True:
            page = await self._call(
                "ListIdentities",
                pb.ListIdentitiesRequest(parent=gallery_name(gallery), page_size=page_size, page_token=token),
            )
            for i in page.identities:
                yield _identity(i)
            token = page.next_page_token
            if not token:
                return

    async def delete_identity(self, gallery: str, identity_id: str) -> list[int]:
        request = pb.DeleteIdentityRequest(name=identity_name(gallery, identity_id))
        return list((await self._call("DeleteIdentity", request)).face_ids)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    async def list_galleries(self) -> list[Gallery]:
        return [_gallery(g) for g in (await self._call("ListGalleries", pb.ListGalleriesRequest())).galleries]

    async def delete_gallery(self, gallery: str) -> None:
        await self._call("DeleteGallery", pb.DeleteGalleryRequest(name=gallery_name(gallery)))

    async def bulk_enroll(
        self,
        requests: Iterable[pb.EnrollRequest] | AsyncIterable[pb.EnrollRequest],
        timeout: float | None = None,
    ) -> AsyncIterator[BulkResult]:
        """:meth:`FaceIdClient.bulk_enroll` for asyncio: one result per request, in order."""
        try:
            stub = next(self._stubs)
            async for r in stub.BulkEnroll(requests, timeout=timeout, metadata=self.metadata):
                yield _bulk_result(r)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    async def update_identity(
        self,
        gallery: str,
        identity_id: str,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Identity:
        request = update_request(gallery, identity_id, display_name, attributes)
        return _identity(await self._call("UpdateIdentity", request))

    async def delete_face(self, gallery: str, face_id: int) -> None:
        await self._call("DeleteFace", pb.DeleteFaceRequest(name=f"galleries/{gallery}/faces/{face_id}"))

    async def detect(self, photo: bytes) -> list[DetectedFace]:
        return [_detected(f) for f in (await self._call("Detect", pb.DetectRequest(photo=photo))).faces]

    async def embed(self, photo: bytes, aligned: bool = False) -> list[DetectedFace | list[float]]:
        return _embedded(await self._call("Embed", pb.EmbedRequest(photo=photo, aligned=aligned)), aligned)
