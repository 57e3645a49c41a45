"""The engine: the one owner of every request below the transport.

Each use case is one ``async`` method here, and the gRPC servicer (or a test, or a tool) only
parses, awaits it and converts.  The engine owns what a request needs on its way down:

* the worker threads (``workers``), where everything that can block runs — decoding, detection,
  the first model load, SQL, index searches, snapshot loads — never the event loop;
* the micro-batchers (:mod:`faceid.engine.service.batching`): the faces of concurrent photos go
  through the network together (``embed_batcher``), and the probes of concurrent identify calls
  go to the index as one batched search (``search_batcher``);
* the photo stages, one path for every use case that takes a photo (identify, enrol, verify,
  embed, detect): decode in a worker thread; the detector's attempts (HOG in a worker, the CNN in
  a batch with the scans of concurrent photos of the same size: ``detect_batcher``); the face the
  call means (:class:`~faceid.engine.domain.faces.FaceChoice`); landmarks and alignment in a
  worker; then the embedding batch (:meth:`Engine.faces`);
* the :class:`~faceid.engine.service.service.FaceService` (galleries, SQL, indexes), called in
  the worker threads.

Identify, top to bottom: ``Engine.identify`` → ``Engine.faces`` (a photo: ``detect_batcher``,
``embed_batcher``) →
``search_batcher`` → ``FaceService.identify_each`` → ``GalleryIndex.search_with_groups``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from faceid.engine.config import EngineConfig
from faceid.engine.domain import limits
from faceid.engine.domain.errors import (
    FaceIdError,
    InvalidInputError,
    ModelError,
    NotFoundError,
    UnavailableError,
    all_or_first_error,
)
from faceid.engine.domain.faces import Box, Detection, Face, FaceChoice, chosen_box
from faceid.engine.domain.records import ClusteringRun, Identity, Moved, NewIdentity, StoredCluster
from faceid.engine.domain.results import (
    Clustering,
    Detected,
    EmbeddedFace,
    EmbeddingInput,
    EnrolledFace,
    EnrollItem,
    FaceMatches,
    GalleryReading,
    GalleryStats,
    Identification,
    Match,
    PhotoInput,
    Verification,
)
from faceid.engine.domain.search import SearchParams
from faceid.engine.service.access import KeyRing, key_ring
from faceid.engine.service.batching import MicroBatcher
from faceid.engine.service.service import FaceService, Proceed
from faceid.engine.service.telemetry import Telemetry, Unobserved
from faceid.engine.store import DatabaseError, is_unavailable
from faceid.engine.vision.detect import Raw, Scan
from faceid.engine.vision.image import RGBImage
from faceid.engine.vision.pipeline import FacePipeline
from faceid.engine.vision.weights import models_source

log = logging.getLogger("faceid.engine")
T = TypeVar("T")
#: What a call compares: a photo (bytes, or with the face it means) or a ready embedding.
Probe = bytes | PhotoInput | EmbeddingInput
#: What one search batch shares: gallery, distance threshold, search parameters.
SearchKey = tuple[str, float, SearchParams]


def _database_reached(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, with a database that cannot be reached now reported as
    :class:`UnavailableError` (worth retrying), its cause in the log rather than in the answer."""
    try:
        return fn(*args)
    except DatabaseError as exc:
        if not is_unavailable(exc):
            raise
        log.warning("database unavailable: %s", str(exc).split("\n")[0])
        raise UnavailableError("the database is unavailable; retry later") from None


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its awaiter was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Engine:
    """Every use case of the engine as an ``async`` method; one per process and store.

    ``service`` and ``pipeline`` may be given (tests share one pipeline); by default the service
    opens the store and indexes of ``config``, and the pipeline (its models) loads on first use,
    in a worker thread: a deployment that sends only embeddings never loads it.  Without ``load``
    the galleries' indexes are opened by :meth:`open` (a server binds its port first and says
    NOT_SERVING meanwhile).  ``telemetry`` hears of every batch and stage (:mod:`.telemetry`).
    """

    def __init__(
        self,
        config: EngineConfig,
        service: FaceService | None = None,
        pipeline: FacePipeline | None = None,
        *,
        load: bool = True,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.service = service or FaceService(config, load=load)
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="faceid-worker")
        self._pipeline = pipeline
        self._pipeline_lock = threading.Lock()
        self.telemetry: Telemetry = telemetry or Unobserved()
        window = config.batch_window_ms / 1000

        def batcher(run: Callable[[Hashable, list[Any]], list[Any]], name: str, most: int) -> Any:
            return MicroBatcher(run, self.executor, window, most, config.batch_inflight, name, self.telemetry)

        self.search_batcher: MicroBatcher[tuple[EmbeddingInput, int], list[Match] | FaceIdError] = batcher(
            self._search_batch, "search", config.max_batch
        )
        self.embed_batcher: MicroBatcher[np.ndarray, np.ndarray] = batcher(
            self._embed_batch, "embed", config.max_batch
        )
        self.detect_batcher: MicroBatcher[Scan, Raw] = batcher(
            self._detect_batch, "detect", config.pipeline.detect.batch
        )
        #: Background clustering runs, one at a time (a run uses every core it can get).
        self.jobs = ThreadPoolExecutor(1, thread_name_prefix="faceid-cluster")

    @property
    def model_id(self) -> str:
        """The embedding model's id, ``name/version``."""
        return self.service.model.id

    @property
    def ready(self) -> bool:
        """Every gallery is open: calls can be served (see :meth:`open`)."""
        return self.service.galleries.ready.is_set()

    def opening(self) -> tuple[int, int]:
        """(galleries open, galleries to open) while :meth:`open` runs."""
        galleries = self.service.galleries
        return galleries.opened, galleries.to_open

    async def open(self) -> None:
        """Open every gallery's index (an engine made without ``load``), in a daemon thread of its
        own: a stop during the start need not wait for a gallery still loading (or for a database
        that does not answer) before the process can exit (:meth:`stop_opening`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                self.service.galleries.open()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, None)

        threading.Thread(target=run, name="faceid-open", daemon=True).start()
        await done

    def stop_opening(self) -> None:
        """Make :meth:`open` give up before its next gallery."""
        self.service.galleries.stop_opening()

    def readings(self) -> list[GalleryReading]:
        """What each open gallery holds now, for monitoring (blocking: a few indexed queries)."""
        return self.service.readings()

    def key_ring(self) -> KeyRing:
        """The API keys of this engine's store, in memory (:class:`KeyRing`)."""
        return key_ring(self.service.store)

    def close(self) -> None:
        """Finish the work in the worker threads, then snapshot every gallery and release the store
        (blocking: call it from a thread, or with :func:`asyncio.to_thread`)."""
        self.service.clustering.stop.set()  # a running clustering gives up at its next step
        self.jobs.shutdown(wait=True, cancel_futures=True)
        self.executor.shutdown(wait=True)
        self.service.close()

    # ---- worker threads ----------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(_database_reached, fn, *args))

    @property
    def pipeline(self) -> FacePipeline:
        """The face pipeline, loaded on first use (in a worker thread: it reads ~30 MB of weights).

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

    def _search_batch(
        self, key: Hashable, items: list[tuple[EmbeddingInput, int]]
    ) -> list[list[Match] | FaceIdError]:
        """One search for many callers' probes; a bad probe gets its own error, in its place."""
        gallery, threshold, params = cast(SearchKey, key)
        top = max(k for _, k in items)
        embeddings = [e for e, _ in items]
        started = time.perf_counter()
        results = _database_reached(self.service.identify_each, gallery, embeddings, top, threshold, params)
        self.telemetry.stage("search", len(items), time.perf_counter() - started)
        return [r if isinstance(r, FaceIdError) else r[:k] for r, (_, k) in zip(results, items, strict=True)]

    async def _search(self, key: SearchKey, probes: list[tuple[EmbeddingInput, int]]) -> list[list[Match]]:
        """The matches of each probe, through the search batch; the first bad probe's error."""
        return all_or_first_error(await self.search_batcher.submit(key, probes))

    def _timed(self, stage: str, items: int, fn: Callable[[], T]) -> T:
        """``fn()``, its time reported as ``stage`` (:mod:`.telemetry`)."""
        started = time.perf_counter()
        result = fn()
        self.telemetry.stage(stage, items, time.perf_counter() - started)
        return result

    def _embed_batch(self, _key: Hashable, chips: list[np.ndarray]) -> list[np.ndarray]:
        embedder = self.pipeline.embedder  # loaded (the first time) before the clock starts
        return self._timed("embed", len(chips), lambda: list(embedder.embed(np.stack(chips))))

    def _detect_batch(self, _key: Hashable, scans: list[Scan]) -> list[Raw]:
        detector = self.pipeline.detector
        return self._timed("detect_cnn", len(scans), lambda: detector.cnn(scans))

    # ---- the photo stages --------------------------------------------------------------------
    async def _decode(self, photo: bytes) -> RGBImage:
        """The upright RGB pixels of a photo, in a worker (which also loads the models at first)."""

        def decode() -> RGBImage:
            pipeline = self.pipeline  # loaded (the first time) before the clock starts
            return self._timed("decode", 1, lambda: pipeline.decode(photo))

        return await self._run(decode)

    async def _find_boxes(self, image: RGBImage) -> list[tuple[Box, float]]:
        """Boxes and scores of the faces in ``image``, largest first: the detector's attempts
        (:attr:`FaceDetector.attempts`) until one finds a face, HOG in a worker, the CNN batched
        with the scans of concurrent photos of the same size."""
        detector = self.pipeline.detector
        for kind, upsample in detector.attempts_for(*image.shape[:2]):
            if kind == "hog":
                scan, raw = await self._run(lambda u=upsample: self._hog(image, u))
            else:
                scan = await self._run(detector.scan, image, upsample)
                [raw] = await self.detect_batcher.submit(scan.key, [scan])
            found = detector.boxes(scan, raw)
            if found:
                return found
        return []

    def _hog(self, image: RGBImage, upsample: int) -> tuple[Scan, Raw]:
        detector = self.pipeline.detector
        scan = detector.scan(image, upsample)
        return scan, self._timed("detect_hog", 1, lambda: detector.hog(scan))

    async def _chosen_boxes(self, image: RGBImage, choice: FaceChoice | None) -> list[tuple[Box, float]]:
        """Every face's box (no ``choice``), or the one box ``choice`` picks (none when no face is
        found); a box the caller gives is checked and taken as is, with no detection."""
        height, width = image.shape[:2]
        if choice is not None and choice.box is not None:
            limits.check_face_box(choice.box, width, height, self.config.pipeline.detect.min_face_size)
            return [(choice.box, math.nan)]
        found = await self._find_boxes(image)
        if not found or choice is None:
            return found
        rule = choice.rule or self.config.face_rule
        return [found[chosen_box([box for box, _ in found], rule, width, height)]]

    async def faces(self, photo: bytes | PhotoInput, choice: FaceChoice | None = None) -> list[Face]:
        """Every face in a photo, largest first, with its embedding; or, with a choice (``choice``,
        else the photo's own), the one face it means ([] when no face is found).  Decoding,
        detection (batched), landmarks and alignment run in workers, then the embedding in a network
        batch shared with other calls."""
        if isinstance(photo, PhotoInput):
            choice = choice or photo.face
        image = await self._decode(photo.data if isinstance(photo, PhotoInput) else photo)
        boxes = await self._chosen_boxes(image, choice)
        if not boxes:
            return []

        def align() -> tuple[list[Detection], np.ndarray]:
            found = self.pipeline.detector.with_landmarks(image, boxes)
            return found, self.pipeline.align(image, found)

        found, chips = await self._run(align)
        embeddings = await self.embed_batcher.submit("embed", list(chips))
        return [Face(d, e) for d, e in zip(found, embeddings, strict=True)]

    async def _check_gallery_before_photos(self, gallery: str, *probes: Probe) -> None:
        """NOT_FOUND before any photo is decoded; calls with embeddings only are checked where
        their gallery is used, with no extra hop to a worker."""
        if any(not isinstance(p, EmbeddingInput) for p in probes):
            await self._run(self.service.gallery, gallery)

    async def _probe_vector(self, probe: Probe) -> EmbeddingInput | npt.NDArray[np.float32]:
        """A probe as a vector: an embedding as sent (checked against the gallery later), or the
        embedding of the photo's face the call means (its choice, else the default rule)."""
        if isinstance(probe, EmbeddingInput):
            return probe
        found = await self.faces(probe, _one_face(probe))
        if not found:
            raise InvalidInputError("no face was found in the probe photo")
        return found[0].embedding.astype(np.float32)

    # ---- galleries -----------------------------------------------------------------------------
    async def create_gallery(self, name: str) -> GalleryStats:
        def create() -> GalleryStats:
            self.service.create_gallery(name)
            return self.service.stats(name)

        return await self._run(create)

    async def gallery(self, name: str) -> GalleryStats:
        return await self._run(self.service.stats, name)

    async def list_galleries(self) -> list[GalleryStats]:
        def stats() -> list[GalleryStats]:
            found = []
            for g in self.service.list_galleries():
                try:
                    found.append(self.service.stats(g.name))
                except NotFoundError:  # deleted meanwhile
                    continue
            return found

        return await self._run(stats)

    async def delete_gallery(self, name: str) -> None:
        await self._run(self.service.delete_gallery, name)

    # ---- enrolment ---------------------------------------------------------------------------
    async def enroll(
        self,
        gallery: str,
        identity_id: str,
        probe: Probe,
        all_faces: bool = False,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
        proceed: Proceed | None = None,
    ) -> list[EnrolledFace]:
        """Enrol an embedding, or the face of a photo the call means (its choice, else the default
        rule; every face with ``all_faces``), under ``identity_id``.  The fields are checked before
        the photo is decoded, and a photo the identity already holds (the same bytes, the same
        choice) is not decoded again: the answer is the faces enrolled from it before, marked
        ``already_enrolled``."""
        if isinstance(probe, EmbeddingInput):
            return await self._run(
                self.service.enroll_embeddings,
                gallery,
                [identity_id],
                [probe],
                display_name,
                attributes,
                proceed,
            )
        photo = probe if isinstance(probe, PhotoInput) else PhotoInput(probe)
        if all_faces and photo.face is not None:
            raise InvalidInputError(
                "all_faces enrols every face of the photo: send either all_faces or a face choice, not both"
            )
        digest, known = await self._run(
            self.service.source_faces,
            gallery,
            identity_id,
            photo.data,
            display_name,
            attributes,
            self._choice_tag(photo.face),
        )
        if known:
            return known
        found = await self.faces(photo, None if all_faces else _one_face(photo))
        return await self._run(
            self.service.enroll_faces,
            gallery,
            identity_id,
            found,
            digest,
            all_faces,
            display_name,
            attributes,
            proceed,
        )

    def _choice_tag(self, choice: FaceChoice | None) -> str:
        """What sets a choice apart in a photo's source hash: nothing for the default rule."""
        if choice is None:
            return ""
        if choice.box is not None:
            b = choice.box
            return f"box:{b.left:g},{b.top:g},{b.right:g},{b.bottom:g}"
        rule = choice.rule or self.config.face_rule
        return "" if rule == self.config.face_rule else f"rule:{rule}"

    async def enroll_each(
        self, gallery: str, items: Sequence[EnrollItem], proceed: Proceed | None = None
    ) -> list[EnrolledFace | FaceIdError]:
        """Embeddings, each item on its own merits, the good ones in one transaction
        (:meth:`FaceService.enroll_each`)."""
        return await self._run(self.service.enroll_each, gallery, items, proceed)

    # ---- identify and verify -------------------------------------------------------------------
    def _search_key(
        self,
        gallery: str,
        top_k: int,
        threshold: float | None,
        min_similarity: float,
        params: SearchParams | None,
    ) -> SearchKey:
        """Identify's arguments checked, before a call joins a batch (a bad call must not fail its
        batch-mates), as the key of the search batch it joins."""
        self.service.check_top_k(top_k)
        decision = self.service.decision_threshold(threshold)
        if not -1 <= min_similarity <= 1:
            raise InvalidInputError("min_similarity must be between -1 and 1")
        params = params or SearchParams()
        if (params.nprobe or 0) < 0 or (params.rerank_factor or 0) < 0:
            raise InvalidInputError("nprobe and rerank_factor must not be negative")
        return (gallery, decision, params)

    async def _identify_photo(
        self, key: SearchKey, photo: bytes | PhotoInput, top_k: int, min_similarity: float
    ) -> list[FaceMatches]:
        """Each face of a photo (or the one its choice names) and its matches."""
        found = await self.faces(photo)
        inputs = [(EmbeddingInput(f.embedding), top_k) for f in found]
        lists = await self._search(key, inputs) if inputs else []
        return [
            FaceMatches(f.box, _score(f), _at_least(m, min_similarity))
            for f, m in zip(found, lists, strict=True)
        ]

    async def identify(
        self,
        gallery: str,
        probe: Probe,
        top_k: int = 5,
        threshold: float | None = None,
        min_similarity: float = 0.0,
        params: SearchParams | None = None,
    ) -> Identification:
        """The ``top_k`` nearest identities of an embedding, or of each face in a photo (largest
        first, each with its box; the one face the photo's choice names), best first.  Matches
        below ``min_similarity`` (when not 0) are left out; ``threshold`` (a distance; None or 0:
        the model's default) decides ``is_match``."""
        key = self._search_key(gallery, top_k, threshold, min_similarity, params)
        if isinstance(probe, EmbeddingInput):
            [matches] = await self._search(key, [(probe, top_k)])
            return Identification(key[1], [FaceMatches(None, None, _at_least(matches, min_similarity))])
        await self._check_gallery_before_photos(gallery, probe)
        return Identification(key[1], await self._identify_photo(key, probe, top_k, min_similarity))

    async def identify_batch(
        self,
        gallery: str,
        probes: Sequence[Probe | FaceIdError],
        top_k: int = 5,
        threshold: float | None = None,
        min_similarity: float = 0.0,
        params: SearchParams | None = None,
    ) -> tuple[float, list[list[FaceMatches] | FaceIdError]]:
        """Many probes in one call: the threshold applied, and each probe's result in its place —
        its faces' matches as :meth:`identify` gives them, or its own error (a bad probe fails
        alone).  The embeddings go to the index as one batched search (with any other callers'),
        the photos through the photo stages together, their faces then searched in shared batches.
        A probe the transport could not read is given as its error, and answered with it."""
        limits.check_identify_batch(len(probes))
        key = self._search_key(gallery, top_k, threshold, min_similarity, params)
        results: list[list[FaceMatches] | FaceIdError] = [
            p if isinstance(p, FaceIdError) else [] for p in probes
        ]
        embedded = [i for i, p in enumerate(probes) if isinstance(p, EmbeddingInput)]
        photos = [i for i, p in enumerate(probes) if isinstance(p, (bytes, PhotoInput))]
        await self._check_gallery_before_photos(gallery, *(cast(Probe, probes[i]) for i in photos))

        async def search_embeddings() -> None:
            if embedded:
                found = await self.search_batcher.submit(
                    key, [(cast(EmbeddingInput, probes[i]), top_k) for i in embedded]
                )
                for i, r in zip(embedded, found, strict=True):
                    results[i] = (
                        r
                        if isinstance(r, FaceIdError)
                        else [FaceMatches(None, None, _at_least(r, min_similarity))]
                    )

        async def search_photo(i: int) -> None:
            try:
                results[i] = await self._identify_photo(
                    key, cast(bytes | PhotoInput, probes[i]), top_k, min_similarity
                )
            except (InvalidInputError, NotFoundError) as exc:  # this photo's fault; not the server's
                results[i] = exc

        await asyncio.gather(search_embeddings(), *(search_photo(i) for i in photos))
        return key[1], results

    async def search_faces(
        self,
        gallery: str,
        face_ids: Sequence[int],
        top_k: int = 5,
        threshold: float | None = None,
        min_similarity: float = 0.0,
        params: SearchParams | None = None,
    ) -> tuple[float, list[list[FaceMatches] | FaceIdError]]:
        """Enrolled faces as probes, each without itself (:meth:`FaceService.search_faces`): the
        threshold applied and each face's result in its place."""
        decision = self._search_key(gallery, top_k, threshold, min_similarity, params)[1]
        found = await self._run(self.service.search_faces, gallery, face_ids, top_k, threshold, params)
        return decision, [
            r if isinstance(r, FaceIdError) else [FaceMatches(None, None, _at_least(r, min_similarity))]
            for r in found
        ]

    async def cluster_faces(
        self,
        gallery: str,
        probes: Sequence[Probe | FaceIdError],
        strict_distance: float | None = None,
        loose_distance: float | None = None,
    ) -> Clustering:
        """The faces of many probes grouped into people (:meth:`FaceService.cluster_faces`): each
        embedding, and every face found in each photo (or the one its choice names), the photos
        through the photo stages together.  A probe that gives no face — no face found, a photo
        that cannot be read, a probe the transport could not read — is in ``errors``, in its place."""
        limits.check_cluster_faces(len(probes), self.config.cluster.max_faces)
        photos = [i for i, p in enumerate(probes) if isinstance(p, (bytes, PhotoInput))]
        await self._check_gallery_before_photos(gallery, *(cast(Probe, probes[i]) for i in photos))
        found: dict[int, list[Face] | FaceIdError] = {}

        async def photo_faces(i: int) -> None:
            try:
                found[i] = await self.faces(cast(bytes | PhotoInput, probes[i])) or InvalidInputError(
                    "no face was found in the photo"
                )
            except (InvalidInputError, NotFoundError) as exc:  # this photo's fault; not the server's
                found[i] = exc

        await asyncio.gather(*(photo_faces(i) for i in photos))
        faces: list[tuple[int, Box | None, EmbeddingInput | npt.NDArray[np.float32]]] = []
        errors: list[tuple[int, FaceIdError]] = []
        for i, probe in enumerate(probes):
            result = found.get(i, probe)
            if isinstance(result, FaceIdError):
                errors.append((i, result))
            elif isinstance(result, EmbeddingInput):
                faces.append((i, None, result))
            else:
                faces.extend((i, f.box, f.embedding.astype(np.float32)) for f in cast(list[Face], result))
        clustering = await self._run(
            self.service.cluster_faces, gallery, faces, strict_distance, loose_distance
        )
        return replace(clustering, errors=sorted([*errors, *clustering.errors], key=lambda e: e[0]))

    # ---- clustering a gallery (background runs) ----------------------------------------------
    async def start_clustering(
        self,
        gallery: str,
        strict_distance: float | None = None,
        loose_distance: float | None = None,
        update_of: int | None = None,
        identity_prefix: str = "",
    ) -> ClusteringRun:
        """Start clustering every face of a gallery, or (``update_of``) the faces a run has not
        seen (:class:`GalleryClustering`): the run comes back at once, "running"; it works in the
        background thread of this process."""
        run = await self._run(
            self.service.clustering.start,
            gallery,
            strict_distance,
            loose_distance,
            update_of,
            identity_prefix,
        )
        self.jobs.submit(self.service.clustering.run, gallery, run)
        return run

    async def clustering(self, gallery: str, run_id: int) -> ClusteringRun:
        return await self._run(self.service.clustering.get, gallery, run_id)

    async def clusterings(self, gallery: str) -> list[ClusteringRun]:
        return await self._run(self.service.clustering.of_gallery, gallery)

    async def clusters(
        self, gallery: str, run_id: int, page_size: int = 100, page_token: str = "", min_size: int = 1
    ) -> tuple[list[StoredCluster], str]:
        return await self._run(
            self.service.clustering.clusters, gallery, run_id, page_size, page_token, min_size
        )

    async def cluster_to_identity(
        self, gallery: str, run_id: int, rank: int, external_id: str, new: NewIdentity | None = None
    ) -> Moved:
        """Act on a cluster in one call: its faces (as they are now) put under a new identity
        (``new``: promote) or an existing one (merge); see :meth:`FaceService.move_faces`."""

        def act() -> Moved:
            cluster = self.service.clustering.cluster(gallery, run_id, rank)
            faces = [m.face_id for m in cluster.members]
            return self.service.move_faces(gallery, faces, external_id, new)

        return await self._run(act)

    async def delete_clustering(self, gallery: str, run_id: int) -> None:
        await self._run(self.service.clustering.delete, gallery, run_id)

    async def verify_identity(
        self, gallery: str, probe: Probe, identity_id: str, threshold: float | None = None
    ) -> Verification:
        """A probe against an identity: the distance to its nearest enrolled face."""
        self.service.decision_threshold(threshold)
        await self._check_gallery_before_photos(gallery, probe)
        vector = await self._probe_vector(probe)
        return await self._run(self.service.verify_identity, gallery, vector, identity_id, threshold)

    async def verify_pair(
        self, gallery: str, a: Probe, b: Probe, threshold: float | None = None
    ) -> Verification:
        """Two probes against each other (the gallery names the model they are compared under)."""
        self.service.decision_threshold(threshold)
        await self._check_gallery_before_photos(gallery, a, b)
        first, second = await asyncio.gather(self._probe_vector(a), self._probe_vector(b))
        return await self._run(self.service.verify_pair, gallery, first, second, threshold)

    # ---- identities ------------------------------------------------------------------------------
    async def get_identity(self, gallery: str, identity_id: str) -> Identity:
        return await self._run(self.service.get_identity, gallery, identity_id)

    async def list_identities(
        self, gallery: str, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[Identity], str]:
        return await self._run(self.service.list_identities, gallery, page_size, page_token)

    async def update_identity(
        self,
        gallery: str,
        identity_id: str,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Identity:
        return await self._run(self.service.update_identity, gallery, identity_id, display_name, attributes)

    async def delete_identity(self, gallery: str, identity_id: str) -> list[int]:
        return await self._run(self.service.delete_identity, gallery, identity_id)

    async def delete_face(self, gallery: str, face_id: int) -> None:
        await self._run(self.service.delete_face, gallery, face_id)

    # ---- utilities -------------------------------------------------------------------------------
    async def detect(self, photo: bytes) -> Detected:
        """The faces in a photo (boxes, scores, landmarks; no embeddings) and its upright size."""
        image = await self._decode(photo)
        boxes = await self._find_boxes(image)
        found = await self._run(self.pipeline.detector.with_landmarks, image, boxes) if boxes else []
        return Detected(found, image.shape[1], image.shape[0])

    async def embed(self, photo: bytes, aligned: bool = False) -> list[EmbeddedFace]:
        """The embedding of every face in a photo, or of a photo that is an aligned 150×150 chip."""
        if aligned:
            [vector] = await self._run(lambda: self.pipeline.embed_chips([photo]))
            return [EmbeddedFace(None, vector)]
        return [EmbeddedFace(f.detection, f.embedding) for f in await self.faces(photo)]


def _one_face(probe: bytes | PhotoInput) -> FaceChoice:
    """The choice of a call that takes one face: the photo's own, else the default rule."""
    return probe.face if isinstance(probe, PhotoInput) and probe.face is not None else FaceChoice()


def _score(face: Face) -> float | None:
    """A face's detection score; None for a box the caller gave."""
    return face.detection.score if math.isfinite(face.detection.score) else None


def _at_least(matches: list[Match], min_similarity: float) -> list[Match]:
    """The matches at ``min_similarity`` or above (all when it is 0)."""
    return [m for m in matches if m.similarity >= min_similarity] if min_similarity else matches
