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
  (:mod:`faceid.engine.index.subspace`; 84 of 128 dimensions for dlib's embeddings), fitted at
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

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from faceid.engine.config import IndexConfig
from faceid.engine.domain.search import Ids, IndexKind, IndexStats, SearchParams, Vectors
from faceid.engine.index.base import SnapshotError
from faceid.engine.index.gpu import GpuContext, GpuReplica, gpu_context, wants_gpu
from faceid.engine.index.snapshot import read_snapshot, write_snapshot
from faceid.engine.index.subspace import Subspace
from faceid.engine.index.vectors import ReadWriteLock, VectorStore, _merge

#: The first faiss whose IVF fast-scan indexes really remove: 1.8 aborts, and 1.9 to 1.13 return
#: 0 and keep the codes (checked on the PyPI wheels), which would break deletes and erasure.

FAISS_MIN = (1, 14)


_FAISS_VERSION = tuple(int(part) for part in faiss.__version__.split(".")[:2] if part.isdigit())


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
        groups = np.frombuffer(group_blob, np.int32)
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
        # Rows 0..n-1 (no row was removed since the last rebuild): slices, one copy each, 20x
        # faster than placing rows by index (10M faces: 0.1 s against 2.2 s, during which the
        # copy holds the GIL and the server's event loop stalls).
        at: slice | npt.NDArray[np.int64] = slice(0, n) if size == n else rows
        store.labels[at], store.vectors[at], store.groups[at], store.alive[at] = ids, vecs, groups, True
        store.size, store.live = size, n
        labels = store.labels[:size]
        # Dead rows were not saved.  Each hole repeats the label of the live row before it (-1 at
        # the start), so the column stays sorted and a binary search lands on the live row first.
        if size != n:
            holes = np.ones(size, bool)
            holes[rows] = False
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


class FaissBackend:
    """:class:`~faceid.engine.index.base.IndexBackend` for FAISS indexes in this process."""

    def __init__(self, config: IndexConfig) -> None:
        self.config = config

    def create(self, dim: int) -> FaissGalleryIndex:
        return FaissGalleryIndex(dim, self.config)

    def load(self, path: Path) -> tuple[FaissGalleryIndex, int]:
        return FaissGalleryIndex.load(path, self.config)

    def build(self, dim: int, batches: Iterable[tuple[Ids, Vectors, Ids]]) -> FaissGalleryIndex:
        index = FaissGalleryIndex(dim, replace(self.config, background=False))
        for ids, vectors, identity_ids in batches:
            index.add(ids, vectors, identity_ids)
        index.config = self.config
        return index

    def neighbours(self, vectors: Vectors, k: int) -> tuple[Vectors, Ids]:
        """Exact: the ``k`` nearest rows of ``vectors`` to each row (itself among them), Euclidean
        distances ascending; ``-1`` where there are fewer than ``k`` rows."""
        v = _check_vectors(vectors, vectors.shape[1] if vectors.ndim == 2 else 0)
        k = min(k, len(v))
        if not k:
            return np.zeros((len(v), 0), np.float32), np.zeros((len(v), 0), np.int64)
        d2, rows = faiss.knn(v, v, k)
        return np.sqrt(np.maximum(d2, 0)).astype(np.float32), rows.astype(np.int64)
