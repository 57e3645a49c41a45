"""The engine service: the one API the gRPC server calls (it never sees protobuf).

Galleries of identities, each with one or more enrolled faces.  SQL (the
:class:`~faceid.engine.store.Store`) is the source of truth; each gallery's
:class:`~faceid.engine.index.FaissGalleryIndex` is derived from it:

* a write commits in SQL first, then updates the index, both under the
  gallery's write lock, so the change log's order is the index's order; a call
  is acknowledged only after its commit;
* on start each gallery's index loads its snapshot and replays the changes after
  the snapshot's sequence number; a missing, corrupt or inconsistent snapshot
  (face counts differ) is rebuilt from the faces table;
* snapshots are written on close and every ``snapshot_every`` changes; each one lets the change
  log drop what it reflects (:meth:`FaceService._trim`: at once with one process, once the
  snapshot is ``change_log_keep_seconds`` old when processes share the store);
* erasure: within ``erasure_seconds`` (5 s) of a delete's acknowledgement, also after a crash
  and restart, no file in the data directory holds an erased embedding: an erasure pass
  (:meth:`FaceService.erase_now`) rewrites the snapshots that held them and empties SQLite's
  write-ahead log into the database file, where ``secure_delete`` has overwritten them.

Scores: ``distance`` is the Euclidean distance between unit-length embeddings
(0 … 2, smaller = more alike) and ``similarity`` the cosine, ``1 − distance²/2``
(−1 … 1, larger = more alike); a pair *matches* when its distance is below the
threshold (the model's default, calibrated at FMR 1e-3 on LFW, or the caller's).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy.exc
from sqlalchemy import event

from faceid.engine import limits
from faceid.engine.config import PipelineConfig
from faceid.engine.detect import Box
from faceid.engine.errors import (
    AlreadyExistsError,
    FaceIdError,
    FailedPreconditionError,
    InvalidInputError,
    ModelError,
    NotFoundError,
    UnavailableError,
)
from faceid.engine.index import FaissGalleryIndex, IndexConfig, IndexStats, SearchParams, SnapshotError
from faceid.engine.migrate import upgrade
from faceid.engine.models import DLIB_RESNET_V1, EmbeddingModel
from faceid.engine.pipeline import FacePipeline
from faceid.engine.store import (
    Change,
    Gallery,
    Identity,
    NewFace,
    SourceResult,
    Store,
    StoredFace,
    embedding_sha256,
    make_engine,
    sha256_hex,
)
from faceid.engine.weights import models_source

log = logging.getLogger("faceid.service")

#: Called right before a write's transaction starts and again right before its COMMIT (in the
#: thread that writes); raises (e.g. ``DeadlineExceededError``) to write nothing.  The gRPC layer
#: passes one that refuses once the call was cancelled or its deadline is too close.
Proceed = Callable[[], None]


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the engine needs to run, in one typed place."""

    data_dir: Path = Path("data")
    #: SQLAlchemy URL; default: SQLite file ``faceid.db`` in the data directory.
    database_url: str | None = None
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    #: Write a gallery's index snapshot after this many changes (0: only on close).
    snapshot_every: int = 100_000
    #: Largest top_k a caller may ask for.
    max_top_k: int = 100
    #: Identity rows kept in memory for identify's results (warmed at start, filled on enrol);
    #: beyond it the least recently used go, and identify reads them from SQL in one query.
    identity_cache: int = 1_000_000
    #: Other processes serve the same store (``faceid serve --processes N``): before each search
    #: and write this one catches up with the changes they logged (one indexed query when there
    #: are none), so a caller reads its own writes whichever process answers.
    shared: bool = False
    #: With a shared store, also catch up in the background this often (seconds), so that a
    #: process no search reached meanwhile does not meet a long backlog at its next search.
    sync_seconds: float = 1.0
    #: This process writes index snapshots and clears what a crashed one left: of several
    #: processes sharing a store, only the first does.
    snapshots: bool = True
    #: Erasure bound, seconds: this long after a delete is acknowledged (an identity, a face, a
    #: gallery), also when the process was killed meanwhile and restarted, no file in the data
    #: directory holds the erased embeddings (the snapshots that held them are rewritten, SQLite's
    #: write-ahead log is emptied into the database file).  A pass starts min(1 s, bound / 5)
    #: after the first delete that needs one, gathering the deletes that come meanwhile; the bound
    #: holds while rewriting the affected snapshots takes under (bound − that) / 2 (a snapshot of
    #: 100,000 faces: ~0.1 s).  With a shared store the process that writes snapshots hears of
    #: another's delete within ``sync_seconds``, which adds to the bound.  PostgreSQL keeps a
    #: deleted row's bytes in its own files regardless (docs/reliability.md).  0: erase only at
    #: close (the behaviour before).
    erasure_seconds: float = 5.0
    #: Shared store: the change log is trimmed up to a snapshot only once the snapshot is this old
    #: (seconds), so that the other processes, which catch up every ``sync_seconds``, have replayed
    #: what is dropped; one that has not (stalled that long) finds the log's "trim" row past its
    #: position and rebuilds its index from the store.  One process alone trims at each snapshot.
    change_log_keep_seconds: float = 300.0

    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'faceid.db'}"


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


