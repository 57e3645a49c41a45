"""Clustering faces into people: the neighbour graph from an index, merges by
:mod:`faceid.engine.cluster.linkage`, the answer in domain terms.

A set sent in one call (ClusterFaces, up to :attr:`ClusterConfig.max_faces` faces) takes its
neighbours exactly (:meth:`IndexBackend.neighbours`: 20,000 faces in ~2 s here); each face is
then searched against the gallery (one batched search, top 1) for the identity it matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceid.engine.cluster.clusters import Group, groups
from faceid.engine.cluster.linkage import Linkage, average_linkage, neighbour_pairs
from faceid.engine.config import ClusterConfig
from faceid.engine.domain.errors import InvalidInputError
from faceid.engine.domain.faces import Box
from faceid.engine.domain.results import ClusteredFace, FaceCluster, Match
from faceid.engine.index import IndexBackend


@dataclass(frozen=True)
class Distances:
    """The two distances of a clustering (:class:`ClusterConfig`), checked."""

    strict: float
    loose: float

    @classmethod
    def of(cls, config: ClusterConfig, strict: float | None, loose: float | None) -> Distances:
        """The caller's distances (None or 0: the configured default), or the error that refuses them."""
        out = cls(strict or config.strict_distance, loose or config.loose_distance)
        if not 0 < out.strict <= out.loose < 2:
            raise InvalidInputError(
                f"give 0 < strict_distance ≤ loose_distance < 2 (distances between unit embeddings; 0 "
                f"takes the defaults, {config.strict_distance} and {config.loose_distance}); got "
                f"{out.strict:g} and {out.loose:g}"
            )
        return out

    @property
    def linkage(self) -> Linkage:
        return Linkage.from_distances(self.strict, self.loose)


def cluster_set(
    backend: IndexBackend, vectors: npt.NDArray[np.float32], neighbours: int, distances: Distances
) -> list[Group]:
    """The clusters of a set of unit vectors, from its exact neighbour graph."""
    if not len(vectors):
        return []
    _, rows = backend.neighbours(vectors, neighbours + 1)  # each row is its own nearest
    return groups(vectors, average_linkage(vectors, neighbour_pairs(rows), distances.linkage))


def face_clusters(
    found: Sequence[Group], faces: Sequence[tuple[int, Box | None]], matches: Sequence[Match | None]
) -> list[FaceCluster]:
    """Groups of row numbers as clusters of faces: ``faces[row]`` is a face's (probe position, box)
    and ``matches[row]`` the identity it matches."""
    out = []
    for group in found:
        members = [ClusteredFace(faces[r][0], faces[r][1], matches[r]) for r in group.members.tolist()]
        representative = int(np.flatnonzero(group.members == group.representative)[0])
        out.append(FaceCluster(members, representative, group.cohesion, majority_identity(members)))
    return out


def majority_identity(members: Sequence[ClusteredFace]) -> str | None:
    """The identity most members match (ties: the one matched with the higher similarity)."""
    votes: dict[str, tuple[int, float]] = {}
    for m in members:
        if m.match is not None:
            count, best = votes.get(m.match.external_id, (0, -1.0))
            votes[m.match.external_id] = (count + 1, max(best, m.match.similarity))
    return max(votes, key=votes.__getitem__) if votes else None
