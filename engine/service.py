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
* snapshots are written on close and every ``snapshot_every`` changes.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy.exc

from faceid.engine.config import PipelineConfig
from faceid.engine.detect import Box
from faceid.engine.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from faceid.engine.index import FaissGalleryIndex, IndexConfig, IndexStats, SearchParams, SnapshotError
from faceid.engine.migrate import upgrade
from faceid.engine.models import DLIB_RESNET_V1, EmbeddingModel
from faceid.engine.pipeline import FacePipeline
from faceid.engine.store import Change, Gallery, Identity, NewFace, Store, make_engine, sha256_hex

log = logging.getLogger("faceid.service")

MAX_NAME = 128
MAX_EXTERNAL_ID = 256
MAX_ATTRIBUTES_BYTES = 64 * 1024


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


def similarity(distance: float) -> float:
    return 1.0 - distance * distance / 2.0


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


def _check_name(kind: str, value: str, limit: int) -> None:
    if not value or not value.strip():
        raise InvalidInputError(f"{kind} must not be empty")
    if len(value) > limit:
        raise InvalidInputError(f"{kind} is {len(value)} characters long; the limit is {limit}")
    if any(ord(c) < 32 for c in value):
        raise InvalidInputError(f"{kind} must not contain control characters")


def _check_attributes(attributes: dict[str, Any] | None) -> None:
    if attributes is None:
        return
    try:
        size = len(json.dumps(attributes))
    except (TypeError, ValueError):
        raise InvalidInputError("attributes must be JSON values (strings, numbers, lists, objects)") from None
    if size > MAX_ATTRIBUTES_BYTES:
        raise InvalidInputError(
            f"attributes take {size:,} bytes as JSON; the limit is {MAX_ATTRIBUTES_BYTES:,}"
        )


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
        self.store = Store(make_engine(config.url()))
        self._galleries: dict[str, _GalleryState] = {}
        self._identity_cache = IdentityCache(config.identity_cache)
        self._registry_lock = threading.RLock()  # delete_gallery looks a gallery up under it
        upgrade(self.store.engine)
        for gallery in self.store.list_galleries():
            self._galleries[gallery.name] = self._open_index(gallery)
        self._warm_identity_cache()
        self._closing = threading.Event()
        if config.shared:
            threading.Thread(target=self._follow, name="faceid-follow", daemon=True).start()

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
        """The face pipeline, loaded on first use (embedding-only deployments never load it)."""
        if self._pipeline is None:
            with self._pipeline_lock:
                if self._pipeline is None:
                    self._pipeline = FacePipeline(self.config.pipeline)
        return self._pipeline

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
            return _GalleryState(gallery, index, max(seq, last, *(c.seq for c in replayed[-1:])))
        except SnapshotError as exc:
            if path.exists():
                log.warning("gallery %s: %s; rebuilding the index from the store", gallery.name, exc)
            return _GalleryState(gallery, self._rebuild(gallery), last)

    def _replay(self, gallery: Gallery, index: FaissGalleryIndex, seq: int) -> list[Change]:
        """Apply the logged changes after ``seq`` to the index, and return them.  Idempotent: a
        face the index holds is not added again, one it lacks is not removed, and an added face
        that is gone from the store by now is skipped."""
        changes = self.store.changes_since(gallery.id, seq)
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
        """
        changes = self._replay(state.gallery, state.index, state.applied_seq)
        if not changes:
            return
        state.applied_seq = changes[-1].seq
        for c in changes:
            if c.op == "update":
                self._identity_cache.discard(c.face_id)  # an identity's row id, for "update"
        if any(c.op == "drop" for c in changes):
            state.dropped = True  # _state takes it out of the registry (this thread holds state.lock)
            self._identity_cache.clear()

    def _warm_identity_cache(self) -> None:
        room = self._identity_cache.capacity
        for state in self._galleries.values():
            for rows in self.store.iter_identities(state.gallery.id):
                if room <= 0:
                    return
                self._identity_cache.put_many({r.id: r for r in rows[:room]})
                room -= len(rows)

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
            state.index.save(self._snapshot_path(state.gallery), state.applied_seq)
            state.since_snapshot = 0

    def close(self) -> None:
        """Snapshot every gallery and release the database.  With a shared store that is every
        gallery in it, also those only other processes served (opened here to be written)."""
        self._closing.set()
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
        _check_name("gallery name", name, MAX_NAME)
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
    def _enroll(self, state: _GalleryState, faces: list[NewFace]) -> list[int]:
        with self._writing(state):
            created: dict[int, Identity] = {}
            ids, identity_ids, seq = self.store.add_faces(state.gallery, faces, created)
            if self.config.shared:
                # The new faces come back from the log, in order with what other processes
                # committed meanwhile (SQLite may even have re-used the id of a face one of them
                # deleted, which this index still holds until it replays that delete).
                self._catch_up(state)
            else:
                state.index.add(ids, np.stack([f.embedding for f in faces]), identity_ids)
                state.applied_seq = max(state.applied_seq, seq)
            self._identity_cache.put_many(created)
            self._after_write(state, len(ids))
        return ids

    def enroll_embeddings(
        self,
        gallery: str,
        external_ids: Sequence[str],
        embeddings: Sequence[EmbeddingInput],
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> list[EnrolledFace]:
        """Enrol ready embeddings, ``external_ids[i]`` the identity of ``embeddings[i]``."""
        state = self._state(gallery)
        if len(external_ids) != len(embeddings) or not embeddings:
            raise InvalidInputError("give one identity per embedding, and at least one")
        for eid in external_ids:
            _check_name("external_id", eid, MAX_EXTERNAL_ID)
        _check_attributes(attributes)
        faces = [
            NewFace(eid, self._check_embedding(state.gallery, e), display_name, attributes)
            for eid, e in zip(external_ids, embeddings, strict=True)
        ]
        ids = self._enroll(state, faces)
        return [EnrolledFace(i, f.external_id) for i, f in zip(ids, faces, strict=True)]

    def enroll_items(self, gallery: str, items: Sequence[EnrollItem]) -> list[EnrolledFace]:
        """Enrol ready embeddings with per-item identity metadata, all in one transaction: every
        item is checked first, so one bad item refuses the whole call and nothing is written."""
        state = self._state(gallery)
        if not items:
            raise InvalidInputError("give at least one embedding")
        faces = []
        for item in items:
            _check_name("external_id", item.external_id, MAX_EXTERNAL_ID)
            _check_attributes(item.attributes)
            vector = self._check_embedding(state.gallery, item.embedding)
            faces.append(NewFace(item.external_id, vector, item.display_name, item.attributes))
        ids = self._enroll(state, faces)
        return [EnrolledFace(i, f.external_id) for i, f in zip(ids, faces, strict=True)]

    def enroll_photo(
        self,
        gallery: str,
        external_id: str,
        photo: bytes,
        all_faces: bool = False,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> list[EnrolledFace]:
        """Enrol the largest face in the photo (or every face) under ``external_id``."""
        state = self._state(gallery)
        _check_name("external_id", external_id, MAX_EXTERNAL_ID)
        _check_attributes(attributes)
        found = self.pipeline.process(photo)
        if not found:
            raise InvalidInputError(
                "no face was found in the photo; send a photo where the face is at least 40 pixels wide, "
                "upright and not heavily occluded"
            )
        chosen = found if all_faces else found[:1]
        digest = sha256_hex(photo)
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
        ids = self._enroll(state, faces)
        return [
            EnrolledFace(i, external_id, f.box, f.detection.score) for i, f in zip(ids, chosen, strict=True)
        ]

    # ---- identify -----------------------------------------------------------------------------
    def _search(
        self,
        state: _GalleryState,
        vectors: npt.NDArray[np.float32],
        top_k: int,
        threshold: float,
        params: SearchParams | None,
    ) -> list[list[Match]]:
        if state.index.count() == 0:
            return [[] for _ in vectors]
        k_faces = min(state.index.config.max_k, max(top_k * 4, top_k + 10))
        # Faces beyond top_k only stand in for identities listed twice: the re-rank covers top_k.
        params = replace(params or SearchParams(), rerank_k=top_k)
        distances, ids, groups = state.index.search_with_groups(vectors, k_faces, params)
        ranked: list[list[tuple[int, int, float]]] = []  # per probe: (face id, identity id, distance)
        for drow, irow, grow in zip(distances.tolist(), ids.tolist(), groups.tolist(), strict=True):
            seen: set[int] = set()
            best: list[tuple[int, int, float]] = []
            for d, fid, gid in zip(drow, irow, grow, strict=True):
                if gid < 0 or gid in seen:  # removed meanwhile, or a worse face of a listed identity
                    continue
                seen.add(gid)
                best.append((fid, gid, d))
                if len(best) == top_k:
                    break
            ranked.append(best)
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
        if not 1 <= page_size <= 1000:
            raise InvalidInputError(f"page_size must be between 1 and 1000; got {page_size}")
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
        if display_name is not None and len(display_name) > 256:
            raise InvalidInputError("display_name is longer than 256 characters")
        _check_attributes(attributes)
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