@dataclass
class _GalleryState:
    gallery: Gallery
    index: FaissGalleryIndex
    applied_seq: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    since_snapshot: int = 0
    snapshotting: bool = False
    #: A store write failed: it may have committed all the same (the connection died after COMMIT),
    #: so the next write first replays the change log from ``applied_seq``.
    uncertain: bool = False
    #: Another process deleted the gallery (shared store): ``_state`` takes it out of the registry.
    dropped: bool = False
    #: Faces were removed since the snapshot on disk was written: it may hold their embeddings,
    #: so the next erasure pass rewrites it.
    erased: bool = False
    #: (monotonic time, change sequence number) of the snapshots written, for trimming the log.
    saved: list[tuple[float, int]] = field(default_factory=list)
    #: The change log is trimmed up to here.
    trimmed_to: int = 0


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means "cannot reach the database now" (worth retrying)."""
    return isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
    )


_Packed = tuple[int, int, str, str, str, datetime, datetime]


def _pack(i: Identity) -> _Packed:
    return (
        i.id,
        i.gallery_id,
        i.external_id,
        i.display_name,
        json.dumps(i.attributes) if i.attributes else "",  # most have none: no JSON work
        i.created_at,
        i.updated_at,
    )


class IdentityCache:
    """Identity rows by row id, least recently used out first; writers invalidate under the gallery lock.

    Rows are kept as tuples of strings, numbers and datetimes, which Python's cycle collector stops
    tracking: a million cached Identity objects (each with its attributes dict) made every full
    collection stop the server for half a second.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._rows: dict[int, _Packed] = {}  # in use order (a plain dict: the collector skims it)
        self._lock = threading.Lock()

    def get_many(self, ids: set[int]) -> tuple[dict[int, _Packed], set[int]]:
        """The cached rows of ``ids`` (packed: a search reads three fields, and unpacking every
        row would cost it more than its own Python) and the ids not cached."""
        found: dict[int, _Packed] = {}
        with self._lock:
            for i in ids:
                row = self._rows.pop(i, None)
                if row is not None:
                    self._rows[i] = row  # now the most recently used
                    found[i] = row
        return found, ids - found.keys()

    def put_many(self, rows: dict[int, Identity]) -> None:
        packed = {i: _pack(r) for i, r in rows.items()}
        with self._lock:
            self._rows.update(packed)
            for old in list(itertools.islice(self._rows, max(0, len(self._rows) - self.capacity))):
                del self._rows[old]  # the least recently used

    def discard(self, identity_id: int | None) -> None:
        with self._lock:
            self._rows.pop(identity_id if identity_id is not None else -1, None)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


def _enrolled(source: Sequence[NewFace], result: SourceResult) -> list[EnrolledFace]:
    """A source's faces as the API reports them."""
    return [_enrolled_face(source[0].external_id, face, result.already) for face in result.faces]


def _enrolled_face(external_id: str, face: StoredFace, already: bool) -> EnrolledFace:
    box = Box(*face.box) if face.box is not None else None
    return EnrolledFace(face.id, external_id, box, face.detection_score, already)


def similarity(distance: float) -> float:
    return 1.0 - distance * distance / 2.0


def _distinct(
    distances: list[float], face_ids: list[int], groups: list[int], top_k: int
) -> list[tuple[int, int, float]]:
    """The first ``top_k`` identities among a probe's faces (nearest first), each with its nearest
    face: (face id, identity row id, distance)."""
    seen: set[int] = set()
    best: list[tuple[int, int, float]] = []
    for d, fid, gid in zip(distances, face_ids, groups, strict=True):
        if gid < 0 or gid in seen:  # removed meanwhile, or a worse face of a listed identity
            continue
        seen.add(gid)
        best.append((fid, gid, d))
        if len(best) == top_k:
            break
    return best


def encode_page_token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded))["after"]
        if not isinstance(after, str):
            raise TypeError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidInputError("page_token is not one this server issued; start again without it") from None


