"""The vector index the service holds: :class:`GalleryIndex`, the shape every backend implements
(FAISS in process today, :mod:`faceid.engine.index.faiss_index`; a distributed database later), and
:class:`IndexBackend`, which makes and loads them.  No vector library is imported here."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from faceid.engine.domain.search import Ids, IndexStats, SearchParams, Vectors


class SnapshotError(Exception):
    """A snapshot file is missing, truncated, corrupt or from another configuration."""


class GalleryIndex(Protocol):
    """What the service needs from a gallery's vector index; FAISS here, a distributed store later.

    Faces are int64 ids, each with a group (its identity's row id) that searches report with it;
    distances are Euclidean.  Any number of searches may run at once, also during writes.
    """

    dim: int

    def add(
        self, ids: npt.ArrayLike, vectors: npt.ArrayLike, groups: npt.ArrayLike | None = None
    ) -> None: ...

    def remove(self, ids: npt.ArrayLike) -> int: ...

    def contains(self, ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether each id is held (replaying the change log twice is harmless)."""
        ...

    def search(
        self, queries: npt.ArrayLike, k: int, params: SearchParams | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]: ...

    def search_with_groups(
        self, queries: npt.ArrayLike, k: int, params: SearchParams | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids, npt.NDArray[np.int64]]: ...

    def count(self) -> int: ...

    def stats(self) -> IndexStats: ...

    def save(self, path: Path, seq: int) -> None:
        """Write a snapshot that reflects the store up to change ``seq``."""
        ...


class IndexBackend(Protocol):
    """Makes a gallery's :class:`GalleryIndex`: empty, from a snapshot, or filled from the store."""

    def create(self, dim: int) -> GalleryIndex: ...

    def load(self, path: Path) -> tuple[GalleryIndex, int]:
        """The index a snapshot holds and the change sequence number it reflects; raises
        :class:`SnapshotError` for a missing, corrupt or foreign file."""
        ...

    def build(self, dim: int, batches: Iterable[tuple[Ids, Vectors, Ids]]) -> GalleryIndex:
        """An index filled from (face ids, vectors, identity ids) batches, trained in the calling
        thread when it is large enough."""
        ...

    def neighbours(self, vectors: Vectors, k: int) -> tuple[Vectors, Ids]:
        """The ``k`` nearest rows of a set of vectors to each of its rows (exact; the row itself
        among them), for clustering a set a call sends: distances ascending, row numbers, ``-1``
        where the set has fewer than ``k`` rows."""
        ...
