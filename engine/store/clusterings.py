"""Clustering runs in the store's database (tables ``clusterings``, ``clusters``,
``cluster_faces``): a run's progress while it works, its clusters once it is done.

Members reference faces with ``ON DELETE CASCADE``: a deleted face (directly, with its
identity, or with its gallery) leaves its cluster in the same transaction, so erasure covers
cluster data without a pass of its own; clusters hold no embeddings.  Every method is one
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from faceid.engine.domain.errors import FailedPreconditionError
from faceid.engine.domain.records import (
    CLUSTERING_STALE_SECONDS,
    ClusteringRun,
    ClusterMember,
    StoredCluster,
)
from faceid.engine.store.schema import (
    ClusterFaceRow,
    ClusteringRow,
    ClusterRow,
    FaceRow,
    IdentityRow,
    utcnow,
)
from faceid.engine.store.store import IN_CHUNK, insert_rows, lock_gallery

#: A group the engine found: member face ids, the representative face id, the cohesion.
Found = tuple[Sequence[int], int, float | None]

STOPPED = (
    "the server process running this clustering stopped before it finished (a restart, a crash); "
    "start the clustering again"
)


def _run(row: ClusteringRow) -> ClusteringRun:
    state, error = row.state, row.error
    if state == "running" and row.updated_at < utcnow() - timedelta(seconds=CLUSTERING_STALE_SECONDS):
        state, error = "failed", STOPPED
    return ClusteringRun(
        row.id,
        row.gallery_id,
        state,
        row.phase,
        row.faces,
        row.done,
        row.total,
        row.neighbours,
        row.based_on,
        row.identity_prefix,
        row.strict_distance,
        row.loose_distance,
        row.clusters,
        row.singletons,
        error,
        row.created_at,
        row.updated_at,
        row.finished_at,
    )


class ClusterStore:
    """Clustering runs and their clusters; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _session(self) -> Session:
        return self._sessions()

    def start(
        self,
        gallery_id: int,
        neighbours: int,
        strict: float,
        loose: float,
        total: int,
        based_on: int | None = None,
        identity_prefix: str = "",
    ) -> ClusteringRun:
        """A new run, "running"; refused while another run of the gallery is (one whose process
        stopped does not count: it is marked failed)."""
        with self._session() as s, s.begin():
            lock_gallery(s.connection(), gallery_id)
            for row in s.scalars(
                select(ClusteringRow).where(
                    ClusteringRow.gallery_id == gallery_id, ClusteringRow.state == "running"
                )
            ):
                if _run(row).state == "running":
                    raise FailedPreconditionError(
                        f"clustering {row.id} of this gallery is still running ({row.phase}, {row.done:,} of "
                        f"{row.total:,}): wait for it (GetClustering), then start another"
                    )
                row.state, row.error, row.finished_at = "failed", STOPPED, utcnow()
            now = utcnow()
            row = ClusteringRow(
                gallery_id=gallery_id,
                state="running",
                phase="starting",
                faces=total,
                done=0,
                total=total,
                neighbours=neighbours,
                based_on=based_on,
                identity_prefix=identity_prefix,
                strict_distance=strict,
                loose_distance=loose,
                clusters=0,
                singletons=0,
                error="",
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            return _run(row)

    def fail_running(self, message: str) -> int:
        """Mark every "running" run failed (a server starting: no run of its own has begun yet, so
        any left running was cut off by a stop or a crash); how many there were."""
        with self._session() as s, s.begin():
            done = s.execute(
                update(ClusteringRow)
                .where(ClusteringRow.state == "running")
                .values(state="failed", error=message[:1024], updated_at=utcnow(), finished_at=utcnow())
            )
            return int(getattr(done, "rowcount", 0) or 0)

    def heartbeat(self, run_id: int, phase: str, done: int, total: int) -> bool:
        """The run's progress, which also says that its process is alive; False when the run is
        no longer running (deleted, or marked failed)."""
        with self._session() as s, s.begin():
            result = s.execute(
                update(ClusteringRow)
                .where(ClusteringRow.id == run_id, ClusteringRow.state == "running")
                .values(phase=phase, done=done, total=total, updated_at=utcnow())
            )
            return bool(getattr(result, "rowcount", 0))

    def fail(self, run_id: int, message: str) -> None:
        with self._session() as s, s.begin():
            s.execute(
                update(ClusteringRow)
                .where(ClusteringRow.id == run_id)
                .values(state="failed", error=message[:1024], updated_at=utcnow(), finished_at=utcnow())
            )

    def finish(self, run_id: int, gallery_id: int, found: Sequence[Found]) -> ClusteringRun | None:
        """Store the run's clusters (largest first: rank 1, 2, …) and mark it succeeded; None when
        the run was deleted meanwhile.  Faces deleted while it ran are left out; a group left
        empty is dropped."""
        with self._session() as s, s.begin():
            c = s.connection()
            lock_gallery(c, gallery_id)  # no face is deleted between the check and the insert
            if s.get(ClusteringRow, run_id) is None:
                return None
            alive = _existing(c, gallery_id, [f for members, _, _ in found for f in members])
            kept = [(m, r, h) for m, r, h in ((_alive(m, alive), r, h) for m, r, h in found) if m]
            keys = (
                insert_rows(
                    c,
                    ClusterRow,
                    [
                        {
                            "clustering_id": run_id,
                            "rank": rank,
                            "representative_face_id": rep if rep in alive else members[0],
                            "cohesion": cohesion if len(members) > 1 else None,
                        }
                        for rank, (members, rep, cohesion) in enumerate(kept, start=1)
                    ],
                )
                if kept
                else []
            )
            members = [
                {"cluster_id": key, "face_id": f}
                for key, (m, _, _) in zip(keys, kept, strict=True)
                for f in m
            ]
            for start in range(0, len(members), 50_000):
                c.execute(insert(ClusterFaceRow), members[start : start + 50_000])
            clusters = sum(len(m) > 1 for m, _, _ in kept)
            now = utcnow()
            c.execute(
                update(ClusteringRow)
                .where(ClusteringRow.id == run_id)
                .values(
                    state="succeeded",
                    phase="done",
                    clusters=clusters,
                    singletons=len(kept) - clusters,
                    updated_at=now,
                    finished_at=now,
                )
            )
            return _run(s.get_one(ClusteringRow, run_id, populate_existing=True))

    def get(self, gallery_id: int, run_id: int) -> ClusteringRun | None:
        with self._session() as s:
            row = s.get(ClusteringRow, run_id)
            return _run(row) if row is not None and row.gallery_id == gallery_id else None

    def of_gallery(self, gallery_id: int) -> list[ClusteringRun]:
        """The gallery's runs, newest first."""
        with self._session() as s:
            rows = s.scalars(
                select(ClusteringRow)
                .where(ClusteringRow.gallery_id == gallery_id)
                .order_by(ClusteringRow.id.desc())
            )
            return [_run(r) for r in rows]

    def delete(self, gallery_id: int, run_id: int) -> bool:
        with self._session() as s, s.begin():
            gone = s.execute(
                delete(ClusteringRow).where(
                    ClusteringRow.id == run_id, ClusteringRow.gallery_id == gallery_id
                )
            )
            return bool(getattr(gone, "rowcount", 0))

    def memberships(self, run_id: int) -> dict[int, int]:
        """Face id → rank of every face a run's clusters hold now."""
        with self._session() as s:
            rows = s.execute(
                select(ClusterFaceRow.face_id, ClusterRow.rank)
                .join(ClusterRow, ClusterRow.id == ClusterFaceRow.cluster_id)
                .where(ClusterRow.clustering_id == run_id)
            )
            return dict(rows.all())

    def cluster(self, run_id: int, rank: int) -> StoredCluster | None:
        """One cluster of a run by its rank (None: no such rank, or no member left)."""
        found = self.clusters(run_id, 1, rank - 1)
        return found[0] if found and found[0].rank == rank else None

    def clusters(
        self, run_id: int, page_size: int, after_rank: int = 0, min_size: int = 1
    ) -> list[StoredCluster]:
        """A page of the run's clusters by rank, those with at least ``min_size`` members left."""
        with self._session() as s:
            size = func.count(ClusterFaceRow.face_id)
            page = s.execute(
                select(ClusterRow.id, ClusterRow.rank, ClusterRow.representative_face_id, ClusterRow.cohesion)
                .join(ClusterFaceRow, ClusterFaceRow.cluster_id == ClusterRow.id)
                .where(ClusterRow.clustering_id == run_id, ClusterRow.rank > after_rank)
                .group_by(ClusterRow.id)
                .having(size >= min_size)
                .order_by(ClusterRow.rank)
                .limit(page_size)
            ).all()
            members: dict[int, list[ClusterMember]] = {key: [] for key, *_ in page}
            rows = s.execute(
                select(ClusterFaceRow.cluster_id, ClusterFaceRow.face_id, IdentityRow.external_id)
                .join(FaceRow, FaceRow.id == ClusterFaceRow.face_id)
                .join(IdentityRow, IdentityRow.id == FaceRow.identity_id)
                .where(ClusterFaceRow.cluster_id.in_(list(members)))
                .order_by(ClusterFaceRow.cluster_id, ClusterFaceRow.face_id)
            )
            for key, face_id, external_id in rows:
                members[key].append(ClusterMember(face_id, external_id))
        out = []
        for key, rank, rep, cohesion in page:
            m = members[key]
            representative = rep if any(x.face_id == rep for x in m) else m[0].face_id
            out.append(StoredCluster(rank, m, representative, cohesion if len(m) > 1 else None))
        return out


def _existing(c: Connection, gallery_id: int, face_ids: list[int]) -> set[int]:
    out: set[int] = set()
    for start in range(0, len(face_ids), IN_CHUNK):
        chunk = face_ids[start : start + IN_CHUNK]
        out.update(
            c.scalars(select(FaceRow.id).where(FaceRow.gallery_id == gallery_id, FaceRow.id.in_(chunk)))
        )
    return out


def _alive(members: Sequence[int], alive: set[int]) -> list[int]:
    return [f for f in members if f in alive]