class FaceService:
    """Galleries, enrolment, identify and verify; thread-safe; one per process and database."""

    def __init__(self, config: ServiceConfig, pipeline: FacePipeline | None = None) -> None:
        self.config = config
        self.model: EmbeddingModel = DLIB_RESNET_V1
        self._pipeline = pipeline
        self._pipeline_lock = threading.Lock()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "index").mkdir(exist_ok=True)
        for leftover in (config.data_dir / "index").glob("*.tmp") if config.snapshots else ():
            leftover.unlink(missing_ok=True)  # a snapshot cut short by a crash
        # Stored attributes are read through limits.read_stored_json: a row that cannot be read
        # (nested past what Python's json can take, as an older version accepted) reads as {}.
        self.store = Store(make_engine(config.url(), json_deserializer=limits.read_stored_json))
        #: The check of the write this thread is about to commit (see ``Proceed``), run by the
        #: engine's "commit" event right before COMMIT is sent.
        self._commit_check = threading.local()
        event.listen(self.store.engine, "commit", self._before_commit)
        self._galleries: dict[str, _GalleryState] = {}
        self._identity_cache = IdentityCache(config.identity_cache)
        self._registry_lock = threading.RLock()  # delete_gallery looks a gallery up under it
        #: An erasure pass is due (the erasure thread waits for it).
        self._erase_due = threading.Event()
        upgrade(self.store.engine)
        for gallery in self.store.list_galleries():
            self._galleries[gallery.name] = self._open_index(gallery)
        self._warm_identity_cache()
        self._closing = threading.Event()
        if config.shared:
            threading.Thread(target=self._follow, name="faceid-follow", daemon=True).start()
        self._eraser: threading.Thread | None = None
        if config.erasure_seconds > 0:
            # Before serving: a crash may have left erased rows in SQLite's log, erased vectors in
            # a snapshot (the replayed removes), or the snapshot of a deleted gallery.
            self._erase_due.clear()
            try:
                self.erase_now()
            except Exception:  # the thread tries again
                log.exception("erasure pass at start failed")
                self._erase_due.set()
            self._eraser = threading.Thread(target=self._erase_loop, name="faceid-erasure", daemon=True)
            self._eraser.start()

    def _follow(self) -> None:
        """Shared store: catch every gallery up now and then (searches and writes also do)."""
        while not self._closing.wait(self.config.sync_seconds):
            for name in list(self._galleries):
                try:
                    self._current(name)
                except NotFoundError:
                    continue
                except Exception:  # the database is down, say: the next round tries again
                    log.exception("gallery %s: catching up with the other processes failed", name)

    @property
    def pipeline(self) -> FacePipeline:
        """The face pipeline, loaded on first use (embedding-only deployments never load it).

        Model files that cannot be loaded (missing, damaged) raise :class:`ModelError`, a fault of
        the server, not of the request; each call that needs the model tries again."""
        if self._pipeline is None:
            with self._pipeline_lock:
                if self._pipeline is None:
                    try:
                        self._pipeline = FacePipeline(self.config.pipeline)
                    except ModelError:
                        raise
                    except Exception as exc:  # a damaged file: dlib's RuntimeError, DlibFormatError
                        raise ModelError(
                            f"the face model files could not be loaded ({type(exc).__name__}: {exc}); "
                            f"they come from {models_source()}"
                        ) from exc
        return self._pipeline

    def _before_commit(self, _connection: object) -> None:
        check: Proceed | None = getattr(self._commit_check, "proceed", None)
        if check is not None:
            check()

    # ---- index lifecycle --------------------------------------------------------------------------
    def _snapshot_path(self, gallery: Gallery) -> Path:
        return self.config.data_dir / "index" / f"gallery-{gallery.id}.faceidx"

    def _open_index(self, gallery: Gallery) -> _GalleryState:
        path = self._snapshot_path(gallery)
        last = self.store.last_seq(gallery.id)
        try:
            index, seq = FaissGalleryIndex.load(path, self.config.index)
            if seq > last or index.dim != gallery.dim:
                raise SnapshotError(f"{path}: snapshot at change {seq} is ahead of the store ({last})")
            replayed = self._replay(gallery, index, seq)
            if index.count() != self.store.count_faces(gallery.id):
                raise SnapshotError(f"{path}: index and store disagree on the number of faces")
            log.info(
                "gallery %s: loaded snapshot at change %d, replayed %d changes",
                gallery.name,
                seq,
                len(replayed),
            )
            state = _GalleryState(gallery, index, max(seq, last, *(c.seq for c in replayed[-1:])))
            # Faces removed after the snapshot was written (a crash came before the erasure pass):
            # the file still holds them.
            erased = any(c.op == "remove" for c in replayed)
        except SnapshotError as exc:
            erased = path.exists()  # a file the index was not loaded from: whatever it holds goes
            if erased:
                log.warning("gallery %s: %s; rebuilding the index from the store", gallery.name, exc)
            state = _GalleryState(gallery, self._rebuild(gallery), last)
        if erased:
            state.erased = True
            self._erase_due.set()
        return state

    def _replay(self, gallery: Gallery, index: FaissGalleryIndex, seq: int) -> list[Change]:
        """Apply the logged changes after ``seq`` to the index, and return them.  Idempotent: a
        face the index holds is not added again, one it lacks is not removed, and an added face
        that is gone from the store by now is skipped."""
        changes = self.store.changes_since(gallery.id, seq)
        trimmed = max((c.face_id for c in changes if c.op == "trim"), default=0)
        if trimmed > seq:  # see Store.trim_changes
            raise SnapshotError(
                f"the change log was trimmed up to change {trimmed}, past this index's change {seq}: "
                "changes it has not applied are gone"
            )
        added = [c.face_id for c in changes if c.op == "add"]
        held = {f for f, h in zip(added, index.contains(added), strict=True) if h} if added else set()
        apply: set[int] = set()  # the seq of each add to apply: the face was not held at that point
        removed: set[int] = set()
        for c in changes:
            if c.op == "remove":
                removed.add(c.face_id)
            elif c.op == "add" and (c.face_id not in held or c.face_id in removed):
                apply.add(c.seq)  # (a removed id can come back: SQLite reuses a deleted last row's id)
        wanted = [c.face_id for c in changes if c.seq in apply]
        records = self.store.face_records(gallery.id, wanted) if wanted else {}
        run: list[int] = []  # consecutive adds, applied in one call

        def flush() -> None:
            if run:
                index.add(run, np.stack([records[f][1] for f in run]), [records[f][0] for f in run])
                run.clear()

        for c in changes:
            if c.seq in apply and c.face_id in records:
                run.append(c.face_id)
            elif c.op == "remove":
                flush()
                index.remove([c.face_id])
        flush()
        return changes

    def _catch_up(self, state: _GalleryState) -> None:
        """Under the gallery's lock: apply what other processes logged since ``applied_seq``.

        Identities they updated or deleted leave the cache; a dropped gallery leaves the registry.
        Faces they removed make the snapshot due for rewriting (erasure).  An index so far behind
        that the log was trimmed past it (stalled longer than ``change_log_keep_seconds``) is
        rebuilt from the store.
        """
        try:
            changes = self._replay(state.gallery, state.index, state.applied_seq)
        except SnapshotError as exc:
            log.warning("gallery %s: %s; rebuilding the index from the store", state.gallery.name, exc)
            last = self.store.last_seq(state.gallery.id)
            state.index = self._rebuild(state.gallery)
            state.applied_seq = max(state.applied_seq, last)
            self._identity_cache.clear()  # the updates it missed are gone from the log too
            state.erased = True
            self._erase_due.set()
            return
        if not changes:
            return
        state.applied_seq = changes[-1].seq
        if any(c.op == "remove" for c in changes):
            state.erased = True
            self._erase_due.set()
        for c in changes:
            if c.op == "update":
                self._identity_cache.discard(c.face_id)  # an identity's row id, for "update"
        if any(c.op == "drop" for c in changes):
            state.dropped = True  # _state takes it out of the registry (this thread holds state.lock)
            self._identity_cache.clear()

    def _warm_identity_cache(self) -> None:
        """Fill the identity cache at start.  Only a head start: a gallery whose rows cannot be
        read stops its own warm-up, in the log, and its identities are read when a search needs
        them; no stored row can keep the server from starting (stored attributes that cannot be
        decoded already read as empty, see ``limits.read_stored_json``)."""
        room = self._identity_cache.capacity
        for state in self._galleries.values():
            try:
                for rows in self.store.iter_identities(state.gallery.id):
                    if room <= 0:
                        return
                    self._identity_cache.put_many({r.id: r for r in rows[:room]})
                    room -= len(rows)
            except (sqlalchemy.exc.SQLAlchemyError, ValueError, TypeError, RecursionError):
                log.exception(
                    "gallery %s: warming the identity cache stopped at a row that could not be read; "
                    "its identities are read from the database when needed",
                    state.gallery.name,
                )

    def _rebuild(self, gallery: Gallery) -> FaissGalleryIndex:
        index = FaissGalleryIndex(gallery.dim, replace(self.config.index, background=False))
        for ids, vectors, identity_ids in self.store.iter_embeddings(gallery.id, gallery.dim):
            index.add(ids, vectors, identity_ids)
        index.config = self.config.index
        return index

    def _current(self, name: str) -> _GalleryState:
        """The gallery's state for a search: with a shared store, caught up with what other
        processes logged (one indexed query when they logged nothing)."""
        state = self._state(name)
        if not self.config.shared:
            return state
        try:
            behind = self.store.last_seq(state.gallery.id) > state.applied_seq
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if not is_unavailable(exc):
                raise
            log.warning("gallery %s: database unavailable, searching the index as it is", name)
            return state  # reads stay up while the database is down; writes get UNAVAILABLE
        if behind:
            with state.lock:
                self._catch_up(state)
            if state.dropped:
                return self._state(name)  # NotFoundError, or a new gallery of that name
        return state

    def _applied(self, state: _GalleryState, seq: int) -> None:
        """After this process's own write, logged up to ``seq``: with a shared store the index
        follows the log itself (its own changes are skipped as already there), else it is at ``seq``."""
        if self.config.shared:
            self._catch_up(state)
        else:
            state.applied_seq = max(seq, state.applied_seq)

    @contextmanager
    def _writing(self, state: _GalleryState) -> Iterator[None]:
        """The gallery's write lock, with the index caught up first after a write whose outcome
        is unknown, and always with a shared store."""
        with state.lock:
            try:
                if state.uncertain or self.config.shared:
                    before = state.applied_seq
                    self._catch_up(state)
                    if state.uncertain:
                        log.info(
                            "gallery %s: caught up to change %d (from %d) after a failed write",
                            state.gallery.name,
                            state.applied_seq,
                            before,
                        )
                    state.uncertain = False
                if state.dropped:
                    raise NotFoundError(f"gallery {state.gallery.name!r} does not exist")
                yield
            except sqlalchemy.exc.SQLAlchemyError as exc:
                state.uncertain = True
                if is_unavailable(exc):  # the cause goes to the log, not to the caller
                    log.warning(
                        "gallery %s: database unavailable: %s", state.gallery.name, str(exc).split("\n")[0]
                    )
                    raise UnavailableError("the database is unavailable; retry later") from None
                raise

    def snapshot(self, name: str) -> None:
        """Write the gallery's index snapshot now (also done on close and every N changes); a
        no-op in a process that does not write snapshots."""
        if not self.config.snapshots:
            return
        state = self._state(name)
        with state.lock:
            self._save(state)

    def _save(self, state: _GalleryState) -> None:
        """Under the gallery's lock: write its snapshot (live faces only: it holds no erased one),
        then trim the change log it makes redundant.  With a shared store the index first catches
        up with the others' changes (unless the database is down: the snapshot is valid as it is)."""
        if self.config.shared:
            try:
                self._catch_up(state)
            except sqlalchemy.exc.SQLAlchemyError as exc:
                if not is_unavailable(exc):
                    raise
            if state.dropped:
                return
        seq = state.applied_seq
        state.index.save(self._snapshot_path(state.gallery), seq)
        state.since_snapshot = 0
        state.erased = False
        self._trim(state, seq)

    def _trim(self, state: _GalleryState, seq: int) -> None:
        """Under the gallery's lock, after a snapshot at change ``seq``: drop the change-log rows
        no reader needs any more (:meth:`Store.trim_changes`), so that the log stops growing.

        The rule: one process alone drops everything up to ``seq`` at once (its next start loads
        that snapshot and replays what comes after).  Processes sharing the store drop only up to
        the newest snapshot written at least ``change_log_keep_seconds`` (300 s) ago: the others
        catch up every ``sync_seconds`` (1 s), so they replayed that far long ago, and one that did
        not finds the trim row past its position and rebuilds its index from the store.  The log
        then holds the changes since the trim point and one "trim" row: about ``snapshot_every``
        rows plus what the keep time adds.  A failure (database down) only postpones the trim.
        """
        now = time.monotonic()
        state.saved.append((now, seq))
        keep = self.config.change_log_keep_seconds if self.config.shared else 0.0
        ripe = [i for i, (t, _) in enumerate(state.saved) if t <= now - keep]
        if not ripe:
            return
        del state.saved[: ripe[-1]]  # the newest ripe entry stays: the next bound is never lower
        bound = state.saved[0][1]
        if bound <= state.trimmed_to:
            return
        try:
            dropped = self.store.trim_changes(state.gallery.id, bound)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            name = state.gallery.name
            log.warning("gallery %s: trimming the change log failed: %s", name, type(exc).__name__)
            return
        state.trimmed_to = bound
        log.info("gallery %s: change log trimmed to change %d (%d rows)", state.gallery.name, bound, dropped)

    def _erase_loop(self) -> None:
        """The erasure thread: a pass min(1 s, erasure_seconds / 5) after an erasure asked for one
        (the deletes of that interval share it); a failed pass is tried again as long after."""
        delay = min(1.0, self.config.erasure_seconds / 5)
        while not self._closing.is_set():
            self._erase_due.wait()
            if self._closing.wait(delay):
                return
            self._erase_due.clear()
            try:
                self.erase_now()
            except Exception:
                log.exception("erasure pass failed; trying again in %.1f s", delay)
                self._erase_due.set()

    def erase_now(self) -> None:
        """One erasure pass: what the erasure thread runs ``erasure_seconds`` after a delete at
        the latest, and the service once at start, before it serves.  It rewrites each snapshot
        that may hold removed faces, deletes the snapshots of deleted galleries (a crash may have
        come before ``delete_gallery`` unlinked its file), and moves SQLite's write-ahead log,
        which holds every page version written since it was last emptied, into the database
        file, truncating it to 0 bytes.  Raises when the log could not be emptied (readers never
        let go for 2 s)."""
        if self.config.snapshots:
            for state in list(self._galleries.values()):
                with state.lock:
                    if not state.erased or state.dropped:
                        continue
                    if self._snapshot_path(state.gallery).exists():
                        self._save(state)
                    state.erased = False
            self._remove_orphan_snapshots()
        if not self.store.checkpoint():
            raise RuntimeError("SQLite's write-ahead log could not be emptied: readers held it throughout")

    def _remove_orphan_snapshots(self) -> None:
        """Delete the snapshot files of galleries the store no longer has (listed before the store
        is asked: a file listed belongs to a gallery created before, so one the store lacks is gone)."""
        files = list((self.config.data_dir / "index").glob("gallery-*.faceidx"))
        if not files:
            return
        known = {g.id for g in self.store.list_galleries()}
        for path in files:
            number = path.name.removeprefix("gallery-").removesuffix(".faceidx")
            if number.isascii() and number.isdigit() and int(number) not in known:
                log.info("removing %s: its gallery was deleted", path.name)
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Snapshot every gallery and release the database.  With a shared store that is every
        gallery in it, also those only other processes served (opened here to be written)."""
        self._closing.set()
        self._erase_due.set()  # wakes the erasure thread, to end
        if self._eraser is not None:
            self._eraser.join(60)
        names = list(self._galleries)
        if self.config.shared and self.config.snapshots:
            names = [g.name for g in self.store.list_galleries()]
        for name in names:
            try:
                self._current(name)  # caught up: the snapshot holds every change logged so far
                self.snapshot(name)
            except NotFoundError:
                continue
        self.store.engine.dispose()

    def _after_write(self, state: _GalleryState, changes: int) -> None:
        state.since_snapshot += changes
        every = self.config.snapshot_every if self.config.snapshots else 0
        if every and state.since_snapshot >= every and not state.snapshotting:
            state.snapshotting = True

            def run() -> None:
                try:
                    self.snapshot(state.gallery.name)
                except Exception:
                    log.exception("gallery %s: snapshot failed", state.gallery.name)
                finally:
                    state.snapshotting = False

            threading.Thread(target=run, name="faceid-snapshot", daemon=True).start()

    # ---- galleries ----------------------------------------------------------------------------
    def _state(self, name: str) -> _GalleryState:
        state = self._galleries.get(name)
        if state is not None and state.dropped:
            with self._registry_lock:
                if self._galleries.get(name) is state:
                    del self._galleries[name]
            state = None
        if state is None and self.config.shared:
            state = self._adopt(name)
        if state is None:
            raise NotFoundError(f"gallery {name!r} does not exist; create it first or check the name")
        return state

    def _adopt(self, name: str) -> _GalleryState | None:
        """A gallery another process created (shared store): open its index here."""
        gallery = self.store.get_gallery(name)
        if gallery is None:
            return None
        with self._registry_lock:
            if name not in self._galleries:
                self._galleries[name] = self._open_index(gallery)
            return self._galleries[name]

    def gallery(self, name: str) -> Gallery:
        """The gallery's record (NotFoundError when there is none); no database work."""
        return self._state(name).gallery

    def create_gallery(self, name: str) -> Gallery:
        limits.check_gallery_id(name)
        with self._registry_lock:
            if name in self._galleries:
                raise AlreadyExistsError(f"gallery {name!r} already exists")
            try:
                gallery = self.store.create_gallery(
                    name, self.model.name, self.model.version, self.model.dim, self.model.metric
                )
            except sqlalchemy.exc.IntegrityError:
                raise AlreadyExistsError(f"gallery {name!r} already exists") from None
            self._galleries[name] = _GalleryState(
                gallery, FaissGalleryIndex(gallery.dim, self.config.index), 0
            )
            return gallery

    def list_galleries(self) -> list[Gallery]:
        if self.config.shared:  # other processes create and delete galleries too
            return self.store.list_galleries()
        return sorted((s.gallery for s in self._galleries.values()), key=lambda g: g.name)

    def delete_gallery(self, name: str) -> None:
        """Delete a gallery: every identity, face and vector in it, and its snapshot."""
        with self._registry_lock:
            state = self._state(name)
            with state.lock:
                self.store.delete_gallery(state.gallery.id)
                self._snapshot_path(state.gallery).unlink(missing_ok=True)
                del self._galleries[name]
                self._identity_cache.clear()
                self._erase_due.set()  # the deleted rows' old pages are in SQLite's log

    # ---- input checks -------------------------------------------------------------------------
    def _check_embedding(self, gallery: Gallery, item: EmbeddingInput) -> npt.NDArray[np.float32]:
        model_id = f"{gallery.model_name}/{gallery.model_version}"
        if item.model and item.model != model_id:
            raise FailedPreconditionError(
                f"the embedding comes from model {item.model!r}; gallery {gallery.name!r} holds {model_id!r} "
                f"embeddings: embed the photo with {model_id}, or send the photo instead"
            )
        v = np.asarray(item.vector, dtype=np.float32).ravel()
        if v.shape != (gallery.dim,):
            raise InvalidInputError(
                f"the embedding has {v.size} values; {model_id} embeddings have {gallery.dim}"
            )
        if not np.isfinite(v).all():
            raise InvalidInputError("the embedding contains NaN or infinite values")
        norm = float(np.linalg.norm(v))
        if abs(norm - 1.0) > 1e-2:
            raise InvalidInputError(
                f"the embedding's length is {norm:.4f}; {model_id} embeddings have unit length: divide it by "
                f"its norm if it is a normalised-later embedding of the same model, or send the photo"
            )
        return v / norm

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= self.config.max_top_k:
            raise InvalidInputError(f"top_k must be between 1 and {self.config.max_top_k}; got {top_k}")

    def decision_threshold(self, threshold: float | None) -> float:
        """The caller's distance threshold, checked, or the model's default when none is given."""
        if threshold is None or threshold == 0:
            return self.model.default_threshold
        if not 0 < threshold <= 2:
            raise InvalidInputError(
                f"threshold is a distance between unit vectors, in (0, 2]; got {threshold}"
            )
        return threshold

    # ---- enrolment ----------------------------------------------------------------------------
    def _enroll(
        self, state: _GalleryState, sources: list[list[NewFace]], proceed: Proceed | None = None
    ) -> list[list[EnrolledFace]]:
        """Enrol sources (each the faces of one photo, or one embedding) in one transaction, then
        add the new faces to the index; the enrolled faces of each source, in order.  A source the
        identity already holds (the same hash: :meth:`Store.enrol`) writes nothing and answers
        with the faces enrolled from it before, marked ``already_enrolled``.  ``proceed`` (see
        :data:`Proceed`) runs under the gallery's lock before the transaction starts and again
        right before its COMMIT; when it raises, the transaction is rolled back: nothing is written."""
        with self._writing(state):
            if proceed is not None:
                proceed()
            created: dict[int, Identity] = {}
            self._commit_check.proceed = proceed
            try:
                results, seq = self.store.enrol(state.gallery, sources, created)
            finally:
                self._commit_check.proceed = None
            new = [
                (face, f)
                for source, result in zip(sources, results, strict=True)
                if not result.already
                for face, f in zip(result.faces, source, strict=True)
            ]
            if self.config.shared:
                # The new faces come back from the log, in order with what other processes
                # committed meanwhile (SQLite may even have re-used the id of a face one of them
                # deleted, which this index still holds until it replays that delete).
                self._catch_up(state)
            else:
                if new:
                    state.index.add(
                        [face.id for face, _ in new],
                        np.stack([f.embedding for _, f in new]),
                        [face.identity_id for face, _ in new],
                    )
                state.applied_seq = max(state.applied_seq, seq)
            self._identity_cache.put_many(created)
            self._after_write(state, len(new))
        return [_enrolled(source, result) for source, result in zip(sources, results, strict=True)]

    def check_enroll_item(self, gallery: Gallery, item: EnrollItem) -> NewFace | FaceIdError:
        """One item to enrol, checked without writing anything: the face to write, or the error
        that refuses it (every field's limit, and the embedding against the gallery's model)."""
        try:
            limits.check_identity_id(item.external_id)
            limits.check_display_name(item.display_name)
            limits.check_attributes(item.attributes)
            vector = self._check_embedding(gallery, item.embedding)
        except FaceIdError as exc:
            return exc
        digest = embedding_sha256(item.embedding.vector)
        return NewFace(item.external_id, vector, item.display_name, item.attributes, source_sha256=digest)

    def enroll_embeddings(
        self,
        gallery: str,
        external_ids: Sequence[str],
        embeddings: Sequence[EmbeddingInput],
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
        proceed: Proceed | None = None,
    ) -> list[EnrolledFace]:
        """Enrol ready embeddings, ``external_ids[i]`` the identity of ``embeddings[i]``."""
        state = self._state(gallery)
        if len(external_ids) != len(embeddings) or not embeddings:
            raise InvalidInputError("give one identity per embedding, and at least one")
        for eid in external_ids:
            limits.check_identity_id(eid)
        limits.check_display_name(display_name)
        limits.check_attributes(attributes)
        sources = [
            [
                NewFace(
                    eid,
                    self._check_embedding(state.gallery, e),
                    display_name,
                    attributes,
                    source_sha256=embedding_sha256(e.vector),
                )
            ]
            for eid, e in zip(external_ids, embeddings, strict=True)
        ]
        return [face for faces in self._enroll(state, sources, proceed) for face in faces]

    def enroll_items(self, gallery: str, items: Sequence[EnrollItem]) -> list[EnrolledFace]:
        """Enrol ready embeddings with per-item identity metadata, all in one transaction: every
        item is checked first, so one bad item refuses the whole call and nothing is written."""
        state = self._state(gallery)
        if not items:
            raise InvalidInputError("give at least one embedding")
        faces = []
        for item in items:
            checked = self.check_enroll_item(state.gallery, item)
            if isinstance(checked, FaceIdError):
                raise checked
            faces.append([checked])
        return [face for enrolled in self._enroll(state, faces) for face in enrolled]

    def enroll_each(
        self, gallery: str, items: Sequence[EnrollItem], proceed: Proceed | None = None
    ) -> list[EnrolledFace | FaceIdError]:
        """Enrol ready embeddings, each item on its own merits: every item is checked first
        (:meth:`check_enroll_item`), then the good ones are written together, in one transaction
        (one COMMIT, whatever their number); a bad item gets its error in its place, and nothing
        of it is written.  With ``proceed`` (see :data:`Proceed`) refusing, nothing at all is."""
        state = self._state(gallery)
        limits.check_batch_size(len(items))
        checked = [self.check_enroll_item(state.gallery, item) for item in items]
        sources = [[c] for c in checked if isinstance(c, NewFace)]
        enrolled = iter(self._enroll(state, sources, proceed) if sources else [])
        return [next(enrolled)[0] if isinstance(c, NewFace) else c for c in checked]

    def enroll_photo(
        self,
        gallery: str,
        external_id: str,
        photo: bytes,
        all_faces: bool = False,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
        proceed: Proceed | None = None,
    ) -> list[EnrolledFace]:
        """Enrol the largest face in the photo (or every face) under ``external_id``; the fields
        are checked before the photo is decoded.  A photo the identity already holds (the same
        bytes) is not decoded again: the answer is the faces enrolled from it before, marked
        ``already_enrolled``, whatever ``all_faces`` says (checked again under the gallery's lock)."""
        state = self._state(gallery)
        limits.check_identity_id(external_id)
        limits.check_display_name(display_name)
        limits.check_attributes(attributes)
        digest = sha256_hex(photo)
        known = self.store.source_faces(state.gallery.id, external_id, digest)
        if known:
            return [_enrolled_face(external_id, face, True) for face in known]
        found = self.pipeline.process(photo)
        if not found:
            raise InvalidInputError(
                "no face was found in the photo; send a photo where the face is at least 40 pixels wide, "
                "upright and not heavily occluded"
            )
        chosen = found if all_faces else found[:1]
        faces = [
            NewFace(
                external_id,
                f.embedding,
                display_name,
                attributes,
                f.detection.score,
                (f.box.left, f.box.top, f.box.right, f.box.bottom),
                digest,
            )
            for f in chosen
        ]
        [enrolled] = self._enroll(state, [faces], proceed)
        return enrolled

    # ---- identify -----------------------------------------------------------------------------
    def _search(
        self,
        state: _GalleryState,
        vectors: npt.NDArray[np.float32],
        top_k: int,
        threshold: float,
        params: SearchParams | None,
    ) -> list[list[Match]]:
        """The ``top_k`` nearest identities of each probe, each with its nearest face.

        The index ranks faces, and an identity may hold many faces near the probe: the first
        search asks for a few times ``top_k`` faces, and a probe whose faces came from fewer than
        ``top_k`` identities while the index had more faces to give (a full page) is searched
        again, four times as deep each round, up to the index's ``max_k`` faces (1,000).  So
        ``top_k`` identities come back whenever the gallery holds that many and the nearest
        ``max_k`` faces include them.  Probes served by the first search (identities with a
        few faces each: the usual gallery) cost what they did before.
        """
        if state.index.count() == 0:
            return [[] for _ in vectors]
        max_k = state.index.config.max_k
        k_faces = min(max_k, max(top_k * 4, top_k + 10))
        # Faces beyond top_k only stand in for identities listed twice: the re-rank covers top_k.
        params = replace(params or SearchParams(), rerank_k=top_k)
        distances, ids, groups = state.index.search_with_groups(vectors, k_faces, params)
        # Per probe: (face id, identity id, distance) of its nearest identities.
        ranked = [
            _distinct(drow, irow, grow, top_k)
            for drow, irow, grow in zip(distances.tolist(), ids.tolist(), groups.tolist(), strict=True)
        ]
        short = [p for p, row in enumerate(ranked) if len(row) < top_k and ids[p, -1] >= 0]
        while short and k_faces < max_k:
            k_faces = min(max_k, k_faces * 4)
            distances, ids, groups = state.index.search_with_groups(vectors[short], k_faces, params)
            rows = zip(short, distances.tolist(), ids.tolist(), groups.tolist(), strict=True)
            for p, drow, irow, grow in rows:
                ranked[p] = _distinct(drow, irow, grow, top_k)
            short = [p for j, p in enumerate(short) if len(ranked[p]) < top_k and ids[j, -1] >= 0]
        identities = self._identities(state.gallery.id, {gid for row in ranked for _, gid, _ in row})
        return [
            [
                Match(
                    ident[2],  # external_id
                    ident[3],  # display_name
                    json.loads(ident[4]) if ident[4] else {},  # attributes
                    fid,
                    d,
                    similarity(d),
                    d < threshold,
                )
                for fid, gid, d in row
                if (ident := identities.get(gid)) is not None  # deleted meanwhile: never an id without a row
            ]
            for row in ranked
        ]

    def _identities(self, gallery_id: int, ids: set[int]) -> dict[int, _Packed]:
        """Identity rows (packed) by row id: from the cache, the rest in one query."""
        found, missing = self._identity_cache.get_many(ids)
        if missing:
            fetched = self.store.identities_by_id(gallery_id, sorted(missing))
            self._identity_cache.put_many(fetched)
            found.update((i, _pack(r)) for i, r in fetched.items())
        return found

    def identify_embeddings(
        self,
        gallery: str,
        embeddings: Sequence[EmbeddingInput],
        top_k: int = 5,
        threshold: float | None = None,
        params: SearchParams | None = None,
    ) -> list[list[Match]]:
        """The ``top_k`` nearest identities of each embedding, best first (one batched search)."""
        state = self._current(gallery)
        self.check_top_k(top_k)
        if not embeddings:
            raise InvalidInputError("give at least one embedding")
        vectors = np.stack([self._check_embedding(state.gallery, e) for e in embeddings])
        return self._search(state, vectors, top_k, self.decision_threshold(threshold), params)

    def identify_photo(
        self,
        gallery: str,
        photo: bytes,
        top_k: int = 5,
        threshold: float | None = None,
        params: SearchParams | None = None,
    ) -> list[FaceMatches]:
        """One result list per face in the photo (largest face first), each with its box."""
        state = self._current(gallery)
        self.check_top_k(top_k)
        faces = self.pipeline.process(photo)
        if not faces:
            return []
        vectors = np.stack([f.embedding for f in faces]).astype(np.float32)
        lists = self._search(state, vectors, top_k, self.decision_threshold(threshold), params)
        return [FaceMatches(f.box, f.detection.score, m) for f, m in zip(faces, lists, strict=True)]

    # ---- verify -------------------------------------------------------------------------------
    def _probe(self, gallery: Gallery, probe: bytes | EmbeddingInput) -> npt.NDArray[np.float32]:
        if isinstance(probe, EmbeddingInput):
            return self._check_embedding(gallery, probe)
        faces = self.pipeline.process(probe)
        if not faces:
            raise InvalidInputError("no face was found in the probe photo")
        return faces[0].embedding.astype(np.float32)

    def verify_identity(
        self, gallery: str, probe: bytes | EmbeddingInput, external_id: str, threshold: float | None = None
    ) -> Verification:
        """Probe against an identity: the distance to its nearest enrolled face."""
        state = self._state(gallery)
        t = self.decision_threshold(threshold)
        identity = self.store.get_identity(state.gallery.id, external_id)
        if identity is None:
            raise NotFoundError(f"identity {external_id!r} does not exist in gallery {gallery!r}")
        if not identity.face_ids:
            raise FailedPreconditionError(f"identity {external_id!r} has no enrolled face to compare with")
        v = self._probe(state.gallery, probe)
        enrolled = self.store.face_embeddings(state.gallery.id, identity.face_ids)
        fids = list(enrolled)
        d = np.linalg.norm(np.stack([enrolled[f] for f in fids]) - v, axis=1)
        best = int(np.argmin(d))
        dist = float(d[best])
        return Verification(dist, similarity(dist), dist < t, t, fids[best])

    def verify_pair(
        self,
        gallery: str,
        a: bytes | EmbeddingInput,
        b: bytes | EmbeddingInput,
        threshold: float | None = None,
    ) -> Verification:
        """Two probes against each other (the gallery names the model they are compared under)."""
        state = self._state(gallery)
        t = self.decision_threshold(threshold)
        dist = float(np.linalg.norm(self._probe(state.gallery, a) - self._probe(state.gallery, b)))
        return Verification(dist, similarity(dist), dist < t, t)

    # ---- identities ---------------------------------------------------------------------------
    def get_identity(self, gallery: str, external_id: str) -> Identity:
        state = self._state(gallery)
        identity = self.store.get_identity(state.gallery.id, external_id)
        if identity is None:
            raise NotFoundError(f"identity {external_id!r} does not exist in gallery {gallery!r}")
        return identity

    def list_identities(
        self, gallery: str, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[Identity], str]:
        """A page of identities in external-id order and the token of the next page ('' at the end)."""
        state = self._state(gallery)
        limits.check_page_size(page_size)
        after = decode_page_token(page_token)
        page = self.store.list_identities(state.gallery.id, page_size + 1, after)
        more = len(page) > page_size
        page = page[:page_size]
        return page, encode_page_token(page[-1].external_id) if more else ""

    def update_identity(
        self,
        gallery: str,
        external_id: str,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Identity:
        state = self._state(gallery)
        limits.check_display_name(display_name)
        limits.check_attributes(attributes)
        with state.lock:
            updated = self.store.update_identity(state.gallery.id, external_id, display_name, attributes)
            self._identity_cache.discard(updated.id if updated else None)
        if updated is None:
            raise NotFoundError(f"identity {external_id!r} does not exist in gallery {gallery!r}")
        return updated

    def delete_identity(self, gallery: str, external_id: str) -> list[int]:
        """Delete an identity with all its faces (store and index); returns the removed face ids."""
        state = self._state(gallery)
        with self._writing(state):
            result = self.store.delete_identity(state.gallery.id, external_id)
            if result is None:
                raise NotFoundError(f"identity {external_id!r} does not exist in gallery {gallery!r}")
            face_ids, seq = result
            state.index.remove(face_ids)
            self._applied(state, seq)
            self._identity_cache.clear()
            self._after_write(state, len(face_ids))
            self._erased(state, bool(face_ids))
        return face_ids

    def delete_face(self, gallery: str, face_id: int) -> None:
        state = self._state(gallery)
        with self._writing(state):
            removed, seq = self.store.delete_faces(state.gallery.id, [face_id])
            if not removed:
                raise NotFoundError(f"face {face_id} does not exist in gallery {gallery!r}")
            state.index.remove(removed)
            self._applied(state, seq)
            self._after_write(state, 1)
            self._erased(state, True)

    def _erased(self, state: _GalleryState, faces: bool) -> None:
        """After a delete, under the gallery's lock: an erasure pass is due within
        ``erasure_seconds`` (the identity's row is in SQLite's log even when it had no face)."""
        state.erased = state.erased or faces
        self._erase_due.set()

    # ---- stats --------------------------------------------------------------------------------
    def stats(self, gallery: str) -> GalleryStats:
        state = self._current(gallery)
        return GalleryStats(
            state.gallery,
            self.store.count_identities(state.gallery.id),
            self.store.count_faces(state.gallery.id),
            state.index.stats(),
            state.applied_seq,
        )
