"""Gallery index: top-k nearest enrolled faces, exact while small, IVF-PQ with exact re-ranking at scale.

One :class:`FaissGalleryIndex` per gallery.  Its life runs itself:

* **exact** — ``IndexIDMap(IndexFlatL2)`` while the gallery is small;
* **training** — once it holds ``train_min`` vectors, an IVF-PQ index (4-bit
  fast-scan PQ) is trained on a sample in a background thread, filled, caught up
  with the adds and removes made meanwhile (a journal), and swapped in atomically;
  searches keep using the exact index meanwhile and never wait for training;
* **ivf_pq** — IVF-PQ (non-residual 4-bit fast-scan PQ) proposes ``k × rerank_factor``
  candidates, whose exact distances, from a float16 copy of every vector
  (:class:`VectorStore`), choose the final order.  It retrains when the gallery has grown
  ``retrain_growth``-fold.  Both work in the subspace the gallery's vectors span
  (:mod:`faceid.engine.subspace`; 84 of 128 dimensions for dlib's embeddings), fitted at
  training: the same distances for fewer numbers.

Scores are **Euclidean distances** between embeddings (≥ 0, smaller = more alike;
FAISS's squared L2 is square-rooted before it is returned).  Concurrency: any
number of searches run in parallel (FAISS releases the GIL); adds and removes
take a write lock for the few milliseconds they need.

GPU: where faiss has GPU support and sees a GPU (``IndexConfig.device``), a gallery of at
least ``gpu_min`` faces keeps an exact float16 copy of its live vectors on the GPU
(:class:`GpuReplica`, faiss ``GpuIndexFlatL2``) and answers every search from it: exact
results at a speed no CPU operating point reaches.  The CPU index is still kept (it is what
snapshots hold, and the fallback) and its k-means training runs on the GPU.

Persistence: :meth:`save` writes the index, the vector copy and the store's
change sequence number to a temporary file with a SHA-256 checksum, fsyncs it
and renames it into place; :meth:`load` refuses a file whose checksum, magic or
shape is wrong (:class:`SnapshotError`), and the caller rebuilds from the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import numpy as np
import numpy.typing as npt

from faceid.engine.subspace import Subspace

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
IndexKind = Literal["exact", "ivf_pq"]
IndexDevice = Literal["auto", "cpu", "cuda"]


#: The first faiss whose IVF fast-scan indexes really remove: 1.8 aborts, and 1.9 to 1.13 return
#: 0 and keep the codes (checked on the PyPI wheels), which would break deletes and erasure.
FAISS_MIN = (1, 14)


_FAISS_VERSION = tuple(int(part) for part in faiss.__version__.split(".")[:2] if part.isdigit())


class SnapshotError(Exception):
    """A snapshot file is missing, truncated, corrupt or from another configuration."""


@dataclass(frozen=True)
class SearchParams:
    """Per-request knobs; ``None`` takes the index's default.  Out-of-range values are clamped."""

    #: IVF lists visited per query (1 … nlist): more is slower and closer to exact.
    nprobe: int | None = None
    #: Candidates re-ranked exactly, as a multiple of k (1 … 64).
    rerank_factor: int | None = None
    #: The leading results the re-rank factor is for (default: all k).  A caller that takes more
    #: results than it needs in exact order (faces, to find the best ``rerank_k`` identities
    #: among them) sets it lower and re-ranks fewer candidates.
    rerank_k: int | None = None
    #: Search every vector exactly (slow on big galleries; for audits and ground truth).
    exact: bool = False
    #: Use the GPU replica when there is one (False: the CPU index, to compare the two paths).
    gpu: bool = True


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
    #: share of their length; 0: always all dimensions).  See :mod:`faceid.engine.subspace`.
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

    def nlist_for(self, n: int) -> int:
        """Lists for ``n`` vectors: a power of two near ``nlist_factor·√n``, with ≥ 39 points per list."""
        target = max(self.nlist_factor * math.sqrt(max(n, 1)), 1.0)
        nlist = 2 ** round(math.log2(target))
        while nlist > 1 and n < 39 * nlist:
            nlist //= 2
        return int(nlist)


@dataclass
class IndexStats:
    kind: IndexKind
    count: int
    training: bool
    dim: int
    nlist: int = 0
    pq_m: int = 0
    #: Numbers stored per face: the dimension of the gallery's subspace (``dim`` when untrained).
    rank: int = 0
    default_nprobe: int = 0
    default_rerank_factor: int = 0
    trained_on: int = 0
    memory_bytes: int = 0
    #: Vectors the FAISS index itself holds (equals ``count`` once removes have taken effect).
    indexed: int = 0
    #: Where searches run ("cpu" or "cuda:N") and the bytes the GPU replica holds.
    device: str = "cpu"
    gpu_memory_bytes: int = 0


