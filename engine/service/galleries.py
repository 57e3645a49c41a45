"""The galleries of one process and the life of their indexes.

SQL (the :class:`~faceid.engine.store.Store`) is the source of truth; each gallery's index (a
:class:`~faceid.engine.index.GalleryIndex`, made by the configured
:class:`~faceid.engine.index.IndexBackend`) is derived from it:

* a write commits in SQL first, then updates the index, both under the gallery's write lock
  (:meth:`Galleries.writing`), so the change log's order is the index's order; a call is
  acknowledged only after its commit;
* on start each gallery's index loads its snapshot and replays the changes after the snapshot's
  sequence number; a missing, corrupt or inconsistent snapshot (face counts differ) is rebuilt
  from the faces table;
* snapshots are written on close and every ``snapshot_every`` changes; each one lets the change
  log drop what it reflects (:meth:`Galleries._trim`: at once with one process, once the snapshot
  is ``change_log_keep_seconds`` old when processes share the store);
* several processes on one store (``shared``) catch up from the change log before each search
  and write, and every ``sync_seconds`` in the background;
* erasure: within ``erasure_seconds`` (5 s) of a delete's acknowledgement, also after a crash
  and restart, no file in the data directory holds an erased embedding: an erasure pass
  (:meth:`Galleries.erase_now`) rewrites the snapshots that held them and empties SQLite's
  write-ahead log into the database file, where ``secure_delete`` has overwritten them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceid.engine.config import EngineConfig
from faceid.engine.domain import limits
from faceid.engine.domain.errors import AlreadyExistsError, NotFoundError, UnavailableError
from faceid.engine.domain.models import EmbeddingModel
from faceid.engine.domain.records import Change, Gallery
from faceid.engine.index import GalleryIndex, IndexBackend, SnapshotError
from faceid.engine.service.identity_cache import IdentityCache, pack_stored
from faceid.engine.store import DatabaseError, IntegrityError, Store, is_unavailable

log = logging.getLogger("faceid.service")


class OpeningStoppedError(Exception):
    """:meth:`Galleries.open` gave up: the server is stopping (:meth:`Galleries.stop_opening`)."""


@dataclass
class GalleryState:
    gallery: Gallery
    index: GalleryIndex
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


class Galleries:
    """The registry of galleries (name → :class:`GalleryState`) and their indexes' lifecycle;
    thread-safe; one per process and store."""

    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        backend: IndexBackend,
        identities: IdentityCache,
        model: EmbeddingModel,
    ) -> None:
        self.config = config
        self.store = store
        self.backend = backend
        self.model = model
        self._identity_cache = identities
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "index").mkdir(exist_ok=True)
        for leftover in (config.data_dir / "index").glob("*.tmp") if config.snapshots else ():
            leftover.unlink(missing_ok=True)  # a snapshot cut short by a crash
        self._galleries: dict[str, GalleryState] = {}
        self._registry_lock = threading.RLock()  # delete looks a gallery up under it
        #: An erasure pass is due (the erasure thread waits for it).
        self._erase_due = threading.Event()
        self._closing = threading.Event()
        self._eraser: threading.Thread | None = None
        #: Galleries whose indexes are open, of how many (:meth:`open`'s progress).
        self.opened, self.to_open = 0, 0
        #: Set once :meth:`open` has finished: every gallery is open and can be served.
        self.ready = threading.Event()

    def open(self) -> None:
        """Open every gallery's index (its snapshot and the changes after it, or a rebuild from
        the store), start the background threads (following other processes, erasure), set
        ``ready``, then warm the identity cache in the background.  The slow part of a start: a
        server calls it after binding its port, answering health checks with NOT_SERVING
        meanwhile; ``opened``/``to_open`` say how far it is.  Raises :class:`OpeningStoppedError` when
        :meth:`stop_opening` came first (``ready`` stays unset: the server must not turn SERVING)."""
        if self.ready.is_set():  # opened already (a service made with its galleries loaded)
            return
        config = self.config
        galleries = self.store.list_galleries()
        self.to_open = len(galleries)
        log.info("opening %d galleries", len(galleries))
        for gallery in galleries:
            if self._closing.is_set():  # stopped while starting: the rest stays unopened
                raise OpeningStoppedError(
                    f"stopped while opening the galleries ({self.opened} of {self.to_open} open)"
                )
            self._galleries[gallery.name] = self._open_index(gallery)
            self.opened += 1
        if config.shared:
            threading.Thread(target=self._follow, name="faceid-follow", daemon=True).start()
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
        if self._closing.is_set():
            raise OpeningStoppedError("stopped while opening the galleries (all open)")
        self.ready.set()
        threading.Thread(target=self._warm_identity_cache, name="faceid-warm", daemon=True).start()

    def _follow(self) -> None:
        """Shared store: catch every gallery up now and then (searches and writes also do), and
        open those other processes created, so that the first call here does not wait for it."""
        while not self._closing.wait(self.config.sync_seconds):
            try:
                names = set(self._galleries) | {g.name for g in self.store.list_galleries()}
            except Exception:  # the database is down, say: the next round tries again
                log.exception("listing the galleries to follow failed")
                names = set(self._galleries)
            for name in sorted(names):
                try:
                    self.current(name)
                except NotFoundError:
                    continue
                except Exception:  # the database is down, say: the next round tries again
                    log.exception("gallery %s: catching up with the other processes failed", name)

    # ---- index lifecycle --------------------------------------------------------------------------
    def _snapshot_path(self, gallery: Gallery) -> Path:
        return self.config.data_dir / "index" / f"gallery-{gallery.id}.faceidx"

    def _open_index(self, gallery: Gallery) -> GalleryState:
        path = self._snapshot_path(gallery)
        last = self.store.last_seq(gallery.id)
        try:
            index, seq = self.backend.load(path)
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
            state = GalleryState(gallery, index, max(seq, last, *(c.seq for c in replayed[-1:])))
            # Faces removed after the snapshot was written (a crash came before the erasure pass):
            # the file still holds them.
            erased = any(c.op == "remove" for c in replayed)
        except SnapshotError as exc:
            erased = path.exists()  # a file the index was not loaded from: whatever it holds goes
            if erased:
                log.warning("gallery %s: %s; rebuilding the index from the store", gallery.name, exc)
            state = GalleryState(gallery, self._rebuild(gallery), last)
        if erased:
            state.erased = True
            self._erase_due.set()
        if self.config.shared:
            # Deleted by another process since it was listed: its "drop" came before ``last`` and
            # will not be replayed, so ask (a drop after ``last`` reaches it as any change does).
            found = self.store.get_gallery(gallery.name)
            state.dropped = found is None or found.id != gallery.id
        return state

    def _replay(self, gallery: Gallery, index: GalleryIndex, seq: int) -> list[Change]:
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

    def catch_up(self, state: GalleryState) -> None:
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
        state.since_snapshot += len(changes)  # (with a shared store this process's own, too)
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
        """Fill the identity cache, in the background once the server serves (a thread started
        by :meth:`open`): only a head start, so it never holds up a start.  At 1M identities it
        took 12 s before SERVING (JSON decoding and timestamps per row); now it reads text, and a
        search that misses meanwhile reads its rows itself.  Rows are put with the cache's epoch
        taken before each read, so one that a write changed meanwhile is not kept.  A gallery
        whose rows cannot be read stops its own warm-up, in the log; no stored row can stop it
        (attributes that cannot be decoded read as empty, see ``limits.read_stored_json``)."""
        cache, started, kept = self._identity_cache, time.monotonic(), 0
        for state in list(self._galleries.values()):
            try:
                for rows in self.store.iter_identity_names(state.gallery.id):
                    if self._closing.is_set() or len(cache) >= cache.capacity:
                        break
                    epoch = cache.epoch()
                    kept += cache.put_packed(
                        ((r[0], pack_stored(r[1], r[2], r[3])) for r in rows), epoch, fill=True
                    )
            except (DatabaseError, ValueError, TypeError, RecursionError) as exc:
                if self._closing.is_set():  # the store was closed under it
                    return
                log.warning(
                    "gallery %s: warming the identity cache stopped (%s: %s); its identities are "
                    "read from the database when a search needs them",
                    state.gallery.name,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
        log.info(
            "identity cache %s: %d identities in %.1f s",
            "warm-up stopped (closing)" if self._closing.is_set() else "warmed",
            kept,
            time.monotonic() - started,
        )

    def _rebuild(self, gallery: Gallery) -> GalleryIndex:
        return self.backend.build(gallery.dim, self.store.iter_embeddings(gallery.id, gallery.dim))

    def current(self, name: str) -> GalleryState:
        """The gallery's state for a search: with a shared store, caught up with what other
        processes logged (one indexed query when they logged nothing)."""
        state = self.state(name)
        if not self.config.shared:
            return state
        try:
            behind = self.store.last_seq(state.gallery.id) > state.applied_seq
        except DatabaseError as exc:
            if not is_unavailable(exc):
                raise
            log.warning("gallery %s: database unavailable, searching the index as it is", name)
            return state  # reads stay up while the database is down; writes get UNAVAILABLE
        if behind:
            with state.lock:
                self.catch_up(state)
            if state.dropped:
                return self.state(name)  # NotFoundError, or a new gallery of that name
        return state

    def applied(self, state: GalleryState, seq: int) -> None:
        """After this process's own write, logged up to ``seq``: with a shared store the index
        follows the log itself (its own changes are skipped as already there), else it is at ``seq``."""
        if self.config.shared:
            self.catch_up(state)
        else:
            state.applied_seq = max(seq, state.applied_seq)

    @contextmanager
    def writing(self, state: GalleryState) -> Iterator[None]:
        """The gallery's write lock, with the index caught up first after a write whose outcome
        is unknown, and always with a shared store."""
        with state.lock:
            try:
                if state.uncertain or self.config.shared:
                    before = state.applied_seq
                    self.catch_up(state)
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
            except DatabaseError as exc:
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
        state = self.state(name)
        with state.lock:
            self._save(state)

    def _save(self, state: GalleryState) -> None:
        """Under the gallery's lock: write its snapshot (live faces only: it holds no erased one),
        then trim the change log it makes redundant.  With a shared store the index first catches
        up with the others' changes (unless the database is down: the snapshot is valid as it is)."""
        if self.config.shared:
            try:
                self.catch_up(state)
            except DatabaseError as exc:
                if not is_unavailable(exc):
                    raise
            if state.dropped:
                return
        seq = state.applied_seq
        state.index.save(self._snapshot_path(state.gallery), seq)
        state.since_snapshot = 0
        state.erased = False
        self._trim(state, seq)

    def _trim(self, state: GalleryState, seq: int) -> None:
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
        except DatabaseError as exc:
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

    def stop_opening(self) -> None:
        """Make a running :meth:`open` give up before its next gallery (a stop during a start)."""
        self._closing.set()

    def close(self) -> None:
        """Snapshot every gallery and release the database.  With a shared store that is every
        gallery in it, also those only other processes served (opened here to be written)."""
        self._closing.set()
        self._erase_due.set()  # wakes the erasure thread, to end
        if self._eraser is not None:
            self._eraser.join(60)
        if not self.ready.is_set():  # stopped while opening: nothing was written, nothing to save
            self.store.engine.dispose()
            return
        names = list(self._galleries)
        if self.config.shared and self.config.snapshots:
            names = [g.name for g in self.store.list_galleries()]
        for name in names:
            try:
                self.current(name)  # caught up: the snapshot holds every change logged so far
                self.snapshot(name)
            except NotFoundError:
                continue
        self.store.engine.dispose()

    def after_write(self, state: GalleryState, changes: int) -> None:
        """After this process's own write of ``changes`` changes: counted towards the next snapshot
        (with a shared store :meth:`catch_up` counted them, with the other processes' changes),
        which is written in the background once ``snapshot_every`` have gathered."""
        if not self.config.shared:
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

    # ---- monitoring ---------------------------------------------------------------------------
    def open_states(self) -> list[GalleryState]:
        """The galleries open in this process now (no database work)."""
        return [state for state in list(self._galleries.values()) if not state.dropped]

    def snapshot_age(self, state: GalleryState) -> float | None:
        """Seconds since the gallery's snapshot file was written (by whichever process writes
        them); None when it has none."""
        try:
            return max(0.0, time.time() - self._snapshot_path(state.gallery).stat().st_mtime)
        except FileNotFoundError:
            return None

    def behind(self, states: list[GalleryState]) -> dict[int, int]:
        """By gallery id: how far the store's change log is past what this process applied (0
        without a shared store: a process alone applies each change as it commits it), in one
        query whatever the number of galleries."""
        if not self.config.shared:
            return {state.gallery.id: 0 for state in states}
        last = self.store.last_seqs()
        return {s.gallery.id: max(0, last.get(s.gallery.id, 0) - s.applied_seq) for s in states}

    def unsaved(self, state: GalleryState) -> int | None:
        """Changes applied since the gallery's last snapshot (other processes' too, with a shared
        store); None in a process that writes no snapshots (``--processes N``: all but the first)."""
        return state.since_snapshot if self.config.snapshots else None

    # ---- galleries ----------------------------------------------------------------------------
    def state(self, name: str) -> GalleryState:
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

    def _adopt(self, name: str) -> GalleryState | None:
        """A gallery another process created (shared store): open its index here."""
        gallery = self.store.get_gallery(name)
        if gallery is None:
            return None
        with self._registry_lock:
            if name not in self._galleries:
                self._galleries[name] = self._open_index(gallery)
            state = self._galleries[name]
            return None if state.dropped else state

    def get(self, name: str) -> Gallery:
        """The gallery's record (NotFoundError when there is none); no database work."""
        return self.state(name).gallery

    def create(self, name: str) -> Gallery:
        limits.check_gallery_id(name)
        with self._registry_lock:
            if name in self._galleries:
                raise AlreadyExistsError(f"gallery {name!r} already exists")
            try:
                gallery = self.store.create_gallery(
                    name, self.model.name, self.model.version, self.model.dim, self.model.metric
                )
            except IntegrityError:
                raise AlreadyExistsError(f"gallery {name!r} already exists") from None
            self._galleries[name] = GalleryState(gallery, self.backend.create(gallery.dim), 0)
            return gallery

    def all(self) -> list[Gallery]:
        if self.config.shared:  # other processes create and delete galleries too
            return self.store.list_galleries()
        return sorted((s.gallery for s in self._galleries.values()), key=lambda g: g.name)

    def delete(self, name: str) -> None:
        """Delete a gallery: every identity, face and vector in it, and its snapshot."""
        with self._registry_lock:
            state = self.state(name)
            with state.lock:
                self.store.delete_gallery(state.gallery.id)
                self._snapshot_path(state.gallery).unlink(missing_ok=True)
                del self._galleries[name]
                self._identity_cache.clear()
                self._erase_due.set()  # the deleted rows' old pages are in SQLite's log

    def erased(self, state: GalleryState, faces: bool) -> None:
        """After a delete, under the gallery's lock: an erasure pass is due within
        ``erasure_seconds`` (the identity's row is in SQLite's log even when it had no face)."""
        state.erased = state.erased or faces
        self._erase_due.set()
