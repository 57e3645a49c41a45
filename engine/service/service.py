"""The engine's use cases over the galleries: enrol, identify, verify, identities, statistics.

Synchronous and thread-safe; it works on embeddings only (the photo stages belong to the
:class:`~faceid.engine.service.engine.Engine`, which calls this in its worker threads).  The
galleries and the life of their indexes are :class:`~faceid.engine.service.galleries.Galleries`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from faceid.engine.config import EngineConfig
from faceid.engine.domain import limits
from faceid.engine.domain.errors import (
    FaceIdError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    all_or_first_error,
)
from faceid.engine.domain.faces import Box, Face
from faceid.engine.domain.models import DLIB_RESNET_V1, EmbeddingModel
from faceid.engine.domain.records import (
    Gallery,
    Identity,
    Moved,
    NewFace,
    NewIdentity,
    SourceResult,
    StoredFace,
    embedding_sha256,
    sha256_hex,
)
from faceid.engine.domain.results import (
    Clustering,
    EmbeddingInput,
    EnrolledFace,
    EnrollItem,
    GalleryReading,
    GalleryStats,
    Match,
    Verification,
    similarity,
)
from faceid.engine.domain.search import SearchParams
from faceid.engine.index import FaissBackend, IndexBackend
from faceid.engine.service.checks import check_embedding, decode_page_token, encode_page_token
from faceid.engine.service.clustering import Distances, GalleryClustering, cluster_set, face_clusters
from faceid.engine.service.galleries import Galleries, GalleryState
from faceid.engine.service.identity_cache import IdentityCache, Packed, pack
from faceid.engine.store import Store, make_engine

log = logging.getLogger("faceid.service")

#: Called right before a write's transaction starts and again right before its COMMIT (in the
#: thread that writes); raises (e.g. ``DeadlineExceededError``) to write nothing.  The engine
#: passes one that refuses once the call was cancelled or its deadline is too close
#: (:class:`~faceid.engine.service.guard.CommitGuard`).
Proceed = Callable[[], None]


def _enrolled(source: Sequence[NewFace], result: SourceResult) -> list[EnrolledFace]:
    """A source's faces as the API reports them."""
    return [_enrolled_face(source[0].external_id, face, result.already) for face in result.faces]


def _enrolled_face(external_id: str, face: StoredFace, already: bool) -> EnrolledFace:
    box = Box(*face.box) if face.box is not None else None
    return EnrolledFace(face.id, external_id, box, face.detection_score, already)


def _distinct(
    distances: list[float], face_ids: list[int], groups: list[int], top_k: int, exclude: int = -1
) -> list[tuple[int, int, float]]:
    """The first ``top_k`` identities among a probe's faces (nearest first), each with its nearest
    face: (face id, identity row id, distance); the face ``exclude`` (a probe that is an enrolled
    face) is passed over."""
    seen: set[int] = set()
    best: list[tuple[int, int, float]] = []
    for d, fid, gid in zip(distances, face_ids, groups, strict=True):
        if gid < 0 or gid in seen or fid == exclude:  # removed meanwhile, a worse face, the probe
            continue
        seen.add(gid)
        best.append((fid, gid, d))
        if len(best) == top_k:
            break
    return best


