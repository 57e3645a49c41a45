"""What the engine answers: identify matches, enrolled faces, verifications, gallery statistics;
and what it is given: ready embeddings and enrolment items.  Plain data.

Scores: ``distance`` is the Euclidean distance between unit-length embeddings (0 … 2, smaller =
more alike) and ``similarity`` the cosine, ``1 − distance²/2`` (−1 … 1, larger = more alike); a
pair *matches* when its distance is below the threshold (the model's default, calibrated at FMR
1e-3 on LFW, or the caller's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from faceid.engine.domain.errors import FaceIdError
from faceid.engine.domain.faces import Box, Detection, FaceChoice
from faceid.engine.domain.records import Gallery
from faceid.engine.domain.search import IndexStats


@dataclass(frozen=True)
class Match:
    """One identity in an identify result, ranked by its best face."""

    external_id: str
    display_name: str
    attributes: dict[str, Any]
    face_id: int
    distance: float
    similarity: float
    is_match: bool


@dataclass(frozen=True)
class FaceMatches:
    """The identities nearest one probe face; ``box`` is None for an embedding probe."""

    box: Box | None
    detection_score: float | None
    matches: list[Match]


@dataclass(frozen=True)
class EnrolledFace:
    face_id: int
    external_id: str
    box: Box | None = None
    detection_score: float | None = None
    #: The face was there before this call: enrolled earlier from the same source (the same photo
    #: bytes, or the same embedding values) into the same identity, by an earlier call or an earlier
    #: item of this one.  The call added no face for it.
    already_enrolled: bool = False


@dataclass(frozen=True)
class Verification:
    distance: float
    similarity: float
    is_match: bool
    threshold: float
    face_id: int | None = None


@dataclass(frozen=True)
class EmbeddingInput:
    """A ready embedding from a client and the model it claims to come from."""

    vector: npt.NDArray[np.float32]
    model: str = ""  # "name/version"; empty = the gallery's model


@dataclass(frozen=True)
class PhotoInput:
    """A photo as sent (encoded bytes) and which face the call means: None takes every face
    (identify) or the engine's default rule (enrol, verify)."""

    data: bytes
    face: FaceChoice | None = None


@dataclass(frozen=True)
class EnrollItem:
    """One embedding to enrol and the identity it belongs to (metadata used when the identity is new)."""

    external_id: str
    embedding: EmbeddingInput
    display_name: str | None = None
    attributes: dict[str, Any] | None = None


@dataclass
class GalleryStats:
    gallery: Gallery
    identities: int
    faces: int
    index: IndexStats
    applied_seq: int


@dataclass(frozen=True)
class GalleryReading:
    """What a gallery holds in one process now, for monitoring (no face data: counts and state)."""

    name: str
    #: Faces the index holds, and identities in the store (read at most every ``identities_ttl``).
    faces: int
    identities: int
    index: IndexStats
    #: Changes applied since the snapshot on disk was written (replayed from the change log after
    #: a crash), other processes' too with a shared store; None in a process that writes none.
    unsaved_changes: int | None
    #: Seconds since the gallery's snapshot file was written; None when there is none yet.
    snapshot_age: float | None
    #: Changes other processes logged that this one has not applied yet (a shared store; 0 alone).
    changes_behind: int


def similarity(distance: float) -> float:
    return 1.0 - distance * distance / 2.0


@dataclass(frozen=True)
class Identification:
    """An identify call's answer: the distance threshold its decisions used, and one result per
    probe face (one for an embedding; one per face found, largest first, for a photo)."""

    threshold: float
    faces: list[FaceMatches]


@dataclass(frozen=True)
class EmbeddedFace:
    """A face's embedding, with its detection (None for an aligned chip sent as such)."""

    detection: Detection | None
    embedding: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Detected:
    """The faces found in a photo and the photo's upright size in pixels."""

    faces: list[Detection]
    width: int
    height: int


@dataclass(frozen=True)
class ClusteredFace:
    """One face a clustering was given: the probe it came from (its position in the call), its box
    in that photo (None for an embedding), and the enrolled identity it matches, if any."""

    index: int
    box: Box | None
    match: Match | None


@dataclass(frozen=True)
class FaceCluster:
    """A group of faces of one person, as far as the clustering can tell: ``faces`` in the order
    given, ``representative`` the position in ``faces`` of the member nearest the members' mean
    direction, ``cohesion`` the mean similarity of all pairs of members (None: a singleton), and
    the external id of the identity most members match (None: none does)."""

    faces: list[ClusteredFace]
    representative: int
    cohesion: float | None
    identity: str | None

    @property
    def singleton(self) -> bool:
        return len(self.faces) == 1


@dataclass(frozen=True)
class Clustering:
    """A clustering's answer: clusters largest first, then singletons; each probe that gave no face
    with its error (position, error); the distances applied."""

    clusters: list[FaceCluster]
    errors: list[tuple[int, FaceIdError]]
    strict_distance: float
    loose_distance: float
