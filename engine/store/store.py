"""The identity store: galleries, identities and faces in SQL (SQLAlchemy 2), plus a change log.

SQL is the source of truth; each gallery's vector index is derived from it.  Every
add or removal of a face writes a row to ``changes`` in the same transaction, with
a sequence number that only grows; an index snapshot records the sequence number
it reflects, and on start the index replays the changes after it.  The change log
holds ids only, never embeddings, so erasing a face erases its embedding.  Snapshots let it
drop what they reflect (:meth:`Store.trim_changes`, one "trim" row in its place), so it does
not grow without end.  Times are stored in UTC and read back as aware UTC datetimes
(:class:`UtcDateTime`) on both databases.  Every face records the SHA-256 of its source (the
photo's bytes or the embedding's values): enrolling a source again into the same identity adds no
face (:meth:`Store.enrol`), so a retried or resumed enrolment is safe.

The embedded default is SQLite in the data directory (WAL, foreign keys on, busy
timeout, synchronous=FULL so that an acknowledged write survives a crash,
secure_delete so that an erased embedding's bytes are overwritten, not left in free pages); at
scale, PostgreSQL by URL (``postgresql+psycopg://…``).  The same code serves both.
Callers get plain dataclasses, never ORM objects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import sqlalchemy.exc
from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Table,
    Text,
    any_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from faceid.engine.domain.errors import AlreadyExistsError, NotFoundError
from faceid.engine.domain.records import (
    Change,
    Gallery,
    Identity,
    Moved,
    NewFace,
    NewIdentity,
    SourceResult,
    StoredFace,
)
from faceid.engine.store.migrate import upgrade
from faceid.engine.store.schema import Base, ChangeRow, FaceRow, GalleryRow, IdentityRow, utcnow

_LAST_SEQ = select(func.coalesce(func.max(ChangeRow.seq), 0)).where(
    ChangeRow.gallery_id == bindparam("gallery_id")
)


_STORED_FACE = select(
    FaceRow.id,
    FaceRow.identity_id,
    FaceRow.source_sha256,
    FaceRow.detection_score,
    FaceRow.box_left,
    FaceRow.box_top,
    FaceRow.box_right,
    FaceRow.box_bottom,
)


def _stored_face(row: Any) -> StoredFace:
    box = None if row[4] is None else (row[4], row[5], row[6], row[7])
    return StoredFace(row[0], row[1], row[3], box)


def _among(c: Connection, column: Any, values: list[int]) -> Any:
    """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``, one parameter: a quarter of
    the time of thousands of them."""
    if c.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(BigInteger())))
    return column.in_(values)


def _source_key(source: Sequence[NewFace]) -> tuple[str, str] | None:
    """(identity, source hash) of a source's faces; None when it has no hash (never a repeat)."""
    if not source or source[0].source_sha256 is None:
        return None
    return source[0].external_id, source[0].source_sha256


def _gallery(row: GalleryRow) -> Gallery:
    return Gallery(row.id, row.name, row.model_name, row.model_version, row.dim, row.metric, row.created_at)


def _identity(row: IdentityRow, face_ids: Sequence[int] = ()) -> Identity:
    return Identity(
        row.id,
        row.gallery_id,
        row.external_id,
        row.display_name,
        dict(row.attributes or {}),
        row.created_at,
        row.updated_at,
        tuple(face_ids),
    )


def _rowcount(result: Any) -> int:
    """Rows matched by an UPDATE or DELETE (a CursorResult's rowcount)."""
    return int(result.rowcount)


BUSY_TIMEOUT_MS = 10_000  # SQLite: how long a write waits for the database's one writer lock


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA secure_delete=ON")  # erasure: a deleted embedding's bytes are overwritten
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An SQLAlchemy engine with the settings faceid relies on for each backend."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql"):
        # No server-side prepared statements: psycopg prepares a query after 5 runs, and the plan it
        # keeps was made when the tables were empty (a sequential scan, 1 s per enrol at 200k faces).
        connect_args = {"prepare_threshold": None, **kwargs.pop("connect_args", {})}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    return create_engine(url, pool_pre_ping=True, **kwargs)


COPY_MIN = 32  # rows from which a PostgreSQL insert goes by COPY
IN_CHUNK = 10_000  # ids per IN (…) list


