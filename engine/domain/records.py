"""The records the store hands to callers (plain dataclasses, never ORM objects), and the source
hashes that make enrolment idempotent."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Gallery:
    id: int
    name: str
    model_name: str
    model_version: str
    dim: int
    metric: str
    created_at: datetime


@dataclass(frozen=True)
class Identity:
    id: int
    gallery_id: int
    external_id: str
    display_name: str
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    face_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class NewFace:
    """A face to enrol: the identity it belongs to (created when new) and its embedding;
    ``source_sha256`` is the SHA-256 of what it came from (see :attr:`FaceRow.source_sha256`)."""

    external_id: str
    embedding: npt.NDArray[np.float32]
    display_name: str | None = None
    attributes: dict[str, Any] | None = None
    detection_score: float | None = None
    box: tuple[float, float, float, float] | None = None
    source_sha256: str | None = None


@dataclass(frozen=True)
class StoredFace:
    """An enrolled face as an enrolment reports it: its id, its identity's row id and, for a face
    found in a photo, the detector's score and the box (left, top, right, bottom)."""

    id: int
    identity_id: int
    detection_score: float | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class SourceResult:
    """What one source of an enrolment came to (:meth:`Store.enrol`): the faces written for it, or,
    with ``already``, the faces enrolled from the same source into the same identity before (by an
    earlier call, or by an earlier item of the same call); none was written for it then."""

    faces: tuple[StoredFace, ...]
    already: bool


@dataclass(frozen=True)
class Change:
    seq: int
    op: str
    face_id: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def embedding_sha256(vector: npt.ArrayLike) -> str:
    """The source hash of an enrolment by embedding: SHA-256 of its values as little-endian float32,
    as the caller sent them (a client can compute it:
    ``hashlib.sha256(np.asarray(v, "<f4").tobytes())``)."""
    return sha256_hex(
        np.ascontiguousarray(np.asarray(vector, dtype=np.float32).ravel(), dtype="<f4").tobytes()
    )


@dataclass(frozen=True)
class NewIdentity:
    """The metadata of an identity a call creates (promoting a cluster)."""

    display_name: str | None = None
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True)
class Moved:
    """Faces put under one identity: the identity after it, the faces that moved (not those it
    held already), the identities left without a face, the last change's sequence number, and
    whether the identity was created."""

    identity: Identity
    face_ids: list[int]
    emptied: list[str]
    seq: int
    created: bool


#: The states of a clustering run.  A run whose process stopped (its heartbeat older than
#: :data:`CLUSTERING_STALE_SECONDS`) reads as "failed", with a message saying to start it again;
#: a restart marks its runs failed at once.  Five minutes: a run writes its clusters in one
#: transaction (a million faces: about a minute on SQLite), with no heartbeat meanwhile.
CLUSTERING_STATES = ("running", "succeeded", "failed")
CLUSTERING_STALE_SECONDS = 300.0


@dataclass(frozen=True)
class ClusteringRun:
    """A background clustering of a gallery's faces: its state, progress and result counts."""

    id: int
    gallery_id: int
    state: str
    phase: str
    faces: int
    done: int
    total: int
    neighbours: int
    based_on: int | None
    identity_prefix: str
    strict_distance: float
    loose_distance: float
    clusters: int
    singletons: int
    error: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class ClusterMember:
    """A face of a stored cluster and the identity it belongs to now (its external id)."""

    face_id: int
    external_id: str


@dataclass(frozen=True)
class StoredCluster:
    """A cluster of a clustering run, with its members as they are now (deleted faces gone):
    ``rank`` 1 is the run's largest; the representative is the run's, or the first member left
    when that face was deleted; cohesion as the run measured it (None: a singleton)."""

    rank: int
    members: list[ClusterMember]
    representative_face_id: int
    cohesion: float | None

    @property
    def identity(self) -> str:
        """The identity most members are enrolled under (ties: the first member's); "" for none."""
        votes = Counter(m.external_id for m in self.members)
        return votes.most_common(1)[0][0] if votes else ""
