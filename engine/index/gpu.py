"""The GPU side of a gallery index: faiss's GPU resources, one per process, and an exact float16
replica of a gallery's live vectors on the device."""

from __future__ import annotations

import threading
from functools import cache

import faiss
import numpy as np
import numpy.typing as npt

from faceid.engine.config import IndexConfig
from faceid.engine.domain.search import Ids, Vectors
from faceid.engine.index.vectors import VectorStore


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