class FaceService:
    """Enrolment, identify and verify over the galleries; thread-safe; one per process and store."""

    def __init__(self, config: EngineConfig, backend: IndexBackend | None = None, load: bool = True) -> None:
        """Open the store (migrated to the current schema) and, with ``load``, every gallery's
        index; without it, :meth:`Galleries.open` (``self.galleries.open()``) does that later."""
        self.config = config
        self.model: EmbeddingModel = DLIB_RESNET_V1
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Stored attributes are read through limits.read_stored_json: a row that cannot be read
        # (nested past what Python's json can take, as an older version accepted) reads as {}.
        self.store = Store(make_engine(config.url(), json_deserializer=limits.read_stored_json))
        #: The check of the write this thread is about to commit (see ``Proceed``), run right
        #: before COMMIT is sent.
        self._commit_check = threading.local()
        self.store.on_commit(self._before_commit)
        self.store.migrate()
        self._identity_cache = IdentityCache(config.identity_cache)
        #: (monotonic time, identities by gallery id counted then): :meth:`readings`.
        self._identity_counted: tuple[float, dict[int, int]] | None = None
        self.galleries = Galleries(
            config, self.store, backend or FaissBackend(config.index), self._identity_cache, self.model
        )
        self.clustering = GalleryClustering(config.cluster, self.store, self.galleries, config.snapshots)
        if load:
            self.galleries.open()

    def _before_commit(self) -> None:
        check: Proceed | None = getattr(self._commit_check, "proceed", None)
        if check is not None:
            check()

    # ---- galleries ----------------------------------------------------------------------------
    def gallery(self, name: str) -> Gallery:
        """The gallery's record (NotFoundError when there is none); no database work."""
        return self.galleries.get(name)

    def create_gallery(self, name: str) -> Gallery:
        return self.galleries.create(name)

    def list_galleries(self) -> list[Gallery]:
        return self.galleries.all()

    def delete_gallery(self, name: str) -> None:
        """Delete a gallery: every identity, face and vector in it, and its snapshot."""
        self.galleries.delete(name)

    def snapshot(self, name: str) -> None:
        """Write the gallery's index snapshot now (also done on close and every N changes)."""
        self.galleries.snapshot(name)

    def erase_now(self) -> None:
        """One erasure pass now (:meth:`Galleries.erase_now`)."""
        self.galleries.erase_now()

    def close(self) -> None:
        """Snapshot every gallery and release the database."""
        self.clustering.stop.set()
        self.galleries.close()

    # ---- input checks -------------------------------------------------------------------------
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
        self, state: GalleryState, sources: list[list[NewFace]], proceed: Proceed | None = None
    ) -> list[list[EnrolledFace]]:
        """Enrol sources (each the faces of one photo, or one embedding) in one transaction, then
        add the new faces to the index; the enrolled faces of each source, in order.  A source the
        identity already holds (the same hash: :meth:`Store.enrol`) writes nothing and answers
        with the faces enrolled from it before, marked ``already_enrolled``.  ``proceed`` (see
        :data:`Proceed`) runs under the gallery's lock before the transaction starts and again
        right before its COMMIT; when it raises, the transaction is rolled back: nothing is written."""
        with self.galleries.writing(state):
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
                self.galleries.catch_up(state)
            else:
                if new:
                    state.index.add(
                        [face.id for face, _ in new],
                        np.stack([f.embedding for _, f in new]),
                        [face.identity_id for face, _ in new],
                    )
                state.applied_seq = max(state.applied_seq, seq)
            self._identity_cache.put_many(created)
            self.galleries.after_write(state, len(new))
        return [_enrolled(source, result) for source, result in zip(sources, results, strict=True)]

    def check_enroll_item(self, gallery: Gallery, item: EnrollItem) -> NewFace | FaceIdError:
        """One item to enrol, checked without writing anything: the face to write, or the error
        that refuses it (every field's limit, and the embedding against the gallery's model)."""
        try:
            limits.check_identity_id(item.external_id)
            limits.check_display_name(item.display_name)
            limits.check_attributes(item.attributes)
            vector = check_embedding(gallery, item.embedding)
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
        state = self.galleries.state(gallery)
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
                    check_embedding(state.gallery, e),
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
        state = self.galleries.state(gallery)
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
        state = self.galleries.state(gallery)
        limits.check_batch_size(len(items))
        checked = [self.check_enroll_item(state.gallery, item) for item in items]
        sources = [[c] for c in checked if isinstance(c, NewFace)]
        enrolled = iter(self._enroll(state, sources, proceed) if sources else [])
        return [next(enrolled)[0] if isinstance(c, NewFace) else c for c in checked]

    def source_faces(
        self,
        gallery: str,
        external_id: str,
        photo: bytes,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
        choice: str = "",
    ) -> tuple[str, list[EnrolledFace]]:
        """Before a photo is decoded: the fields checked, the photo's source hash (of its bytes,
        and of ``choice``, what sets apart a face chosen by other than the default rule), and the
        faces the identity already holds from it (none when it holds none): a photo enrolled
        before is not decoded again."""
        state = self.galleries.state(gallery)
        limits.check_identity_id(external_id)
        limits.check_display_name(display_name)
        limits.check_attributes(attributes)
        digest = sha256_hex(photo + b"\0" + choice.encode()) if choice else sha256_hex(photo)
        known = self.store.source_faces(state.gallery.id, external_id, digest)
        return digest, [_enrolled_face(external_id, face, True) for face in known]

    def enroll_faces(
        self,
        gallery: str,
        external_id: str,
        found: Sequence[Face],
        digest: str,
        all_faces: bool = False,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
        proceed: Proceed | None = None,
    ) -> list[EnrolledFace]:
        """Enrol the faces found in one photo (its source hash ``digest``): the first (the one the
        caller means, see :func:`~faceid.engine.service.engine.Engine.enroll`) or every face, under
        ``external_id``.  A photo the identity already holds (checked again under the gallery's
        lock) answers with the faces enrolled from it before, marked ``already_enrolled``."""
        state = self.galleries.state(gallery)
        limits.check_identity_id(external_id)
        limits.check_display_name(display_name)
        limits.check_attributes(attributes)
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
                f.detection.score if math.isfinite(f.detection.score) else None,  # None: a caller's box
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
        state: GalleryState,
        vectors: npt.NDArray[np.float32],
        top_k: int,
        threshold: float,
        params: SearchParams | None,
        exclude: Sequence[int] | None = None,
    ) -> list[list[Match]]:
        """The ``top_k`` nearest identities of each probe, each with its nearest face (not the face
        ``exclude[p]``, where probe ``p`` is an enrolled face).

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
        max_k = self.config.index.max_k
        skip = list(exclude) if exclude is not None else [-1] * len(vectors)
        reranked = top_k + (exclude is not None)  # the probe's own face takes a place
        k_faces = min(max_k, max(reranked * 4, reranked + 10))
        # Faces beyond top_k only stand in for identities listed twice: the re-rank covers top_k.
        params = replace(params or SearchParams(), rerank_k=reranked)
        distances, ids, groups = state.index.search_with_groups(vectors, k_faces, params)
        # Per probe: (face id, identity id, distance) of its nearest identities.
        ranked = [
            _distinct(drow, irow, grow, top_k, x)
            for drow, irow, grow, x in zip(
                distances.tolist(), ids.tolist(), groups.tolist(), skip, strict=True
            )
        ]
        short = [p for p, row in enumerate(ranked) if len(row) < top_k and ids[p, -1] >= 0]
        while short and k_faces < max_k:
            k_faces = min(max_k, k_faces * 4)
            distances, ids, groups = state.index.search_with_groups(vectors[short], k_faces, params)
            rows = zip(short, distances.tolist(), ids.tolist(), groups.tolist(), strict=True)
            for p, drow, irow, grow in rows:
                ranked[p] = _distinct(drow, irow, grow, top_k, skip[p])
            short = [p for j, p in enumerate(short) if len(ranked[p]) < top_k and ids[j, -1] >= 0]
        identities = self._identities(state.gallery.id, {gid for row in ranked for _, gid, _ in row})
        return [
            [
                Match(
                    ident[0],  # external_id
                    ident[1],  # display_name
                    json.loads(ident[2]) if ident[2] else {},  # attributes
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

    def _identities(self, gallery_id: int, ids: set[int]) -> dict[int, Packed]:
        """Identity rows (packed) by row id: from the cache, the rest in one query."""
        found, missing = self._identity_cache.get_many(ids)
        if missing:
            epoch = self._identity_cache.epoch()
            fetched = self.store.identities_by_id(gallery_id, sorted(missing))
            self._identity_cache.put_many(fetched, epoch)
            found.update((i, pack(r)) for i, r in fetched.items())
        return found

    def identify_embeddings(
        self,
        gallery: str,
        embeddings: Sequence[EmbeddingInput],
        top_k: int = 5,
        threshold: float | None = None,
        params: SearchParams | None = None,
    ) -> list[list[Match]]:
        """The ``top_k`` nearest identities of each embedding, best first (one batched search); the
        first bad embedding fails the call."""
        if not embeddings:
            raise InvalidInputError("give at least one embedding")
        return all_or_first_error(self.identify_each(gallery, embeddings, top_k, threshold, params))

    def identify_each(
        self,
        gallery: str,
        embeddings: Sequence[EmbeddingInput],
        top_k: int = 5,
        threshold: float | None = None,
        params: SearchParams | None = None,
    ) -> list[list[Match] | FaceIdError]:
        """Each embedding on its own merits: the ``top_k`` nearest identities of the good ones (one
        batched search), the error of each bad one (wrong dimension, model, length) in its place.
        The engine's search batches hold the probes of many callers: one caller's bad embedding
        must not fail the others'."""
        state = self.galleries.current(gallery)
        self.check_top_k(top_k)
        decision = self.decision_threshold(threshold)
        probes: list[npt.NDArray[np.float32] | FaceIdError] = []
        for e in embeddings:
            try:
                probes.append(check_embedding(state.gallery, e))
            except FaceIdError as exc:
                probes.append(exc)
        return self._search_each(state, probes, top_k, decision, params)

    def _search_each(
        self,
        state: GalleryState,
        probes: Sequence[npt.NDArray[np.float32] | FaceIdError],
        top_k: int,
        threshold: float,
        params: SearchParams | None,
        exclude: Sequence[int] | None = None,
    ) -> list[list[Match] | FaceIdError]:
        """:meth:`_search` of the probes that are vectors, in one batch; an error stays in its
        place.  ``exclude``: a face id per probe, left out of its matches."""
        good = [i for i, p in enumerate(probes) if not isinstance(p, FaceIdError)]
        results: list[list[Match] | FaceIdError] = list(cast(list[FaceIdError], probes))
        if good:
            vectors = np.stack([cast(npt.NDArray[np.float32], probes[i]) for i in good])
            skip = [exclude[i] for i in good] if exclude is not None else None
            for i, matches in zip(
                good, self._search(state, vectors, top_k, threshold, params, skip), strict=True
            ):
                results[i] = matches
        return results

    def search_faces(
        self,
        gallery: str,
        face_ids: Sequence[int],
        top_k: int = 5,
        threshold: float | None = None,
        params: SearchParams | None = None,
    ) -> list[list[Match] | FaceIdError]:
        """Enrolled faces as probes (AWS's SearchFaces, Azure's FindSimilar): the ``top_k`` nearest
        identities of each face's own vector, that face itself left out (its identity still comes
        back through its other faces); a face the gallery does not hold gets NotFoundError in its
        place.  One batched search."""
        limits.check_identify_batch(len(face_ids), "face_ids")
        state = self.galleries.current(gallery)
        self.check_top_k(top_k)
        decision = self.decision_threshold(threshold)
        vectors = self.store.face_embeddings(state.gallery.id, list(set(face_ids)))
        probes = [
            vectors[f] if f in vectors else NotFoundError(f"face {f} does not exist in gallery {gallery!r}")
            for f in face_ids
        ]
        return self._search_each(state, probes, top_k, decision, params, face_ids)

    # ---- clustering ---------------------------------------------------------------------------
    def cluster_faces(
        self,
        gallery: str,
        faces: Sequence[tuple[int, Box | None, EmbeddingInput | npt.NDArray[np.float32]]],
        strict_distance: float | None = None,
        loose_distance: float | None = None,
    ) -> Clustering:
        """Faces (each: its probe's position, its box, an embedding as sent or as the pipeline
        computed it) grouped into people (:mod:`.clustering`); each face matched against the
        gallery's identities at the model's default threshold.  An embedding the gallery refuses
        is listed in ``errors`` and clustered nowhere."""
        state = self.galleries.current(gallery)
        distances = Distances.of(self.config.cluster, strict_distance, loose_distance)
        limits.check_cluster_faces(len(faces), self.config.cluster.max_faces, least=0)
        kept: list[tuple[int, Box | None]] = []
        vectors: list[npt.NDArray[np.float32]] = []
        errors: list[tuple[int, FaceIdError]] = []
        for index, box, face in faces:
            try:
                vectors.append(self._vector(state.gallery, face))
                kept.append((index, box))
            except FaceIdError as exc:
                errors.append((index, exc))
        stacked = np.stack(vectors) if vectors else np.zeros((0, state.gallery.dim), np.float32)
        found = cluster_set(self.galleries.backend, stacked, self.config.cluster.neighbours, distances)
        top = self._search_each(state, vectors, 1, self.model.default_threshold, None)
        matches = [m[0] if isinstance(m, list) and m and m[0].is_match else None for m in top]
        return Clustering(face_clusters(found, kept, matches), errors, distances.strict, distances.loose)

    # ---- verify -------------------------------------------------------------------------------
    @staticmethod
    def _vector(gallery: Gallery, probe: EmbeddingInput | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """A caller's embedding, checked against the gallery; or one the pipeline computed."""
        return check_embedding(gallery, probe) if isinstance(probe, EmbeddingInput) else probe

    def verify_identity(
        self,
        gallery: str,
        probe: EmbeddingInput | npt.NDArray[np.float32],
        external_id: str,
        threshold: float | None = None,
    ) -> Verification:
        """Probe against an identity: the distance to its nearest enrolled face."""
        state = self.galleries.state(gallery)
        t = self.decision_threshold(threshold)
        identity = self.store.get_identity(state.gallery.id, external_id)
        if identity is None:
            raise NotFoundError(f"identity {external_id!r} does not exist in gallery {gallery!r}")
        if not identity.face_ids:
            raise FailedPreconditionError(f"identity {external_id!r} has no enrolled face to compare with")
        v = self._vector(state.gallery, probe)
        enrolled = self.store.face_embeddings(state.gallery.id, identity.face_ids)
        fids = list(enrolled)
        d = np.linalg.norm(np.stack([enrolled[f] for f in fids]) - v, axis=1)
        best = int(np.argmin(d))
        dist = float(d[best])
        return Verification(dist, similarity(dist), dist < t, t, fids[best])

    def verify_pair(
        self,
        gallery: str,
        a: EmbeddingInput | npt.NDArray[np.float32],
        b: EmbeddingInput | npt.NDArray[np.float32],
        threshold: float | None = None,
    ) -> Verification:
        """Two probes against each other (the gallery names the model they are compared under)."""
        state = self.galleries.state(gallery)
        t = self.decision_threshold(threshold)
        dist = float(np.linalg.norm(self._vector(state.gallery, a) - self._vector(state.gallery, b)))
        return Verification(dist, similarity(dist), dist < t, t)

    # ---- identities ---------------------------------------------------------------------------
    def get_identity(self, gallery: str, external_id: str) -> Identity:
        state = self.galleries.state(gallery)
        identity = self.store.get_identity(state.gallery.id, external_id)
        if identity is None:
            raise NotFoundError(f"identity {external_id!r} does not exist in gallery {gallery!r}")
        return identity

    def list_identities(
        self, gallery: str, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[Identity], str]:
        """A page of identities in external-id order and the token of the next page ('' at the end)."""
        state = self.galleries.state(gallery)
        limits.check_page_size(page_size)
        after = decode_page_token(page_token)
        page = self.store.list_identities(state.gallery.id, page_size + 1, after)
        more = len(page) > page_size
        page = page[:page_size]
        return page, encode_page_token(page[-1].external_id) if more else ""

    def move_faces(
        self, gallery: str, face_ids: Sequence[int], external_id: str, new: NewIdentity | None = None
    ) -> Moved:
        """Put faces under one identity, a new one (``new``) or an existing one
        (:meth:`Store.move_faces`), and follow in the index: each moved face searched under its
        new identity from the moment the call returns."""
        state = self.galleries.state(gallery)
        limits.check_identity_id(external_id)
        if new is not None:
            limits.check_display_name(new.display_name)
            limits.check_attributes(new.attributes)
        with self.galleries.writing(state):
            moved = self.store.move_faces(state.gallery.id, face_ids, external_id, new)
            if self.config.shared:
                self.galleries.catch_up(state)  # the moves come back from the log, in order
            elif moved.face_ids:
                vectors = self.store.face_embeddings(state.gallery.id, moved.face_ids)
                state.index.remove(moved.face_ids)
                state.index.add(
                    moved.face_ids,
                    np.stack([vectors[f] for f in moved.face_ids]),
                    [moved.identity.id] * len(moved.face_ids),
                )
                state.applied_seq = max(state.applied_seq, moved.seq)
            self._identity_cache.put_many({moved.identity.id: moved.identity})
            self.galleries.after_write(state, len(moved.face_ids))
        return moved

    def update_identity(
        self,
        gallery: str,
        external_id: str,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Identity:
        state = self.galleries.state(gallery)
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
        state = self.galleries.state(gallery)
        with self.galleries.writing(state):
            result = self.store.delete_identity(state.gallery.id, external_id)
            if result is None:
                raise NotFoundError(f"identity {external_id!r} does not exist in gallery {gallery!r}")
            face_ids, seq = result
            state.index.remove(face_ids)
            self.galleries.applied(state, seq)
            self._identity_cache.clear()
            self.galleries.after_write(state, len(face_ids))
            self.galleries.erased(state, bool(face_ids))
        return face_ids

    def delete_face(self, gallery: str, face_id: int) -> None:
        state = self.galleries.state(gallery)
        with self.galleries.writing(state):
            removed, seq = self.store.delete_faces(state.gallery.id, [face_id])
            if not removed:
                raise NotFoundError(f"face {face_id} does not exist in gallery {gallery!r}")
            state.index.remove(removed)
            self.galleries.applied(state, seq)
            self.galleries.after_write(state, 1)
            self.galleries.erased(state, True)

    # ---- stats --------------------------------------------------------------------------------
    def readings(self) -> list[GalleryReading]:
        """Each open gallery's counts and index state, for monitoring, in at most two queries
        whatever the number of galleries: how far each is behind the store (a shared store; one
        GROUP BY over the change log), and the identities of all of them (one GROUP BY, at most
        every ``IDENTITIES_TTL`` seconds: a count of a 10M-row table is not free, and a scrape
        every few seconds must not become the database's load)."""
        states = self.galleries.open_states()
        behind = self.galleries.behind(states)
        identities = self._identity_counts()
        return [
            GalleryReading(
                state.gallery.name,
                (index := state.index.stats()).count,
                identities.get(state.gallery.id, 0),
                index,
                self.galleries.unsaved(state),
                self.galleries.snapshot_age(state),
                behind.get(state.gallery.id, 0),
            )
            for state in states
        ]

    IDENTITIES_TTL = 10.0

    def _identity_counts(self) -> dict[int, int]:
        now = time.monotonic()
        if self._identity_counted is None or now - self._identity_counted[0] > self.IDENTITIES_TTL:
            self._identity_counted = (now, self.store.identity_counts())
        return self._identity_counted[1]

    def stats(self, gallery: str) -> GalleryStats:
        state = self.galleries.current(gallery)
        return GalleryStats(
            state.gallery,
            self.store.count_identities(state.gallery.id),
            self.store.count_faces(state.gallery.id),
            state.index.stats(),
            state.applied_seq,
        )
