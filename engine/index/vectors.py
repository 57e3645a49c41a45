"""The exact side of a gallery index: every vector as float16 subspace coordinates
(:class:`VectorStore`), the lock that lets searches run together, and the merge of result lists."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np
import numpy.typing as npt

from faceid.engine.domain.search import Ids, Vectors
from faceid.engine.index.subspace import Subspace


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