class GalleryIndex(Protocol):
    """What the engine needs from a vector index; FAISS here, a distributed store later."""

    dim: int

    def add(self, ids: Ids, vectors: Vectors, groups: npt.NDArray[np.int64] | None = None) -> None: ...
    def search_with_groups(
        self, queries: Vectors, k: int, params: SearchParams | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids, npt.NDArray[np.int64]]: ...
    def remove(self, ids: Ids) -> int: ...
    def contains(self, ids: Ids) -> npt.NDArray[np.bool_]: ...  # replaying the change log twice is harmless
    def search(
        self, queries: Vectors, k: int, params: SearchParams | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]: ...
    def count(self) -> int: ...
    def stats(self) -> IndexStats: ...
    def save(self, path: Path, seq: int) -> None: ...


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorStore:
    """Every vector of a gallery, in rows: face id, float16 coordinates, group (identity), alive flag.

    Vectors are kept as float16 coordinates in the gallery's :class:`Subspace` (84 numbers
    instead of 128 for dlib's embeddings, with the same distances); a vector that lies farther
    than ``tol`` of its length outside the subspace is *outside*: it is also kept whole, in
    float32, and searched exactly on the side (the index never proposes it).

    Rows are appended and never move until the next rebuild, so a row number is
    what FAISS stores as the vector's id: re-ranking gathers candidates' vectors by
    row, and results map rows back to face ids and identities by plain indexing.
    A removed row is marked dead; rebuilds (training) compact.  Face ids are found
    by binary search (the store hands them out in increasing order, so the label
    column is normally sorted; otherwise a sort order is kept).  2·rank + 13 bytes
    per row.
    """

    def __init__(self, dim: int, subspace: Subspace | None = None, tol: float = 0.0) -> None:
        self.dim = dim
        self.subspace = subspace or Subspace.full(dim)
        self.rank = self.subspace.rank
        self.tol = tol
        self.labels = np.empty(0, np.int64)
        self.vectors = np.empty((0, self.rank), np.float16)
        self.groups = np.empty(0, np.int32)
        self.alive = np.empty(0, bool)
        self.size = 0
        self.live = 0
        self.outside_rows = np.empty(0, np.int64)  # increasing
        self.outside_vectors = np.empty((0, dim), np.float32)
        self._order: npt.NDArray[np.intp] | None = None  # argsort of labels when they are not sorted
        self._fp16 = faiss.ScalarQuantizer(self.rank, faiss.ScalarQuantizer.QT_fp16)

    def _grow(self, needed: int) -> None:
        capacity = len(self.labels)
        if needed <= capacity:
            return
        new = max(needed, int(capacity * 1.5), 1024)
        for name in ("labels", "vectors", "alive", "groups"):
            old = getattr(self, name)
            grown = np.zeros((new, *old.shape[1:]), old.dtype)
            grown[: self.size] = old[: self.size]
            setattr(self, name, grown)

    def lookup(self, ids: Ids) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Row of each face id and whether it is live."""
        ids = np.asarray(ids, np.int64).ravel()
        if self.size == 0:
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), bool)
        labels = self.labels[: self.size]
        # The rows of one id: a live row and the holes a loaded snapshot put after it, or a dead
        # row and the live one added after it (SQLite hands out the id of a deleted last row
        # again).  So the live row is the first or the last of them.
        ordered = labels if self._order is None else labels[self._order]
        first = np.minimum(np.searchsorted(ordered, ids, side="left"), self.size - 1)
        last = np.maximum(np.searchsorted(ordered, ids, side="right") - 1, 0)
        if self._order is not None:
            first, last = self._order[first], self._order[last]
        found_last = (labels[last] == ids) & self.alive[last]
        rows = np.where(found_last, last, first)
        found = found_last | ((labels[first] == ids) & self.alive[first])
        return rows, found

    def add(
        self, ids: Ids, vectors: Vectors, groups: npt.NDArray[np.int64] | None = None
    ) -> tuple[Ids, Vectors, npt.NDArray[np.bool_]]:
        """Append rows; returns their row numbers, their coordinates in the subspace (float32, for
        the index) and which of them lie inside it (only those belong in the index)."""
        if groups is None:
            groups = np.full(len(ids), -1, np.int64)
        if len(groups) != len(ids) or (len(groups) and (groups.max() >= 2**31 or groups.min() < -1)):
            raise ValueError("groups must be one int32 identity number (or -1) per id")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("the same id appears twice in one add")
        _, found = self.lookup(ids)
        if found.any():
            raise ValueError(f"ids already in the index: {ids[found][:5].tolist()}")
        in_order = bool(np.all(np.diff(ids) > 0)) and (self.size == 0 or ids[0] > self.labels[self.size - 1])
        coords, beyond = self.subspace.project(vectors)
        inside = beyond <= self.tol**2 * np.einsum("nd,nd->n", vectors, vectors)
        self._grow(self.size + len(ids))
        rows = np.arange(self.size, self.size + len(ids), dtype=np.int64)
        self.labels[rows] = ids
        self.vectors[rows] = coords
        self.groups[rows] = groups
        self.alive[rows] = True
        self.size += len(ids)
        self.live += len(ids)
        if not inside.all():
            self.outside_rows = np.concatenate([self.outside_rows, rows[~inside]])
            self.outside_vectors = np.concatenate([self.outside_vectors, vectors[~inside]])
        if self._order is not None or not in_order:
            self._order = np.argsort(self.labels[: self.size], kind="stable")
        return rows, coords, inside

    def remove(self, ids: Ids) -> npt.NDArray[np.int64]:
        """Mark the rows of these face ids dead; returns the rows that were live."""
        rows, found = self.lookup(ids)
        dead = np.unique(rows[found]).astype(np.int64)
        self.alive[dead] = False
        self.live -= len(dead)
        return dead

    @property
    def dead(self) -> int:
        return self.size - self.live

    def labels_and_groups(self, rows: Ids) -> tuple[Ids, npt.NDArray[np.int64]]:
        """Face id and group of each row (any shape); -1 for padding rows (-1)."""
        valid = rows >= 0
        if not self.size:  # nothing was ever added: no row to read
            return np.full_like(rows, -1), np.full_like(rows, -1)
        safe = np.where(valid, rows, 0)
        return np.where(valid, self.labels[safe], -1), np.where(valid, self.groups[safe], -1).astype(np.int64)

    @property
    def outside_live(self) -> int:
        return int(self.alive[self.outside_rows].sum())

    def compacted(self) -> VectorStore:
        """A copy of the live rows only, renumbered: cheap enough to take under the index's lock
        (float16 copies, no lifting)."""
        live = np.flatnonzero(self.alive[: self.size])
        out = VectorStore(self.dim, self.subspace, self.tol)
        out.labels, out.vectors, out.groups = self.labels[live], self.vectors[live], self.groups[live]
        out.alive = np.ones(len(live), bool)
        out.size = out.live = len(live)
        keep = self.alive[self.outside_rows]
        out.outside_rows = np.searchsorted(live, self.outside_rows[keep]).astype(np.int64)
        out.outside_vectors = self.outside_vectors[keep]
        return out

    def items(self) -> tuple[Ids, Vectors, npt.NDArray[np.int64]]:
        """The live face ids, whole vectors (float32) and groups, in row order."""
        live = np.flatnonzero(self.alive[: self.size])
        return self.labels[live].copy(), self.full(live), self.groups[live].astype(np.int64)

    def float32(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The coordinates of ``rows`` (any shape) as float32: faiss's SIMD decoder, 4× numpy's cast."""
        codes = np.ascontiguousarray(self.vectors[rows]).reshape(-1, self.rank).view(np.uint8)
        decoded: npt.NDArray[np.float32] = self._fp16.decode(codes)
        return decoded.reshape(*rows.shape, self.rank)

    def full(self, rows: npt.NDArray[np.int64]) -> Vectors:
        """Whole vectors of ``rows`` (1-D): lifted coordinates, or the kept vector of an outside row."""
        out = self.subspace.lift(self.float32(rows))
        if len(self.outside_rows):
            at = np.minimum(np.searchsorted(self.outside_rows, rows), len(self.outside_rows) - 1)
            hit = self.outside_rows[at] == rows
            out[hit] = self.outside_vectors[at[hit]]
        return out

    def search_outside(self, q: Vectors, k: int) -> tuple[Vectors, Ids]:
        """Exact squared distances to the live outside rows: the nearest ``k`` per query."""
        live = self.alive[self.outside_rows]
        rows, vecs = self.outside_rows[live], self.outside_vectors[live]
        d2, found = faiss.knn(q, vecs, min(k, len(rows)))
        return d2, np.where(found >= 0, rows[np.maximum(found, 0)], -1)

    def nbytes(self) -> int:
        """Bytes held for the rows in use."""
        return self.size * (8 + 2 * self.rank + 4 + 1) + len(self.outside_rows) * (8 + 4 * self.dim)