def insert_rows(c: Connection, model: type[Base], rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows (each with the same keys); their generated primary keys, in order.

    On PostgreSQL a batch of ``COPY_MIN`` rows or more takes its keys from the table's sequence
    in one query and goes in by COPY, several times faster than INSERT … RETURNING.
    """
    table = cast(Table, model.__table__)
    key = next(iter(table.primary_key.columns))
    if c.dialect.name != "postgresql" or len(rows) < COPY_MIN:
        # The Core table, not the ORM entity: the ORM's bulk path costs a one-face enrol ~1 ms more.
        return list(c.scalars(insert(table).returning(key, sort_by_parameter_order=True), rows))
    connection: Any = c.connection.driver_connection  # psycopg, in this transaction
    json_columns = {col.name for col in table.columns if isinstance(col.type, JSON)}
    columns = list(rows[0])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            (table.name, key.name, len(rows)),
        )
        keys = [int(r[0]) for r in cursor.fetchall()]
        with cursor.copy(f"COPY {table.name} ({key.name}, {', '.join(columns)}) FROM STDIN") as copy:
            for k, row in zip(keys, rows, strict=True):
                copy.write_row([k, *(json.dumps(row[c]) if c in json_columns else row[c] for c in columns)])
    return keys


def _prefixed(identity_prefix: str) -> list[Any]:
    """The condition that a face's identity id starts with ``identity_prefix`` (none for "")."""
    if not identity_prefix:
        return []
    owners = select(IdentityRow.id).where(
        IdentityRow.external_id.startswith(identity_prefix, autoescape=True)
    )
    return [FaceRow.identity_id.in_(owners)]


def lock_gallery(c: Connection, gallery_id: int) -> None:
    """Serialize the gallery's writers in the database, before the transaction reads anything,
    so that (1) its change log's order is the order its changes were committed in: a process
    that replays the log by sequence number then never skips a late commit; and (2) what a
    writer reads (e.g. the faces already enrolled from a source, :meth:`Store.enrol`) stays true
    until it commits, also against writers in other processes.

    PostgreSQL: the gallery's row lock.  SQLite has one writer at a time, but Python's sqlite3
    starts the transaction only at the first INSERT, UPDATE or DELETE: the SELECTs before it
    ran outside, each on its own snapshot.  An UPDATE that matches no row starts the
    transaction and takes the database's write lock (waiting up to the busy timeout) without
    writing a page."""
    if c.dialect.name == "sqlite":
        c.execute(update(GalleryRow).where(GalleryRow.id == -1).values(id=GalleryRow.id))
    else:
        c.execute(select(GalleryRow.id).where(GalleryRow.id == gallery_id).with_for_update())


class Store:
    """Galleries, identities, faces and the change log; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._claim: Connection | None = None  # the connection holding :meth:`claim`'s lock

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(make_engine(url))

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the committing thread right before every COMMIT is sent (it raises
        to roll the transaction back instead)."""
        event.listen(self.engine, "commit", lambda _connection: callback())

    def migrate(self) -> None:
        """Bring the schema up to date (Alembic migrations; idempotent)."""
        upgrade(self.engine)

    def create_schema(self) -> None:
        """Create the tables directly (tests, tools); deployments run the Alembic migrations."""
        Base.metadata.create_all(self.engine)

    def session(self) -> Session:
        return self._sessions()

    #: The advisory lock a faceid server holds on a PostgreSQL database it owns (any fixed number).
    SERVER_LOCK = 0x66616365  # "face"

    def claim(self, wait: float = 5.0) -> bool:
        """Take the store for one server (or one ``--processes N`` group); False when another server
        holds it.  Two servers with their own indexes on one database would each miss the other's
        writes.  On PostgreSQL a session advisory lock on (faceid, the schema), held by a
        connection kept open for the life of the process: the database drops it when the process
        dies, even by SIGKILL, though the old session may take a moment to notice, hence ``wait``
        seconds of retries.  On SQLite the data directory's lock does this (the database is a
        file in it): always True."""
        if self.engine.dialect.name != "postgresql":
            return True
        connection = self.engine.connect()
        claim = text("SELECT pg_try_advisory_lock(:key, hashtext(current_schema()))")
        deadline = time.monotonic() + wait
        while not connection.execute(claim, {"key": self.SERVER_LOCK}).scalar():
            connection.commit()
            if time.monotonic() >= deadline:
                connection.close()
                return False
            time.sleep(0.2)
        connection.commit()
        self._claim = connection
        return True

    def release(self) -> None:
        """Give up what :meth:`claim` took (at a graceful stop; a dead process releases by dying)."""
        if self._claim is not None:
            self._claim.invalidate()  # closes the session for good, and the lock with it
            self._claim = None

    # ---- galleries ----------------------------------------------------------------------------
    def create_gallery(
        self, name: str, model_name: str, model_version: str, dim: int, metric: str
    ) -> Gallery:
        with self.session() as s, s.begin():
            row = GalleryRow(
                name=name, model_name=model_name, model_version=model_version, dim=dim, metric=metric
            )
            s.add(row)
            s.flush()
            # SQLite may hand out a deleted gallery's id again: its "drop" row must not follow.
            s.execute(delete(ChangeRow).where(ChangeRow.gallery_id == row.id))
            return _gallery(row)

    def get_gallery(self, name: str) -> Gallery | None:
        with self.session() as s:
            row = s.scalars(select(GalleryRow).where(GalleryRow.name == name)).one_or_none()
            return _gallery(row) if row else None

    def list_galleries(self) -> list[Gallery]:
        with self.session() as s:
            return [_gallery(r) for r in s.scalars(select(GalleryRow).order_by(GalleryRow.name))]

    def delete_gallery(self, gallery_id: int) -> bool:
        """Delete a gallery with all its identities, faces and change-log rows; one "drop" row
        stays in the log, for other processes serving the store."""
        with self.session() as s, s.begin():
            self._lock_gallery(s.connection(), gallery_id)
            s.execute(delete(FaceRow).where(FaceRow.gallery_id == gallery_id))
            s.execute(delete(IdentityRow).where(IdentityRow.gallery_id == gallery_id))
            s.execute(delete(ChangeRow).where(ChangeRow.gallery_id == gallery_id))
            gone = _rowcount(s.execute(delete(GalleryRow).where(GalleryRow.id == gallery_id))) > 0
            if gone:
                self._log(s.connection(), gallery_id, "drop", [0])
            return gone

    @staticmethod
    def _lock_gallery(c: Connection, gallery_id: int) -> None:
        lock_gallery(c, gallery_id)

    # ---- faces --------------------------------------------------------------------------------
    def add_faces(
        self, gallery: Gallery, faces: Sequence[NewFace], created: dict[int, Identity] | None = None
    ) -> tuple[list[int], list[int], int]:
        """Write faces (creating identities that do not exist yet) in one transaction, every one,
        also a repeat of a source the identity already holds (:meth:`enrol` checks for those).

        Returns the new face ids and their identities' row ids, in order, and the sequence
        number of the last change; the identities it created go into ``created`` when given.
        """
        if not faces:
            return [], [], self.last_seq(gallery.id)
        # A Core connection, not an ORM session: enrolment is the hot write (its SQL -20 %).
        with self.engine.begin() as c:
            self._lock_gallery(c, gallery.id)
            identities = self._identity_ids(c, gallery.id, faces)
            ids, identity_ids = self._write_faces(c, gallery, faces, identities, created)
            return ids, identity_ids, self._log(c, gallery.id, "add", ids)

    def enrol(
        self,
        gallery: Gallery,
        sources: Sequence[Sequence[NewFace]],
        created: dict[int, Identity] | None = None,
    ) -> tuple[list[SourceResult], int]:
        """Enrol sources, each once, in one transaction: what each came to, in order, and the
        sequence number of the last change.

        A source is what one enrolment names: the faces found in one photo, or one embedding;
        its faces share their identity and ``source_sha256``.  A source whose identity already
        holds faces enrolled from the same hash (by an earlier call, or by an earlier source of
        this one) writes nothing: its result is those faces, with ``already``.  The others are
        written as :meth:`add_faces` writes them.  The check and the write happen under the
        gallery's lock in the database (:meth:`_lock_gallery`), so two enrolments of one source,
        in any processes, enrol it once.  A source without a hash is always written.
        """
        if not sources:
            return [], self.last_seq(gallery.id)
        with self.engine.begin() as c:
            self._lock_gallery(c, gallery.id)
            identities = self._identity_ids(c, gallery.id, [f for s in sources for f in s])
            wanted = {
                (identities[key[0]], key[1])
                for key in map(_source_key, sources)
                if key is not None and key[0] in identities
            }
            before = self._source_faces(c, gallery.id, wanted)
            # Per source: a result (already enrolled), the position of the earlier source of this
            # call it repeats, or None (to be written).
            plan: list[SourceResult | int | None] = []
            first: dict[tuple[str, str], int] = {}
            for k, source in enumerate(sources):
                key = _source_key(source)
                if key is None:
                    plan.append(None)
                elif (found := before.get((identities.get(key[0], -1), key[1]))) is not None:
                    plan.append(SourceResult(tuple(found), True))
                elif key in first:
                    plan.append(first[key])
                else:
                    first[key] = k
                    plan.append(None)
            new = [f for source, p in zip(sources, plan, strict=True) if p is None for f in source]
            if new:
                ids, identity_ids = self._write_faces(c, gallery, new, identities, created)
                seq = self._log(c, gallery.id, "add", ids)
            else:
                ids, identity_ids = [], []
                seq = int(c.execute(_LAST_SEQ, {"gallery_id": gallery.id}).scalar() or 0)
        written = iter(zip(ids, identity_ids, new, strict=True))
        results: list[SourceResult] = []
        for source, p in zip(sources, plan, strict=True):
            if p is None:
                faces = [
                    StoredFace(i, ident, f.detection_score, f.box)
                    for i, ident, f in islice(written, len(source))
                ]
                results.append(SourceResult(tuple(faces), False))
            elif isinstance(p, int):
                results.append(SourceResult(results[p].faces, True))
            else:
                results.append(p)
        return results, seq

    def source_faces(self, gallery_id: int, external_id: str, source_sha256: str) -> list[StoredFace]:
        """The faces the identity holds from that source (none when the identity does not exist),
        by id: read without the gallery's lock, for a look before costly work (a photo's
        decoding and embedding); :meth:`enrol` checks again under the lock."""
        with self.engine.connect() as c:
            identity = c.execute(
                select(IdentityRow.id).where(
                    IdentityRow.gallery_id == gallery_id, IdentityRow.external_id == external_id
                )
            ).scalar()
            if identity is None:
                return []
            return self._source_faces(c, gallery_id, {(identity, source_sha256)}).get(
                (identity, source_sha256), []
            )

    @staticmethod
    def _source_faces(
        c: Connection, gallery_id: int, keys: set[tuple[int, str]]
    ) -> dict[tuple[int, str], list[StoredFace]]:
        """The faces enrolled from each (identity row id, source hash), by id.

        Asked by identity (``identity_id IN (…)``, 10,000 at a time, on the index (identity_id,
        source_sha256), which answers it alone), then the few faces that match by id: SQLite uses
        no index for a row-value IN of pairs (it scanned the whole table)."""
        matched: list[int] = []
        identities = sorted({i for i, _ in keys})
        for start in range(0, len(identities), IN_CHUNK):
            among = _among(c, FaceRow.identity_id, identities[start : start + IN_CHUNK])
            rows = c.execute(select(FaceRow.identity_id, FaceRow.source_sha256, FaceRow.id).where(among))
            matched += [face for identity, digest, face in rows if (identity, digest) in keys]
        found: dict[tuple[int, str], list[StoredFace]] = {}
        matched.sort()
        for start in range(0, len(matched), IN_CHUNK):
            among = _among(c, FaceRow.id, matched[start : start + IN_CHUNK])
            query = _STORED_FACE.where(among, FaceRow.gallery_id == gallery_id)
            for row in c.execute(query.order_by(FaceRow.id)):
                found.setdefault((row[1], row[2] or ""), []).append(_stored_face(row))
        return found

    @staticmethod
    def _identity_ids(c: Connection, gallery_id: int, faces: Sequence[NewFace]) -> dict[str, int]:
        """Row ids of the faces' identities that exist, by external id."""
        wanted = sorted({f.external_id for f in faces})
        rows = c.execute(
            select(IdentityRow.external_id, IdentityRow.id).where(
                IdentityRow.gallery_id == gallery_id, IdentityRow.external_id.in_(wanted)
            )
        )
        return dict(rows.all())

    @staticmethod
    def _write_faces(
        c: Connection,
        gallery: Gallery,
        faces: Sequence[NewFace],
        identities: dict[str, int],
        created: dict[int, Identity] | None,
    ) -> tuple[list[int], list[int]]:
        """Insert the faces, and the identities of theirs not in ``identities`` (added to it): the
        new face ids and their identities' row ids, in order."""
        now = utcnow()
        first: dict[str, NewFace] = {}
        for f in faces:
            if f.external_id not in identities:
                first.setdefault(f.external_id, f)
        if first:
            rows = [
                {
                    "gallery_id": gallery.id,
                    "external_id": eid,
                    "display_name": f.display_name or "",
                    "attributes": f.attributes or {},
                    "created_at": now,
                    "updated_at": now,
                }
                for eid, f in first.items()
            ]
            new_ids = dict(zip(first, insert_rows(c, IdentityRow, rows), strict=True))
            identities.update(new_ids)
            if created is not None:
                for eid, f in first.items():
                    i = new_ids[eid]
                    created[i] = Identity(
                        i, gallery.id, eid, f.display_name or "", dict(f.attributes or {}), now, now
                    )
        face_rows = [
            {
                "gallery_id": gallery.id,
                "identity_id": identities[f.external_id],
                "embedding": np.ascontiguousarray(f.embedding, dtype="<f4").tobytes(),
                "model_version": gallery.model_version,
                "detection_score": f.detection_score,
                "box_left": f.box[0] if f.box else None,
                "box_top": f.box[1] if f.box else None,
                "box_right": f.box[2] if f.box else None,
                "box_bottom": f.box[3] if f.box else None,
                "source_sha256": f.source_sha256,
                "created_at": now,
            }
            for f in faces
        ]
        return insert_rows(c, FaceRow, face_rows), [identities[f.external_id] for f in faces]

    def _log(self, c: Connection, gallery_id: int, op: str, face_ids: Sequence[int]) -> int:
        rows = [{"gallery_id": gallery_id, "op": op, "face_id": i} for i in face_ids]
        return max(insert_rows(c, ChangeRow, rows))

    def delete_faces(self, gallery_id: int, face_ids: Sequence[int]) -> tuple[list[int], int]:
        """Delete faces by id; returns the ids that existed and the last change's sequence number."""
        with self.session() as s, s.begin():
            self._lock_gallery(s.connection(), gallery_id)
            found = list(
                s.scalars(
                    select(FaceRow.id).where(FaceRow.gallery_id == gallery_id, FaceRow.id.in_(list(face_ids)))
                )
            )
            if not found:
                return [], self._last_seq(s, gallery_id)
            s.execute(delete(FaceRow).where(FaceRow.id.in_(found)))
            return found, self._log(s.connection(), gallery_id, "remove", found)

    def face_embeddings(self, gallery_id: int, face_ids: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]:
        with self.session() as s:
            rows = s.execute(
                select(FaceRow.id, FaceRow.embedding).where(
                    FaceRow.gallery_id == gallery_id, FaceRow.id.in_(list(face_ids))
                )
            )
            return {i: np.frombuffer(e, dtype="<f4").copy() for i, e in rows}

    def face_records(
        self, gallery_id: int, face_ids: Sequence[int]
    ) -> dict[int, tuple[int, npt.NDArray[np.float32]]]:
        """Identity row id and embedding of each face id that exists (index replays).  Asked in
        chunks: a replay may ask for a million, and PostgreSQL takes at most 65,535 parameters."""
        out: dict[int, tuple[int, npt.NDArray[np.float32]]] = {}
        ids = list(face_ids)
        with self.session() as s:
            for start in range(0, len(ids), IN_CHUNK):
                rows = s.execute(
                    select(FaceRow.id, FaceRow.identity_id, FaceRow.embedding).where(
                        FaceRow.gallery_id == gallery_id, FaceRow.id.in_(ids[start : start + IN_CHUNK])
                    )
                )
                out.update((i, (ident, np.frombuffer(e, dtype="<f4").copy())) for i, ident, e in rows)
        return out

    def iter_embeddings(
        self, gallery_id: int, dim: int, chunk: int = 50_000, identity_prefix: str = ""
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]]]:
        """Every face of a gallery (with ``identity_prefix``: of the identities whose id starts
        with it) in id order, ``chunk`` at a time: ids, embeddings, identity ids."""
        after = -1
        scope = _prefixed(identity_prefix)
        while True:
            with self.session() as s:
                rows = s.execute(
                    select(FaceRow.id, FaceRow.embedding, FaceRow.identity_id)
                    .where(FaceRow.gallery_id == gallery_id, FaceRow.id > after, *scope)
                    .order_by(FaceRow.id)
                    .limit(chunk)
                ).all()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], np.int64)
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim).copy()
            yield ids, vecs, np.array([r[2] for r in rows], np.int64)
            after = int(ids[-1])

    # ---- identities ---------------------------------------------------------------------------
    def _identity_rows(self, gallery_id: int, *where: Any, limit: int | None = None) -> list[Identity]:
        """Identities as Core rows (no ORM objects: identify's hot path and the cache warm-up)."""
        t = IdentityRow.__table__
        columns = (
            t.c.id,
            t.c.gallery_id,
            t.c.external_id,
            t.c.display_name,
            t.c.attributes,
            t.c.created_at,
            t.c.updated_at,
        )
        query = select(*columns).where(t.c.gallery_id == gallery_id, *where).order_by(t.c.id).limit(limit)
        with self.engine.connect() as c:
            return [Identity(r[0], r[1], r[2], r[3], dict(r[4] or {}), r[5], r[6]) for r in c.execute(query)]

    def identities_by_id(self, gallery_id: int, identity_ids: Sequence[int]) -> dict[int, Identity]:
        """Identity rows by row id, in one query (identify's metadata lookup)."""
        if not identity_ids:
            return {}
        rows = self._identity_rows(gallery_id, IdentityRow.__table__.c.id.in_(list(identity_ids)))
        return {r.id: r for r in rows}

    def iter_identity_names(
        self, gallery_id: int, chunk: int = 50_000
    ) -> Iterator[list[tuple[int, str, str, str]]]:
        """Every identity of a gallery as (row id, external id, display name, attributes as the
        stored JSON text), in row-id order, ``chunk`` at a time: the cache warm-up, which needs
        no more.  Reading text skips the JSON decoding and the timestamps, which were two thirds
        of the warm-up's time (1M identities: 12 s before, see benchmarks/startup.py)."""
        t = IdentityRow.__table__
        columns = (t.c.id, t.c.external_id, t.c.display_name, sql_cast(t.c.attributes, Text))
        after = -1
        while True:
            query = select(*columns).where(t.c.gallery_id == gallery_id, t.c.id > after).order_by(t.c.id)
            with self.engine.connect() as c:
                rows = [(r[0], r[1], r[2], r[3]) for r in c.execute(query.limit(chunk))]
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def get_identity(self, gallery_id: int, external_id: str) -> Identity | None:
        with self.session() as s:
            row = s.scalars(
                select(IdentityRow).where(
                    IdentityRow.gallery_id == gallery_id, IdentityRow.external_id == external_id
                )
            ).one_or_none()
            if row is None:
                return None
            face_ids = s.scalars(
                select(FaceRow.id).where(FaceRow.identity_id == row.id).order_by(FaceRow.id)
            ).all()
            return _identity(row, face_ids)

    def list_identities(self, gallery_id: int, page_size: int, after: str | None = None) -> list[Identity]:
        """Identities ordered by external id, after the given one (keyset paging: stable under writes)."""
        with self.session() as s:
            q = select(IdentityRow).where(IdentityRow.gallery_id == gallery_id)
            if after is not None:
                q = q.where(IdentityRow.external_id > after)
            rows = s.scalars(q.order_by(IdentityRow.external_id).limit(page_size)).all()
            face_ids: dict[int, list[int]] = {r.id: [] for r in rows}
            if rows:
                for fid, iid in s.execute(
                    select(FaceRow.id, FaceRow.identity_id)
                    .where(FaceRow.identity_id.in_(list(face_ids)))
                    .order_by(FaceRow.id)
                ):
                    face_ids[iid].append(fid)
            return [_identity(r, face_ids[r.id]) for r in rows]

    def update_identity(
        self, gallery_id: int, external_id: str, display_name: str | None, attributes: dict[str, Any] | None
    ) -> Identity | None:
        """Change an identity's metadata; logged as an "update" change of its row id (other
        processes serving the store drop their cached copy)."""
        with self.session() as s, s.begin():
            self._lock_gallery(s.connection(), gallery_id)
            values: dict[str, Any] = {"updated_at": utcnow()}
            if display_name is not None:
                values["display_name"] = display_name
            if attributes is not None:
                values["attributes"] = attributes
            ident = s.scalars(
                update(IdentityRow)
                .where(IdentityRow.gallery_id == gallery_id, IdentityRow.external_id == external_id)
                .values(**values)
                .returning(IdentityRow.id)
            ).one_or_none()
            if ident is None:
                return None
            self._log(s.connection(), gallery_id, "update", [ident])
        return self.get_identity(gallery_id, external_id)

    def move_faces(
        self,
        gallery_id: int,
        face_ids: Sequence[int],
        external_id: str,
        new: NewIdentity | None = None,
    ) -> Moved:
        """Put faces under one identity in one transaction: a new one (``new``: its metadata;
        AlreadyExistsError when the id is taken, unless it already holds every one of the faces:
        a retried promotion), or an existing one (NotFoundError when there is none).  Faces no
        longer in the gallery are skipped.  Each moved face is logged as "remove" then "add", so
        that an index replaying the log re-adds it under its new identity; identities left with
        no face are reported, not deleted (their metadata may matter to the caller)."""
        with self.session() as s, s.begin():
            c = s.connection()
            self._lock_gallery(c, gallery_id)
            target = c.execute(
                select(IdentityRow.id).where(
                    IdentityRow.gallery_id == gallery_id, IdentityRow.external_id == external_id
                )
            ).scalar_one_or_none()
            faces = dict(
                c.execute(
                    select(FaceRow.id, FaceRow.identity_id).where(
                        FaceRow.gallery_id == gallery_id, FaceRow.id.in_(list(face_ids))
                    )
                ).all()
            )
            if new is not None and target is not None and set(faces.values()) != {target}:
                raise AlreadyExistsError(
                    f"identity {external_id!r} already exists: merge the cluster into it (MergeCluster), or "
                    f"promote it under another identity id"
                )
            if new is None and target is None:
                raise NotFoundError(
                    f"identity {external_id!r} does not exist: promote the cluster to create it"
                )
            created = target is None
            if target is None:
                assert new is not None
                now = utcnow()
                [target] = insert_rows(
                    c,
                    IdentityRow,
                    [
                        {
                            "gallery_id": gallery_id,
                            "external_id": external_id,
                            "display_name": new.display_name or "",
                            "attributes": new.attributes or {},
                            "created_at": now,
                            "updated_at": now,
                        }
                    ],
                )
            moved = sorted(f for f, owner in faces.items() if owner != target)
            emptied: list[str] = []
            if not moved:
                seq = self._last_seq(s, gallery_id)
            else:
                c.execute(update(FaceRow).where(FaceRow.id.in_(moved)).values(identity_id=target))
                c.execute(update(IdentityRow).where(IdentityRow.id == target).values(updated_at=utcnow()))
                self._log(c, gallery_id, "remove", moved)
                seq = self._log(c, gallery_id, "add", moved)
                left = sorted({faces[f] for f in moved})
                still = set(c.scalars(select(FaceRow.identity_id).where(FaceRow.identity_id.in_(left))))
                emptied = list(
                    c.scalars(
                        select(IdentityRow.external_id)
                        .where(IdentityRow.id.in_([i for i in left if i not in still]))
                        .order_by(IdentityRow.external_id)
                    )
                )
        identity = self.get_identity(gallery_id, external_id)
        assert identity is not None
        return Moved(identity, moved, emptied, seq, created)

    def delete_identity(self, gallery_id: int, external_id: str) -> tuple[list[int], int] | None:
        """Delete an identity and its faces; returns the removed face ids and the last change's seq."""
        with self.session() as s, s.begin():
            self._lock_gallery(s.connection(), gallery_id)
            ident = s.scalars(
                select(IdentityRow.id).where(
                    IdentityRow.gallery_id == gallery_id, IdentityRow.external_id == external_id
                )
            ).one_or_none()
            if ident is None:
                return None
            face_ids = list(s.scalars(select(FaceRow.id).where(FaceRow.identity_id == ident)))
            s.execute(delete(FaceRow).where(FaceRow.identity_id == ident))
            s.execute(delete(IdentityRow).where(IdentityRow.id == ident))
            if face_ids:
                self._log(s.connection(), gallery_id, "remove", face_ids)
            # Processes that cached the identity's row drop it (SQLite may hand its id out again).
            return face_ids, self._log(s.connection(), gallery_id, "update", [ident])

    # ---- change log ---------------------------------------------------------------------------
    def _last_seq(self, s: Session, gallery_id: int) -> int:
        return int(
            s.scalar(
                select(func.coalesce(func.max(ChangeRow.seq), 0)).where(ChangeRow.gallery_id == gallery_id)
            )
            or 0
        )

    def last_seq(self, gallery_id: int) -> int:
        """The gallery's last change (0: none).  On a plain connection, not an ORM session: with a
        shared store every search asks it, and a session costs 6× the query."""
        with self.engine.connect() as c:
            return int(c.execute(_LAST_SEQ, {"gallery_id": gallery_id}).scalar() or 0)

    def changes_since(self, gallery_id: int, seq: int) -> list[Change]:
        with self.session() as s:
            rows = s.execute(
                select(ChangeRow.seq, ChangeRow.op, ChangeRow.face_id)
                .where(ChangeRow.gallery_id == gallery_id, ChangeRow.seq > seq)
                .order_by(ChangeRow.seq)
            )
            return [Change(*r) for r in rows]

    def count_faces(self, gallery_id: int, identity_prefix: str = "") -> int:
        """The gallery's faces (with ``identity_prefix``: under the identities whose id starts with it)."""
        query = select(func.count()).select_from(FaceRow).where(FaceRow.gallery_id == gallery_id)
        with self.session() as s:
            return int(s.scalar(query.where(*_prefixed(identity_prefix))) or 0)

    def last_seqs(self) -> dict[int, int]:
        """Every gallery's last change, by gallery id, in one query (monitoring; the change log
        holds the changes since the last trim, about ``snapshot_every`` per gallery)."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(ChangeRow.gallery_id, func.max(ChangeRow.seq)).group_by(ChangeRow.gallery_id)
            )
            return {int(g): int(seq or 0) for g, seq in rows}

    def identity_counts(self) -> dict[int, int]:
        """Every gallery's number of identities, by gallery id, in one query (monitoring)."""
        with self.engine.connect() as c:
            rows = c.execute(select(IdentityRow.gallery_id, func.count()).group_by(IdentityRow.gallery_id))
            return {int(g): int(n) for g, n in rows}

    def count_identities(self, gallery_id: int) -> int:
        with self.session() as s:
            return int(
                s.scalar(
                    select(func.count()).select_from(IdentityRow).where(IdentityRow.gallery_id == gallery_id)
                )
                or 0
            )

    def trim_changes(self, gallery_id: int, up_to_seq: int) -> int:
        """Drop the gallery's change-log rows up to ``up_to_seq`` (what a saved snapshot already
        reflects); returns how many went.

        One ``"trim"`` row takes their place, its ``face_id`` the highest sequence number dropped
        (of an add, remove or update; an earlier trim row's own figure carries over).  It keeps
        two promises the dropped rows kept: the gallery's ``last_seq`` never goes back (a snapshot
        "ahead of the store" would be refused), and a reader replaying from a point before that
        figure learns that changes it needed are gone (it rebuilds its index from the store;
        ``FaceService._replay``).  So the log of a gallery holds at most one trim row, and after
        a trim nothing older than ``up_to_seq`` but that row.  Nothing happens (0) when no row but
        a trim row is that old.
        """
        with self.session() as s, s.begin():
            self._lock_gallery(s.connection(), gallery_id)  # the trim row's seq is in commit order
            old = (ChangeRow.gallery_id == gallery_id, ChangeRow.seq <= up_to_seq)
            top = s.scalar(select(func.max(ChangeRow.seq)).where(*old, ChangeRow.op != "trim"))
            if top is None:
                return 0
            carried = s.scalar(select(func.max(ChangeRow.face_id)).where(*old, ChangeRow.op == "trim"))
            dropped = _rowcount(s.execute(delete(ChangeRow).where(*old)))
            self._log(s.connection(), gallery_id, "trim", [max(int(top), int(carried or 0))])
            return dropped

    def count_changes(self, gallery_id: int | None = None) -> int:
        """Rows in the change log: the gallery's, or all of them."""
        query = select(func.count()).select_from(ChangeRow)
        if gallery_id is not None:
            query = query.where(ChangeRow.gallery_id == gallery_id)
        with self.engine.connect() as c:
            return int(c.execute(query).scalar() or 0)

    def checkpoint(self, attempts: int = 40, pause: float = 0.05, busy_ms: int = 250) -> bool:
        """SQLite: move the write-ahead log into the database file and truncate it to 0 bytes
        (``PRAGMA wal_checkpoint(TRUNCATE)``), so that no page an erased row was on survives in
        the log; True when done, and always on other databases (nothing to do).

        The log keeps every page version written since it was last reset, an erased embedding's
        among them, until the last connection closes; with ``secure_delete`` the database file
        itself holds only the overwritten page once checkpointed.  TRUNCATE waits for readers
        still on an older snapshot and holds new writers back meanwhile, so it waits at most
        ``busy_ms`` at a time (not the 10 s busy timeout of the store's writes) and is tried
        ``attempts`` times, ``pause`` s apart (2 s at most in all, by default), while the
        store's reads and writes, each a few milliseconds, go on in between.
        """
        if self.engine.dialect.name != "sqlite":
            return True
        for attempt in range(attempts):
            with self.engine.connect() as c:
                c.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_ms)}")
                try:
                    busy, _, _ = c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                finally:
                    c.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if busy == 0:
                return True
            if attempt + 1 < attempts:
                time.sleep(pause)
        return False


#: Any error of the database layer (a write whose outcome may be unknown).
DatabaseError = sqlalchemy.exc.SQLAlchemyError
#: A uniqueness constraint refused a write (e.g. a gallery name taken meanwhile).
IntegrityError = sqlalchemy.exc.IntegrityError


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means "cannot reach the database now" (worth retrying)."""
    return isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
    )
