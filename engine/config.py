"""The engine's configuration, one typed tree: :class:`EngineConfig` and its sections
(``pipeline.decode``, ``pipeline.detect``, ``pipeline.embed``, ``index``).

Every knob has a default chosen from a benchmark (see BENCHMARKS.md) and a range check in its
``__post_init__``, so a bad value fails at start-up with a message, not mid-request.  The server's
settings (:class:`faceid.server.config.ServerConfig`) hold this tree as ``engine``; ``faceid
serve`` reaches every value (file, environment, flags: README "Server settings").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from faceid.engine.domain.faces import FACE_RULES, FaceRule

Precision = Literal["auto", "fp32", "fp16", "bf16"]
IndexDevice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class DecodeConfig:
    """Limits applied to incoming photos before any pixel is decoded."""

    #: Refuse photos whose header declares more pixels than this (decompression bombs).
    max_pixels: int = 50_000_000
    #: Refuse photos longer than this many times their width, or wider than this times their height.
    max_aspect_ratio: float = 20.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")
        if self.max_aspect_ratio < 1:
            raise ValueError("max_aspect_ratio must be at least 1")


DetectorKind = Literal["auto", "hog", "cnn", "cascade"]


@dataclass(frozen=True)
class DetectConfig:
    """The face detector.  Both of dlib's detectors scan an 80×80 px window, so upsampling finds
    smaller faces."""

    #: "cnn": dlib's MMOD CNN detector in torch (:mod:`faceid.engine.vision.mmod`; the same boxes
    #: and scores as dlib's to within 1e-5, ~20× dlib's speed on the CPU), which finds the turned and
    #: profile faces HOG misses; "hog": dlib's HOG frontal detector (CPU, one thread at a time);
    #: "cascade": HOG first, the CNN on photos where HOG finds nothing; "auto" (the default): the CNN
    #: where it runs on a GPU (batched across calls), else the cascade.  Chosen by the benchmark
    #: through the API (BENCHMARKS.md "Choosing the detector"): on the CPU the cascade is as
    #: accurate as the CNN (LFW 0.990 / 0.991, cfp_dev frontal–profile 0.844 / 0.844, 0.847 with
    #: the cascade after a landmark fix; HOG alone gets 0.62) at twice its speed on frontal photos,
    #: where HOG finds the face.
    detector: DetectorKind = "auto"
    #: Where the CNN runs: "auto" (CUDA when torch sees it, else the CPU) or a torch device.
    device: str = "auto"
    #: Times the photo is upsampled ×2 before the first scan (0 finds faces down to about 80 px,
    #: 1 to about 40 px at ~4× the time).
    upsample: int = 0
    #: Where the first scan finds no face, scan once more upsampled this many times (a value
    #: ≤ ``upsample`` turns the retry off).  A photo with one small face is scanned twice; a photo
    #: with a large face and small ones far behind it gets only the large one.
    retry_upsample: int = 1
    #: Photos of one size scanned through the CNN together, at most (concurrent calls' photos are
    #: batched by the engine; larger batches pay on a GPU).
    batch: int = 8
    #: Cap on the detector's working image (pixels): larger photos are scaled down for the
    #: scan only; landmarks and chips still come from the full-resolution photo.
    max_detect_pixels: int = 2_500_000
    #: Faces narrower than this (pixels of the original photo) are dropped.
    min_face_size: int = 20
    #: HOG: added to its decision threshold (negative finds more, and falser, faces); the CNN:
    #: the least score kept (the network keeps scores above 0 only).
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.upsample <= 3:
            raise ValueError("upsample must be between 0 and 3")
        if self.batch < 1:
            raise ValueError("batch must be positive")
        if not 0 <= self.retry_upsample <= 3:
            raise ValueError("retry_upsample must be between 0 and 3")
        if self.max_detect_pixels < 80 * 80:
            raise ValueError("max_detect_pixels must be at least 6400 (one 80×80 scan window)")
        if self.min_face_size < 0:
            raise ValueError("min_face_size must be non-negative")
        if self.detector not in ("auto", "hog", "cnn", "cascade"):
            raise ValueError(f"detector must be auto, hog, cnn or cascade; got {self.detector!r}")
        if not math.isfinite(self.score_threshold):
            raise ValueError("score_threshold must be a finite number")


@dataclass(frozen=True)
class EmbedConfig:
    """The torch embedder."""

    #: "auto" picks CUDA when available, else the CPU; or any torch device string.
    device: str = "auto"
    #: "auto" is fp16 on CUDA (embeddings within cosine 0.9999 of fp32) and fp32 on the CPU.
    precision: Precision = "auto"
    #: Images per network forward pass (a face and its mirror count as two); 0 = automatic:
    #: 32 on the CPU (larger batches spill the caches and run slower), 1024 on CUDA.
    batch_size: int = 0
    #: Average the embeddings of each chip and its mirror image (more accurate, twice the work).
    flip: bool = True
    #: Scale each embedding to unit length, so that Euclidean distance ranks as cosine does
    #: (more accurate on LFW than dlib's raw vectors; distances then lie in [0, 2]).
    normalize: bool = True
    #: CPU threads for torch; 0 keeps torch's default.
    threads: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.batch_size <= 4096:
            raise ValueError("batch_size must be between 0 (automatic) and 4096")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError("precision must be auto, fp32, fp16 or bf16")
        if self.threads < 0:
            raise ValueError(f"threads must not be negative (0: torch's default); got {self.threads}")
        if not self.device:
            raise ValueError("device must be auto, cpu, cuda, cuda:N or another torch device")


@dataclass(frozen=True)
class PipelineConfig:
    decode: DecodeConfig = DecodeConfig()
    detect: DetectConfig = DetectConfig()
    embed: EmbedConfig = EmbedConfig()


@dataclass(frozen=True)
class IndexConfig:
    """How a gallery index grows; defaults come from ``benchmarks/index_scale.py``."""

    #: Switch from exact search to IVF-PQ once the gallery holds this many faces.
    train_min: int = 50_000
    #: Retrain when the gallery has grown this many times since the last training.
    retrain_growth: float = 4.0
    #: nlist = the power of two nearest to ``nlist_factor × √N``.
    nlist_factor: float = 4.0
    #: PQ sub-quantizers (4-bit fast-scan codes: ``pq_m / 2`` bytes per face); 0: one per two
    #: dimensions of the gallery's subspace (42 for dlib's embeddings).
    pq_m: int = 0
    #: FAISS factory string of the trained index; ``{nlist}`` and ``{pq_m}`` are filled in.
    factory: str = "IVF{nlist},PQ{pq_m}x4fs"
    #: PQ-encode each vector's offset from its list's centroid.  Off: one look-up table per
    #: query instead of one per list probed, and no ten-fold slow-down on degenerate data;
    #: the re-ranking makes up the lost precision (BENCHMARKS.md).
    by_residual: bool = False
    #: Store and search a trained gallery in the subspace its vectors span (to within this
    #: share of their length; 0: always all dimensions).  See :mod:`faceid.engine.index.subspace`.
    subspace_tol: float = 2e-4
    #: Training sample: this many points per list (FAISS wants ≥ 39), at most all vectors.
    train_points_per_list: int = 64
    #: Default lists probed, as a fraction of nlist (at least ``nprobe_min``).
    nprobe_fraction: float = 3 / 32
    nprobe_min: int = 16
    #: Default re-rank factor: ``k × rerank_factor`` candidates, at least ``rerank_min``, for a
    #: gallery of ``rerank_reference`` faces; larger galleries scale it by √(N / reference), up
    #: to 64: a denser gallery has more near-ties for PQ to misorder (measured: ×8 holds recall@1
    #: 0.993 at a million faces; ten million need ×16 to ×32 for 0.99).
    rerank_factor: int = 8
    rerank_reference: int = 1_000_000
    rerank_min: int = 64
    #: Train in a background thread (False: train synchronously inside ``add``; for tests and tools).
    background: bool = True
    #: Largest k a search may ask for.
    max_k: int = 1000
    #: Where searches run: "auto" uses a GPU when faiss has GPU support and sees one, "cpu"
    #: never does, "cuda" requires one.
    device: IndexDevice = "auto"
    #: A gallery moves its searches to the GPU once it holds this many faces (smaller ones are
    #: searched exactly on the CPU in well under a millisecond).
    gpu_min: int = 20_000
    #: GPU scratch memory per process (faiss otherwise reserves 18 % of the card).
    gpu_temp_bytes: int = 512 << 20

    def __post_init__(self) -> None:
        counts = {
            "train_min": self.train_min,
            "train_points_per_list": self.train_points_per_list,
            "nprobe_min": self.nprobe_min,
            "rerank_factor": self.rerank_factor,
            "rerank_reference": self.rerank_reference,
            "rerank_min": self.rerank_min,
            "max_k": self.max_k,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be positive; got {value}")
        if self.train_points_per_list < 39:
            raise ValueError("train_points_per_list must be at least 39 (FAISS's k-means wants 39 per list)")
        if self.retrain_growth <= 1:
            raise ValueError(f"retrain_growth must be above 1; got {self.retrain_growth}")
        if self.nlist_factor <= 0:
            raise ValueError(f"nlist_factor must be positive; got {self.nlist_factor}")
        if self.pq_m < 0 or self.pq_m % 2:
            raise ValueError(f"pq_m must be 0 (automatic) or a positive even number; got {self.pq_m}")
        if "{nlist}" not in self.factory:
            raise ValueError(f"factory must hold {{nlist}} (and usually {{pq_m}}); got {self.factory!r}")
        if not 0 <= self.subspace_tol < 1:
            raise ValueError(f"subspace_tol must be in [0, 1); got {self.subspace_tol}")
        if not 0 < self.nprobe_fraction <= 1:
            raise ValueError(f"nprobe_fraction must be in (0, 1]; got {self.nprobe_fraction}")
        if self.rerank_factor > 64:
            raise ValueError(f"rerank_factor must be at most 64; got {self.rerank_factor}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda; got {self.device!r}")
        if self.gpu_min < 0 or self.gpu_temp_bytes < 0:
            raise ValueError("gpu_min and gpu_temp_bytes must not be negative")

    def nlist_for(self, n: int) -> int:
        """Lists for ``n`` vectors: a power of two near ``nlist_factor·√n``, with ≥ 39 points per list."""
        target = max(self.nlist_factor * math.sqrt(max(n, 1)), 1.0)
        nlist = 2 ** round(math.log2(target))
        while nlist > 1 and n < 39 * nlist:
            nlist //= 2
        return int(nlist)


@dataclass(frozen=True)
class ClusterConfig:
    """Clustering faces into people (:mod:`faceid.engine.cluster.linkage`): each face's
    ``neighbours`` nearest propose merges, and two clusters merge when the mean similarity of all
    their pairs of members reaches the threshold of distance ``strict_distance`` for two single
    faces, tending to ``loose_distance`` as the clusters grow.  Defaults measured on LFW's 13,233
    photos through the API (BENCHMARKS.md "Clustering"): BCubed F 0.954, pairwise F 0.983 at
    ``neighbours`` 30 (0.953 / 0.970 at 10); the plateau spans strict 0.31–0.33, loose 0.36–0.37.
    In false-match rates of the model's calibration: strict ≈ 3·10⁻⁵, loose ≈ 4·10⁻⁴."""

    neighbours: int = 30
    strict_distance: float = 0.32
    loose_distance: float = 0.36
    #: Faces (embeddings, or faces found in photos) one ClusterFaces call may send.
    max_faces: int = 20_000

    def __post_init__(self) -> None:
        if not 1 <= self.neighbours <= 1000:
            raise ValueError(f"neighbours must be between 1 and 1000; got {self.neighbours}")
        if not 0 < self.strict_distance <= self.loose_distance < 2:
            raise ValueError(
                "distances must satisfy 0 < strict_distance ≤ loose_distance < 2; got "
                f"{self.strict_distance} and {self.loose_distance}"
            )
        if self.max_faces < 2:
            raise ValueError(f"max_faces must be at least 2; got {self.max_faces}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to run: where it keeps its data, how it schedules work, and
    its sections.  The root of the engine's tree."""

    #: Data directory: the SQLite database and the index snapshots.
    data_dir: Path = Path("faceid-data")
    #: SQLAlchemy URL of the store; empty (or None): SQLite file ``faceid.db`` in the data directory.
    database_url: str | None = None
    #: Threads for CPU-bound work (decoding, detection, embedding, search), per process.
    workers: int = 4
    #: Micro-batching (adaptive, :mod:`faceid.engine.service.batching`): while ``batch_inflight``
    #: batches run, new requests wait and go together in the next batch (at most ``max_batch``
    #: items); ``batch_window_ms`` > 0 also holds a request arriving at an idle engine that long.
    #: One batch at a time (per gallery and search settings) makes the batches bigger and holds the
    #: GIL less: at 1M faces, 32 callers, +22 % identify calls/s and p99 39 ms against 57 ms with 2.
    batch_window_ms: float = 0.0
    max_batch: int = 256
    batch_inflight: int = 1
    #: Write a gallery's index snapshot after this many changes (0: only on close).
    snapshot_every: int = 100_000
    #: Largest top_k a caller may ask for.
    max_top_k: int = 100
    #: Identity rows kept in memory for identify's results (warmed at start, filled on enrol);
    #: beyond it the least recently used go, and identify reads them from SQL in one query.
    identity_cache: int = 1_000_000
    #: With a shared store (``faceid serve --processes N``), also catch up with the other
    #: processes' logged changes in the background this often (seconds), so that a process no
    #: search reached meanwhile does not meet a long backlog at its next search.
    sync_seconds: float = 1.0
    #: Erasure bound, seconds: this long after a delete is acknowledged (an identity, a face, a
    #: gallery), also when the process was killed meanwhile and restarted, no file in the data
    #: directory holds the erased embeddings (the snapshots that held them are rewritten, SQLite's
    #: write-ahead log is emptied into the database file).  A pass starts min(1 s, bound / 5)
    #: after the first delete that needs one, gathering the deletes that come meanwhile; the bound
    #: holds while rewriting the affected snapshots takes under (bound − that) / 2 (a snapshot of
    #: 100,000 faces: ~0.1 s).  With a shared store the process that writes snapshots hears of
    #: another's delete within ``sync_seconds``, which adds to the bound.  PostgreSQL keeps a
    #: deleted row's bytes in its own files regardless (docs/reliability.md).  0: erase only at
    #: close.
    erasure_seconds: float = 5.0
    #: Shared store: the change log is trimmed up to a snapshot only once the snapshot is this old
    #: (seconds), so that the other processes, which catch up every ``sync_seconds``, have replayed
    #: what is dropped; one that has not (stalled that long) finds the log's "trim" row past its
    #: position and rebuilds its index from the store.  One process alone trims at each snapshot.
    change_log_keep_seconds: float = 300.0
    #: Which face a call that takes one face of a photo means, unless the call says (enrol,
    #: verify): "centre", the face nearest the photo's centre, or "largest".  Measured through the
    #: API on LFW and cfp_dev (BENCHMARKS.md "Choosing the detector"): the subject of a photo with
    #: bystanders is more often the central face than the largest.
    face_rule: FaceRule = "centre"
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    #: Set by the server, not by operators (:data:`DERIVED`): other processes serve the same
    #: store (before each search and write this one catches up with the changes they logged), and
    #: whether this process is the one that writes index snapshots and clears what a crashed one left.
    shared: bool = False
    snapshots: bool = True

    def __post_init__(self) -> None:
        counts = {
            "workers": self.workers,
            "max_batch": self.max_batch,
            "batch_inflight": self.batch_inflight,
            "max_top_k": self.max_top_k,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be positive; got {value}")
        if self.face_rule not in FACE_RULES:
            raise ValueError(f"face_rule must be one of {', '.join(FACE_RULES)}; got {self.face_rule!r}")
        if self.max_top_k > self.index.max_k:
            raise ValueError(f"max_top_k ({self.max_top_k}) must not exceed index.max_k ({self.index.max_k})")
        nonnegative = {
            "batch_window_ms": self.batch_window_ms,
            "snapshot_every": self.snapshot_every,
            "identity_cache": self.identity_cache,
            "erasure_seconds": self.erasure_seconds,
            "change_log_keep_seconds": self.change_log_keep_seconds,
        }
        for name, number in nonnegative.items():
            if number < 0:
                raise ValueError(f"{name} must not be negative; got {number}")
        if self.sync_seconds <= 0:
            raise ValueError(f"sync_seconds must be positive; got {self.sync_seconds}")

    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'faceid.db'}"


#: Fields of :class:`EngineConfig` the server sets from its own role, not read from settings.
DERIVED = frozenset({"shared", "snapshots"})