def _merge(d2: Vectors, rows: Ids, more_d2: Vectors, more_rows: Ids, k: int) -> tuple[Vectors, Ids]:
    """The best ``k`` of two result lists per query."""
    all_d2, all_rows = np.concatenate([d2, more_d2], axis=1), np.concatenate([rows, more_rows], axis=1)
    order = np.argsort(all_d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_d2, order, 1), np.take_along_axis(all_rows, order, 1)


def gpu_count() -> int:
    """GPUs faiss can use here (0 with faiss-cpu)."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


def wants_gpu(config: IndexConfig) -> bool:
    """Whether ``config`` puts searches on a GPU here; ``device="cuda"`` without one is an error."""
    if config.device == "cpu":
        return False
    if gpu_count() == 0:
        if config.device == "cuda":
            raise RuntimeError("index device is cuda, but faiss sees no GPU (install faiss-gpu-cu12)")
        return False
    return True


class GpuContext:
    """One GPU's faiss resources, shared by every gallery of the process.  faiss GPU objects are
    not thread-safe, so every call that touches the device holds :attr:`lock`."""

    def __init__(self, device: int, temp_bytes: int) -> None:
        self.device = device
        self.temp_bytes = temp_bytes
        self.resources = faiss.StandardGpuResources()
        self.resources.setTempMemory(temp_bytes)
        self.lock = threading.Lock()


@cache
def gpu_context(device: int = 0, temp_bytes: int = 512 << 20) -> GpuContext:
    return GpuContext(device, temp_bytes)


class GpuReplica:
    """An exact float16 copy of a gallery's live vectors on a GPU (``GpuIndexFlatL2``).

    Positions on the GPU map to store rows (:attr:`rows`).  GPU flat indexes cannot remove, so a
    removed row stays on the device as a *stale* position until the next :meth:`rebuild`
    (after ``STALE_MAX`` of them, or at a retrain); searches ask for ``k + stale`` results and
    drop the dead ones, which keeps them exact.
    """

    STALE_MAX = 1024  # + max_k (1000) stays within faiss's GPU k limit (2048)

    def __init__(self, dim: int, context: GpuContext) -> None:
        config = faiss.GpuIndexFlatConfig()
        config.device = context.device
        config.useFloat16 = True
        self.context = context
        self.index = faiss.GpuIndexFlatL2(context.resources, dim, config)
        self._rows = np.empty(0, np.int64)  # grown geometrically: adds are amortized O(1)
        self.n = 0
        self.stale = 0

    @property
    def rows(self) -> Ids:
        """The store row of each position on the GPU."""
        return self._rows[: self.n]

    def rebuild(self, store: VectorStore, chunk: int = 1 << 20) -> None:
        live = np.flatnonzero(store.alive[: store.size]).astype(np.int64)
        with self.context.lock:
            self.index.reset()
            for start in range(0, len(live), chunk):
                self.index.add(store.full(live[start : start + chunk]))
        self._rows, self.n, self.stale = live, len(live), 0

    def add(self, rows: Ids, vectors: Vectors) -> None:
        with self.context.lock:
            self.index.add(vectors)
        if self.n + len(rows) > len(self._rows):
            grown = np.empty(max(self.n + len(rows), 2 * len(self._rows), 1024), np.int64)
            grown[: self.n] = self._rows[: self.n]
            self._rows = grown
        self._rows[self.n : self.n + len(rows)] = rows
        self.n += len(rows)

    def removed(self, store: VectorStore, n: int) -> None:
        self.stale += n
        if self.stale > self.STALE_MAX:
            self.rebuild(store)

    def search(self, q: Vectors, k: int, alive: npt.NDArray[np.bool_]) -> tuple[Vectors, Ids]:
        want = min(k + self.stale, self.n)
        d2 = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        if want == 0:
            return d2, rows
        with self.context.lock:
            found_d, found_p = self.index.search(q, want)
        found_r = np.where(found_p >= 0, self.rows[np.maximum(found_p, 0)], -1)
        if self.stale:  # drop removed rows, keep the order
            ok = (found_r >= 0) & alive[np.maximum(found_r, 0)]
            order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
            found_d = np.where(
                np.take_along_axis(ok, order, 1), np.take_along_axis(found_d, order, 1), np.inf
            )
            found_r = np.where(np.isfinite(found_d), np.take_along_axis(found_r, order, 1), -1)
        take = min(k, found_r.shape[1])
        d2[:, :take], rows[:, :take] = found_d[:, :take], found_r[:, :take]
        return d2, rows

    def nbytes(self) -> int:
        return self.n * (2 * self.index.d + 8)


def _exact_index(dim: int) -> faiss.Index:
    return faiss.IndexIDMap(faiss.IndexFlatL2(dim))


def _selector(ids: Ids) -> faiss.IDSelectorBatch:
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))


def _check_vectors(vectors: npt.ArrayLike, dim: int) -> Vectors:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}); got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vectors contain NaN or infinite values")
    return v


Op = tuple[
    Ids, Vectors | None, npt.NDArray[np.int64] | None
]  # (face ids, vectors, groups); no vectors: remove


class FaissGalleryIndex:
    """The FAISS implementation of :class:`GalleryIndex` (see the module docstring)."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        if _FAISS_VERSION < FAISS_MIN:
            raise RuntimeError(
                f"faiss {faiss.__version__} cannot remove faces from IVF-PQ fast-scan indexes; "
                "install faiss-cpu>=1.14.2 (or faiss-gpu-cu12>=1.14.1)"
            )
        self.dim = dim
        self.config = config or IndexConfig()
        self.store = VectorStore(dim)
        self._index: faiss.Index = _exact_index(dim)
        self._kind: IndexKind = "exact"
        self._nlist = 0
        self._pq_m = 0
        self._trained_on = 0
        self._lock = ReadWriteLock()
        self._journal: list[Op] | None = None  # writes made while a rebuild is under way
        self._trainer: threading.Thread | None = None
        self._train_error: BaseException | None = None
        self.on_progress: Callable[[str, float], None] | None = None
        self._gpu_context = gpu_context(0, self.config.gpu_temp_bytes) if wants_gpu(self.config) else None
        self._gpu: GpuReplica | None = None

    def _new_gpu_replica(self, store: VectorStore) -> GpuReplica | None:
        """A GPU replica filled from ``store``; None without a GPU or below ``gpu_min`` faces."""
        if self._gpu_context is None or store.live < self.config.gpu_min:
            return None
        replica = GpuReplica(self.dim, self._gpu_context)
        replica.rebuild(store)
        return replica

    # ---- writes ---------------------------------------------------------------------------
    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike, groups: npt.ArrayLike | None = None) -> None:
        """Add vectors under new ids (int64, unique, not already present), each optionally in a
        group (its identity: an int below 2**31) that searches report with it."""
        id_array = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        group_array = None if groups is None else np.ascontiguousarray(groups, dtype=np.int64).ravel()
        v = _check_vectors(vectors, self.dim)
        if len(id_array) != len(v):
            raise ValueError(f"{len(id_array)} ids for {len(v)} vectors")
        if len(v) == 0:
            return
        with self._lock.write():
            rows, coords, inside = self.store.add(id_array, v, group_array)
            self._index.add_with_ids(coords[inside], rows[inside])
            if self._gpu is not None:
                self._gpu.add(rows, v)
            else:
                self._gpu = self._new_gpu_replica(self.store)
            if self._journal is not None:
                self._journal.append((id_array, v, group_array))
        self._maybe_train()

    def contains(self, ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether each id is in the index (live)."""
        id_array = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        with self._lock.read():
            return self.store.lookup(id_array)[1]

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove ids (unknown ids are ignored); returns how many were present."""
        id_array = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        if len(id_array) == 0:
            return 0
        with self._lock.write():
            rows = self.store.remove(id_array)
            if len(rows):
                self._index.remove_ids(_selector(rows))
                if self._gpu is not None:
                    self._gpu.removed(self.store, len(rows))
            if self._journal is not None:
                self._journal.append((id_array, None, None))
        self._maybe_train()
        return len(rows)

    def bulk_load(
        self,
        ids: npt.ArrayLike,
        vectors: npt.ArrayLike,
        groups: npt.ArrayLike | None = None,
        train: bool | None = None,
    ) -> None:
        """Fill an empty index in one go, building IVF-PQ directly (no exact index in between:
        rebuilds and benchmarks of very large galleries) when ``train`` says so, or, when it is
        None, when the vectors reach ``train_min``."""
        id_array = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        group_array = None if groups is None else np.ascontiguousarray(groups, dtype=np.int64).ravel()
        v = _check_vectors(vectors, self.dim)
        if len(id_array) != len(v):
            raise ValueError(f"{len(id_array)} ids for {len(v)} vectors")
        with self._lock.write():
            if self.store.size:
                raise ValueError("bulk_load needs an empty index")
            self._journal = []
        ivf = len(id_array) >= self.config.train_min if train is None else train
        self._train_and_swap(lambda: (id_array, v, group_array), ivf)
        self.wait_for_training()  # raises what the build raised

    # ---- reads ----------------------------------------------------------------------------
    def count(self) -> int:
        return self.store.live

    def groups_of(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The group (identity) of each id, -1 for ids not in the index."""
        id_array = np.asarray(ids, dtype=np.int64)
        with self._lock.read():
            rows, found = self.store.lookup(id_array)
            out = np.where(found, self.store.groups[rows], -1).astype(np.int64)
        return out.reshape(id_array.shape)

    def default_rerank_factor(self) -> int:
        scale = math.sqrt(max(self.store.live, 1) / self.config.rerank_reference)
        return min(64, max(self.config.rerank_factor, round(self.config.rerank_factor * scale)))

    def default_nprobe(self) -> int:
        return min(self._nlist, max(self.config.nprobe_min, round(self._nlist * self.config.nprobe_fraction)))

    def search(
        self, queries: npt.ArrayLike, k: int, params: SearchParams | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """The ``k`` nearest ids per query and their Euclidean distances, nearest first.

        Rows are padded with id -1 and distance +inf when the gallery holds fewer than k.
        """
        distances, ids, _ = self.search_with_groups(queries, k, params)
        return distances, ids

    def search_with_groups(
        self, queries: npt.ArrayLike, k: int, params: SearchParams | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids, npt.NDArray[np.int64]]:
        """:meth:`search`, plus the group (identity) of each result (-1 for padding)."""
        q = _check_vectors(queries, self.dim)
        if not 1 <= k <= self.config.max_k:
            raise ValueError(f"k must be between 1 and {self.config.max_k}; got {k}")
        params = params or SearchParams()
        with self._lock.read():
            store, index, kind = self.store, self._index, self._kind
            if self._gpu is not None and params.gpu:  # exact, on the GPU: nprobe and re-ranking do not apply
                d2, rows = self._gpu.search(q, k, store.alive)
            else:
                qc, beyond = store.subspace.project(q)
                if params.exact and kind != "exact":
                    d2, rows = self._exact_from_store(qc, k)
                elif kind == "exact":
                    d2, rows = index.search(qc, k)
                else:
                    nprobe = min(max(params.nprobe or self.default_nprobe(), 1), self._nlist)
                    factor = min(max(params.rerank_factor or self.default_rerank_factor(), 1), 64)
                    ordered = min(params.rerank_k or k, k)
                    wanted = max(ordered * factor, min(self.config.rerank_min, ordered * 64), k)
                    sp = faiss.SearchParametersIVF()
                    sp.nprobe = nprobe
                    _, candidates = index.search(qc, min(wanted, max(store.size, 1)), params=sp)
                    d2, rows = self._rerank(qc, candidates, k)
                d2 = d2 + beyond[:, None]  # the query's part outside the subspace
                if store.outside_live:
                    d2, rows = _merge(d2, rows, *store.search_outside(q, k), k)
            ids, groups = store.labels_and_groups(rows)
        valid = rows >= 0
        distances = np.where(valid, np.sqrt(np.maximum(d2, 0)), np.inf).astype(np.float32)
        return distances, ids, groups

    def _rerank(self, q: Vectors, candidates: Ids, k: int, chunk: int = 256) -> tuple[Vectors, Ids]:
        """Exact squared distances of each query's candidate rows (from the float16 copy); best k."""
        n, m = candidates.shape
        out_d = np.full((n, k), np.inf, np.float32)
        out_r = np.full((n, k), -1, np.int64)
        take = min(k, m)
        for start in range(0, n, chunk):
            cand = candidates[start : start + chunk]
            qq = q[start : start + chunk]
            ok = cand >= 0
            rows = np.where(ok, cand, 0)
            v = self.store.float32(rows)
            d2 = (
                np.einsum("bkd,bkd->bk", v, v)
                - 2 * np.matmul(v, qq[:, :, None])[:, :, 0]
                + np.einsum("bd,bd->b", qq, qq)[:, None]
            )
            d2[~(ok & self.store.alive[rows])] = np.inf
            order = np.argsort(d2, axis=1, kind="stable")[:, :take]
            best = np.take_along_axis(d2, order, axis=1)
            best_rows = np.where(np.isfinite(best), np.take_along_axis(cand, order, axis=1), -1)
            out_d[start : start + chunk, :take] = best
            out_r[start : start + chunk, :take] = best_rows
        return out_d, out_r

    def _exact_from_store(self, q: Vectors, k: int) -> tuple[Vectors, Ids]:
        """Exact squared distances from coordinates ``q`` to every live row inside the subspace."""
        live = np.flatnonzero(self.store.alive[: self.store.size])
        if len(self.store.outside_rows):
            live = np.setdiff1d(live, self.store.outside_rows, assume_unique=True)
        d2 = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        if len(live):
            found_d, found_i = faiss.knn(q, self.store.float32(live), min(k, len(live)))
            d2[:, : found_d.shape[1]] = found_d
            rows[:, : found_i.shape[1]] = np.where(found_i >= 0, live[np.maximum(found_i, 0)], -1)
        return d2, rows

    # ---- training and rebuilds ------------------------------------------------------------
    @property
    def training(self) -> bool:
        return self._trainer is not None and self._trainer.is_alive()

    def _maybe_train(self) -> None:
        n = self.store.live
        due = (
            (self._kind == "exact" and n >= self.config.train_min)
            or (self._kind == "ivf_pq" and n >= self._trained_on * self.config.retrain_growth)
            or self.store.dead > max(self.store.size // 4, 10_000)  # compact away removed rows
            or self.store.outside_live > max(self.store.live // 100, 1_000)  # refit the subspace
        )
        if due and not self.training and self._journal is None:
            self.train(block=not self.config.background, force_ivf=False)

    def train(self, block: bool = True, force_ivf: bool = True) -> None:
        """Rebuild on the current vectors and swap the result in.

        Builds IVF-PQ when asked (``force_ivf``, the default for callers), when the gallery holds
        ``train_min`` vectors, or when it already was IVF-PQ; else an exact index (compaction).
        """
        with self._lock.write():
            if self._journal is not None:
                return  # a run is already under way
            live = self.store.compacted()
            self._journal = []
        ivf = force_ivf or self._kind == "ivf_pq" or live.live >= self.config.train_min
        if block:
            self._train_and_swap(live.items, ivf)
        else:
            self._trainer = threading.Thread(
                target=self._train_and_swap, args=(live.items, ivf), name="faceid-index-train", daemon=True
            )
            self._trainer.start()

    def wait_for_training(self, timeout: float | None = None) -> None:
        if self._trainer is not None:
            self._trainer.join(timeout)
        if self._train_error is not None:
            error, self._train_error = self._train_error, None
            raise RuntimeError("index training failed") from error

    def _progress(self, stage: str, fraction: float) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, fraction)

    def _train_and_swap(
        self, items: Callable[[], tuple[Ids, Vectors, npt.NDArray[np.int64] | None]], ivf: bool
    ) -> None:
        """Build a new index on the vectors ``items()`` gives (IVF-PQ when ``ivf`` and there are
        enough, else exact), catch up with the writes journalled meanwhile and swap it in."""
        try:
            ids, vecs, groups = items()
            if ivf and len(ids) >= 39:
                store, (rows, coords, inside) = self._fitted_store(ids, vecs, groups)
                if not inside.all():
                    rows, coords = rows[inside], coords[inside]
                index, nlist = build_ivf_pq(rows, coords, self.config, self._progress, gpu=self._gpu_context)
                kind: IndexKind = "ivf_pq"
                pq_m = int(faiss.downcast_index(faiss.extract_index_ivf(index)).pq.M)  # type: ignore[attr-defined]
            else:
                store = VectorStore(self.dim)
                rows, coords, _ = store.add(ids, vecs, groups)
                index, nlist, kind, pq_m = _exact_index(self.dim), 0, "exact", 0
                if len(ids):
                    index.add_with_ids(coords, rows)
            del coords
            gpu = self._new_gpu_replica(store)  # a new replica: the rows are renumbered
            with self._lock.write():
                assert self._journal is not None
                for op_ids, op_vecs, op_groups in self._journal:  # catch up with writes made meanwhile
                    if op_vecs is not None:
                        new_rows, new_coords, new_inside = store.add(op_ids, op_vecs, op_groups)
                        index.add_with_ids(new_coords[new_inside], new_rows[new_inside])
                        if gpu is not None:
                            gpu.add(new_rows, op_vecs)
                    else:
                        gone = store.remove(op_ids)
                        if len(gone):
                            index.remove_ids(_selector(gone))
                            if gpu is not None:
                                gpu.removed(store, len(gone))
                self.store, self._index, self._kind, self._nlist = store, index, kind, nlist
                self._pq_m = pq_m
                self._gpu = gpu or self._new_gpu_replica(store)
                self._trained_on = len(ids) if kind == "ivf_pq" else 0
                self._journal = None
        except BaseException as exc:  # keep serving with the old index; report on wait
            self._train_error = exc
            with self._lock.write():
                self._journal = None

    def _fitted_store(
        self, ids: Ids, vecs: Vectors, groups: npt.NDArray[np.int64] | None
    ) -> tuple[VectorStore, tuple[Ids, Vectors, npt.NDArray[np.bool_]]]:
        """A store of these vectors in the subspace they span (fitted on a sample), and what its
        ``add`` returned; all dimensions when more than 1 % of the vectors lie outside it."""
        tol = self.config.subspace_tol
        pick = np.random.default_rng(1).choice(len(vecs), min(len(vecs), 100_000), replace=False)
        subspace = Subspace.fit(vecs[np.sort(pick)], tol, self.config.pq_m or 4)
        store = VectorStore(self.dim, subspace, tol)
        added = store.add(ids, vecs, groups)
        if subspace.basis is not None and np.count_nonzero(~added[2]) > len(ids) // 100:
            store = VectorStore(self.dim)
            added = store.add(ids, vecs, groups)
        return store, added

    # ---- stats and persistence ------------------------------------------------------------
    def stats(self) -> IndexStats:
        with self._lock.read():
            index_bytes = _index_bytes(self._index, self._kind, self.store.size, self.store.rank, self._pq_m)
            return IndexStats(
                kind=self._kind,
                count=self.store.live,
                training=self.training,
                dim=self.dim,
                nlist=self._nlist,
                pq_m=self._pq_m,
                rank=self.store.rank,
                default_nprobe=self.default_nprobe() if self._kind == "ivf_pq" else 0,
                default_rerank_factor=self.default_rerank_factor() if self._kind == "ivf_pq" else 0,
                trained_on=self._trained_on,
                memory_bytes=index_bytes + self.store.nbytes(),
                indexed=int(self._index.ntotal),
                device=f"cuda:{self._gpu.context.device}" if self._gpu is not None else "cpu",
                gpu_memory_bytes=self._gpu.nbytes() if self._gpu is not None else 0,
            )

    def save(self, path: Path, seq: int) -> None:
        """Write a checksummed snapshot atomically (temp file, fsync, rename); ``seq`` is the
        store's change sequence number that the snapshot reflects.  Removed vectors are not
        written: the snapshot holds live rows only (right to erasure)."""
        with self._lock.read():
            store, index = self.store, self._index
            if store.dead:  # write a compacted copy: no removed embedding reaches the disk
                index = faiss.clone_index(index)
                dead_rows = np.flatnonzero(~store.alive[: store.size])
                index.remove_ids(_selector(dead_rows))
            keep = store.alive[: store.size]
            rows = np.flatnonzero(keep).astype(np.int64)
            outside = store.alive[store.outside_rows]
            header = {
                "format": 3,
                "dim": self.dim,
                "rank": store.rank,
                "tol": store.tol,
                "pq_m": self._pq_m,
                "seq": int(seq),
                "kind": self._kind,
                "nlist": self._nlist,
                "trained_on": self._trained_on,
                "count": len(rows),
                "config": asdict(self.config),
            }
            sections = [
                faiss.serialize_index(index).tobytes(),
                rows.tobytes(),
                store.labels[rows].tobytes(),
                store.vectors[rows].tobytes(),
                store.groups[rows].tobytes(),
                b"" if store.subspace.basis is None else store.subspace.basis.tobytes(),
                store.outside_rows[outside].tobytes(),
                store.outside_vectors[outside].tobytes(),
            ]
        write_snapshot(Path(path), header, sections)

    @classmethod
    def load(cls, path: Path, config: IndexConfig | None = None) -> tuple[FaissGalleryIndex, int]:
        """Read a snapshot; returns the index and the change sequence number it reflects."""
        header, sections = read_snapshot(Path(path))
        if len(sections) != 8 or header.get("format") != 3:
            raise SnapshotError(f"{path}: snapshot format {header.get('format')} is not this version's (3)")
        index_blob, row_blob, id_blob, vec_blob, group_blob, basis_blob, out_row_blob, out_vec_blob = sections
        dim, rank = int(header["dim"]), int(header["rank"])
        rows = np.frombuffer(row_blob, np.int64)
        ids = np.frombuffer(id_blob, np.int64)
        vecs = np.frombuffer(vec_blob, np.float16).reshape(-1, rank)
        groups = np.frombuffer(group_blob, np.int32).astype(np.int64)
        basis = np.frombuffer(basis_blob, np.float32).reshape(-1, dim).copy() if basis_blob else None
        out_rows = np.frombuffer(out_row_blob, np.int64).copy()
        out_vecs = np.frombuffer(out_vec_blob, np.float32).reshape(-1, dim).copy()
        n = int(header["count"])
        if not len(rows) == len(ids) == len(vecs) == len(groups) == n or len(out_rows) != len(out_vecs):
            raise SnapshotError(f"{path}: sections do not agree on the number of vectors")
        if (dim if basis is None else len(basis)) != rank:
            raise SnapshotError(f"{path}: the subspace basis does not have rank {rank}")
        self = cls(dim, config)
        index = faiss.deserialize_index(np.frombuffer(index_blob, np.uint8))
        if index.ntotal != n - len(out_rows) or index.d != rank:
            raise SnapshotError(f"{path}: the FAISS index holds {index.ntotal} vectors, the store {n}")
        size = int(rows[-1]) + 1 if n else 0
        store = self.store = VectorStore(dim, Subspace(basis, dim), float(header["tol"]))
        store.outside_rows, store.outside_vectors = out_rows, out_vecs
        store._grow(size)
        store.labels[rows], store.vectors[rows], store.groups[rows], store.alive[rows] = (
            ids,
            vecs,
            groups,
            True,
        )
        store.size, store.live = size, n
        labels = store.labels[:size]
        # Dead rows were not saved.  Each hole repeats the label of the live row before it (-1 at
        # the start), so the column stays sorted and a binary search lands on the live row first.
        holes = np.ones(size, bool)
        holes[rows] = False
        if holes.any():
            before = np.maximum.accumulate(np.where(holes, -1, np.arange(size)))
            labels[holes] = np.where(before[holes] >= 0, labels[np.maximum(before[holes], 0)], -1)
        if not bool(np.all(np.diff(labels) >= 0)):
            store._order = np.argsort(labels, kind="stable")
        self._index, self._kind, self._pq_m = index, header["kind"], int(header["pq_m"])
        self._nlist, self._trained_on = int(header["nlist"]), int(header["trained_on"])
        self._gpu = self._new_gpu_replica(store)
        return self, int(header["seq"])


def build_ivf_pq(
    ids: Ids,
    vecs: npt.NDArray[np.float16] | Vectors,
    config: IndexConfig,
    progress: Callable[[str, float], None] | None = None,
    factory: str | None = None,
    gpu: GpuContext | None = None,
) -> tuple[faiss.Index, int]:
    """Train an IVF-PQ (fast-scan) index on a sample of ``vecs`` and add them all under ``ids``;
    with ``gpu``, the coarse k-means runs there."""
    n, dim = vecs.shape
    nlist = config.nlist_for(n)
    spec = (factory or config.factory).format(nlist=nlist, pq_m=config.pq_m or dim // 2)
    index = faiss.index_factory(dim, spec, faiss.METRIC_L2)
    faiss.extract_index_ivf(index).by_residual = config.by_residual
    if gpu is not None:  # resources of its own: searches keep the shared ones meanwhile
        resources = faiss.StandardGpuResources()
        resources.setTempMemory(gpu.temp_bytes)
        flat = faiss.GpuIndexFlatConfig()
        flat.device = gpu.device
        clustering = faiss.GpuIndexFlatL2(resources, dim, flat)  # a Python reference keeps it alive
        faiss.extract_index_ivf(index).clustering_index = clustering
    sample_size = min(n, max(39 * nlist, config.train_points_per_list * nlist))
    rng = np.random.default_rng(0)
    sample = vecs[np.sort(rng.choice(n, sample_size, replace=False))].astype(np.float32)
    if progress:
        progress("train", 0.0)
    index.train(sample)
    if gpu is not None:
        faiss.extract_index_ivf(index).clustering_index = None  # type: ignore[assignment]
    step = 100_000
    for start in range(0, n, step):
        if progress:
            progress("add", start / n)
        index.add_with_ids(vecs[start : start + step].astype(np.float32), ids[start : start + step])
    if progress:
        progress("add", 1.0)
    return index, nlist


def _index_bytes(index: faiss.Index, kind: IndexKind, n: int, dim: int, pq_m: int) -> int:
    if kind == "exact":
        return n * (4 * dim + 8)
    ivf = faiss.extract_index_ivf(index)
    return int(n * (pq_m // 2 + 8) + ivf.nlist * dim * 4)


# ---- snapshot container -------------------------------------------------------------------
_MAGIC = b"FACEIDX\x01"


def write_snapshot(path: Path, header: dict[str, Any], sections: list[bytes]) -> None:
    """``MAGIC | header length | header JSON | sections``; the header carries each section's
    length and the SHA-256 of all of them.  Written to a temporary file, fsynced, renamed."""
    digest = hashlib.sha256()
    for s in sections:
        digest.update(s)
    header = {**header, "sections": [len(s) for s in sections], "sha256": digest.hexdigest()}
    head = json.dumps(header, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(_MAGIC + len(head).to_bytes(8, "little") + head)
        for s in sections:
            f.write(s)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_snapshot(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot ({exc})") from None
    buf = io.BytesIO(data)
    if buf.read(len(_MAGIC)) != _MAGIC:
        raise SnapshotError(f"{path}: not a faceid index snapshot")
    try:
        head_len = int.from_bytes(buf.read(8), "little")
        header = json.loads(buf.read(head_len))
        sizes = [int(s) for s in header["sections"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot header ({exc})") from None
    sections = [buf.read(s) for s in sizes]
    if [len(s) for s in sections] != sizes or buf.read(1):
        raise SnapshotError(f"{path}: snapshot is truncated or has trailing bytes")
    digest = hashlib.sha256()
    for s in sections:
        digest.update(s)
    if digest.hexdigest() != header.get("sha256"):
        raise SnapshotError(f"{path}: snapshot checksum mismatch (corrupt)")
    return header, sections
