"""Clustering faces into people: the neighbour graph from an index, merges by
:mod:`faceid.engine.cluster.linkage`, the answer in domain terms.

A set sent in one call (ClusterFaces, up to :attr:`ClusterConfig.max_faces` faces) takes its
neighbours exactly (:meth:`IndexBackend.neighbours`); each face is then searched against the
gallery (one batched search, top 1) for the identity it matches.  LFW's 13,233 embeddings in one
call: 3.5–4.5 s through gRPC on the 2-core machine.  A whole gallery is a background run
(:class:`GalleryClustering`): a million faces in 496 s (BENCHMARKS.md "Clustering").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from faceid.engine.cluster.clusters import Group, groups
from faceid.engine.cluster.linkage import Linkage, average_linkage, neighbour_pairs
from faceid.engine.config import ClusterConfig
from faceid.engine.domain import limits
from faceid.engine.domain.errors import FaceIdError, FailedPreconditionError, InvalidInputError, NotFoundError
from faceid.engine.domain.faces import Box
from faceid.engine.domain.records import ClusteringRun, StoredCluster
from faceid.engine.domain.results import ClusteredFace, FaceCluster, Match
from faceid.engine.index import IndexBackend
from faceid.engine.service.checks import decode_page_token, encode_page_token
from faceid.engine.service.galleries import Galleries
from faceid.engine.store import ClusterStore, Store
from faceid.engine.store.clusterings import STOPPED

log = logging.getLogger("faceid.clustering")


@dataclass(frozen=True)
class Distances:
    """The two distances of a clustering (:class:`ClusterConfig`), checked."""

    strict: float
    loose: float

    @classmethod
    def of(cls, config: ClusterConfig, strict: float | None, loose: float | None) -> Distances:
        """The caller's distances (None or 0: the configured default), checked by the settings'
        own rule, or the error that refuses them."""
        try:
            checked = replace(
                config,
                strict_distance=strict or config.strict_distance,
                loose_distance=loose or config.loose_distance,
            )
        except ValueError as exc:
            raise InvalidInputError(
                f"{exc} (distances between unit embeddings; 0 takes the defaults, "
                f"{config.strict_distance} and {config.loose_distance})"
            ) from None
        return cls(checked.strict_distance, checked.loose_distance)

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


# ---- a gallery, in the background -------------------------------------------------------------
class ServerStoppingError(Exception):
    """The server is stopping: a running clustering gives up at its next step."""


class RunGoneError(Exception):
    """The run was deleted (or marked failed) while it worked: it stops at its next step."""


class GalleryClustering:
    """Clustering runs of whole galleries: started by a call, run in the background
    (:meth:`run`), their progress and clusters in the store (:class:`ClusterStore`).

    The neighbour graph comes from the gallery's own index: every face's vector searched for its
    ``neighbours + 1`` nearest (itself among them) in batches, with the index's default search
    settings — on the GPU when the index is there.  The run writes its progress at least once per
    batch; that write is also its heartbeat, so a run whose process stopped reads as failed
    (:data:`CLUSTERING_STALE_SECONDS`) and may be started again."""

    BATCH = 4096  # faces searched per step (one progress write each)

    def __init__(self, config: ClusterConfig, store: Store, galleries: Galleries, recover: bool) -> None:
        self.config = config
        self.store = store
        self.runs = ClusterStore(store.engine)
        self.galleries = galleries
        self.stop = threading.Event()
        if recover:  # the process that clears what a crashed one left
            cut = self.runs.fail_running(STOPPED)
            if cut:
                log.warning("%d clustering run(s) were cut off by the last stop: marked failed", cut)

    def start(
        self,
        gallery: str,
        strict: float | None,
        loose: float | None,
        update_of: int | None = None,
        identity_prefix: str = "",
    ) -> ClusteringRun:
        """A new run of ``gallery``'s faces, "running" (:meth:`run` does the work).  With
        ``update_of`` (a succeeded run), an update: it starts from that run's clusters and only
        the faces not in them are searched and assigned; its distances and scope by default.
        With ``identity_prefix``, only the faces of identities whose id starts with it (the
        unlabelled ones, when they are enrolled under a prefix such as "unknown-")."""
        state = self.galleries.current(gallery)
        if update_of is not None:
            base = self._succeeded(gallery, update_of)
            strict, loose = strict or base.strict_distance, loose or base.loose_distance
            identity_prefix = identity_prefix or base.identity_prefix
        distances = Distances.of(self.config, strict, loose)
        limits.check_identity_prefix(identity_prefix)
        faces = self.store.count_faces(state.gallery.id, identity_prefix)
        if faces < 1:
            scope = f" under identities starting with {identity_prefix!r}" if identity_prefix else ""
            raise FailedPreconditionError(
                f"gallery {gallery!r} has no faces{scope} to cluster: enrol some first"
            )
        return self.runs.start(
            state.gallery.id,
            self.config.neighbours,
            distances.strict,
            distances.loose,
            faces,
            update_of,
            identity_prefix,
        )

    def get(self, gallery: str, run_id: int) -> ClusteringRun:
        found = self.runs.get(self.galleries.get(gallery).id, run_id)
        if found is None:
            raise NotFoundError(f"clustering {run_id} does not exist in gallery {gallery!r}")
        return found

    def of_gallery(self, gallery: str) -> list[ClusteringRun]:
        """The gallery's runs, newest first."""
        return self.runs.of_gallery(self.galleries.get(gallery).id)

    def delete(self, gallery: str, run_id: int) -> None:
        """Forget a run and its clusters (the faces stay); a running one stops at its next step."""
        if not self.runs.delete(self.galleries.get(gallery).id, run_id):
            raise NotFoundError(f"clustering {run_id} does not exist in gallery {gallery!r}")

    def cluster(self, gallery: str, run_id: int, rank: int) -> StoredCluster:
        """One cluster of a finished run, its members as they are now."""
        self._succeeded(gallery, run_id)
        found = self.runs.cluster(run_id, rank) if rank >= 1 else None
        if found is None:
            raise NotFoundError(
                f"clustering {run_id} has no cluster {rank} (or every face of it was deleted); ranks "
                f"start at 1"
            )
        return found

    def _succeeded(self, gallery: str, run_id: int) -> ClusteringRun:
        run = self.get(gallery, run_id)
        if run.state != "succeeded":
            raise FailedPreconditionError(
                f"clustering {run_id} is {run.state}"
                + (f" ({run.error})" if run.error else f" ({run.phase}): ask again when it has succeeded")
            )
        return run

    def clusters(
        self, gallery: str, run_id: int, page_size: int, page_token: str = "", min_size: int = 1
    ) -> tuple[list[StoredCluster], str]:
        """A page of a finished run's clusters, largest first, and the next page's token."""
        self._succeeded(gallery, run_id)
        limits.check_page_size(page_size)
        if min_size < 1:
            raise InvalidInputError(f"min_size must be at least 1; got {min_size}")
        after = decode_page_token(page_token)
        if after is not None and not after.isdigit():
            raise InvalidInputError("page_token is not one this server issued; start again without it")
        page = self.runs.clusters(run_id, page_size + 1, int(after or 0), min_size)
        more = len(page) > page_size
        page = page[:page_size]
        return page, encode_page_token(str(page[-1].rank)) if more else ""

    def run(self, gallery: str, run: ClusteringRun) -> ClusteringRun:
        """Do the run: the neighbour graph, the merges, the clusters stored.  Any failure is
        written to the run (the caller sees it in GetClustering), never lost."""
        try:
            return self._run(gallery, run) or run
        except ServerStoppingError:
            self.runs.fail(run.id, STOPPED)
        except RunGoneError:
            log.info("clustering %s of %s stopped: it was deleted while it ran", run.id, gallery)
        except FaceIdError as exc:  # the gallery was deleted meanwhile, …
            self.runs.fail(run.id, str(exc))
        except Exception as exc:
            log.exception("clustering %s of %s failed", run.id, gallery)
            self.runs.fail(run.id, f"the clustering failed on the server ({type(exc).__name__}: {exc})")
        return self.runs.get(run.gallery_id, run.id) or run

    def _run(self, gallery: str, run: ClusteringRun) -> ClusteringRun | None:
        state = self.galleries.current(gallery)
        parts, read = [], 0
        for part in self.store.iter_embeddings(
            state.gallery.id, state.gallery.dim, identity_prefix=run.identity_prefix
        ):
            parts.append(part)
            read += len(part[0])
            self._step(run.id, "reading", read, run.faces)
        if not parts:
            return self.runs.finish(run.id, run.gallery_id, [])
        ids = np.concatenate([p[0] for p in parts])
        vectors = np.concatenate([p[1] for p in parts])
        del parts
        start, search = self._start(run, ids)
        k = min(run.neighbours + 1, len(ids))
        table = np.full((len(search), k), -1, np.int64)
        for at in range(0, len(search), self.BATCH):
            self._step(run.id, "neighbours", at, len(search))
            rows = search[at : at + self.BATCH]
            _, found = state.index.search(vectors[rows], k)
            table[at : at + len(rows)] = rows_of(ids, found)
        self._step(run.id, "merging", 0, 0)
        labels = average_linkage(
            vectors,
            neighbour_pairs(table, search),
            Linkage.from_distances(run.strict_distance, run.loose_distance),
            lambda round_, _proposals, _clusters: self._step(run.id, "merging", round_, 0),
            start,
        )
        self._step(run.id, "saving", len(search), len(search))  # what a finished run shows: faces searched
        return self.runs.finish(
            run.id,
            run.gallery_id,
            [
                (ids[g.members].tolist(), int(ids[g.representative]), g.cohesion)
                for g in groups(vectors, labels)
            ],
        )

    def _start(
        self, run: ClusteringRun, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64] | None, npt.NDArray[np.int64]]:
        """Where the merging starts (None: from single faces; an update: each face of the earlier
        run in its cluster) and the rows whose neighbours are searched (an update: the others)."""
        if run.based_on is None:
            return None, np.arange(len(ids))
        rank_of = self.runs.memberships(run.based_on)
        ranks = np.array([rank_of.get(int(f), 0) for f in ids], np.int64)
        start = np.arange(len(ids), dtype=np.int64)
        held = np.flatnonzero(ranks > 0)
        start[held] = -ranks[held]  # any label shared by a cluster's members, apart from row numbers
        return start, np.flatnonzero(ranks == 0)

    def _step(self, run_id: int, phase: str, done: int, total: int) -> None:
        """Progress, which is also the heartbeat; the point where a stopping server's run gives up."""
        if self.stop.is_set():
            raise ServerStoppingError
        if not self.runs.heartbeat(run_id, phase, done, total):
            raise RunGoneError


def rows_of(ids: npt.NDArray[np.int64], found: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Face ids an index search returned as row numbers of ``ids`` (sorted); -1 for a face not
    among them (enrolled after the run read the gallery) and for an empty slot."""
    rows = np.searchsorted(ids, found).clip(0, len(ids) - 1)
    return np.where((found >= 0) & (ids[rows] == found), rows, -1)
