"""The linear subspace a gallery's embeddings span: fewer numbers per face, the same distances.

dlib's face-recognition network ends in a 256→128 fully connected layer whose weight matrix
has rank ~88, so every embedding it can produce, of any photo, lies in one fixed subspace of
about 88 of its 128 dimensions (measured: LFW's 13,233 embeddings leave at most 5e-5 of their
length outside an 84-dimensional one).  Coordinates in an orthonormal basis of that subspace
keep Euclidean distances exactly, so the index stores and searches 84 numbers instead of 128:
a re-rank store of 168 instead of 256 bytes per face, PQ codes that spend no bits on empty
directions, and fast-scan tables that stay well conditioned (FAISS's residual fast-scan slows
down ten-fold on data this degenerate; see BENCHMARKS.md).

The index does not know which model made its vectors, so the basis is fitted on the gallery
when the index trains: a model whose embeddings fill every dimension simply keeps them all.
A query is never forced into the subspace: the squared length of its part outside is added
back, so reported distances stay the true ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Subspace:
    """An orthonormal basis (``rank`` rows of ``dim`` numbers) of the span of a set of vectors."""

    basis: Vectors | None  #: None: all ``dim`` dimensions, unrotated (projection is the identity)
    dim: int

    @property
    def rank(self) -> int:
        return self.dim if self.basis is None else len(self.basis)

    @classmethod
    def full(cls, dim: int) -> Subspace:
        return cls(None, dim)

    @classmethod
    def fit(cls, sample: npt.ArrayLike, tol: float, multiple: int = 4, seed: int = 0) -> Subspace:
        """The smallest subspace that holds every sample vector to within ``tol`` of its length,
        its rank rounded up to a multiple of ``multiple`` (PQ wants equal sub-vectors); the full
        space when that is no smaller.  The basis is randomly rotated within the subspace, so
        that PQ's sub-quantizers see equal shares of the variance."""
        x = np.asarray(sample, np.float64)
        dim = x.shape[1]
        if tol <= 0 or len(x) == 0:
            return cls.full(dim)
        _, vecs = np.linalg.eigh(x.T @ x)
        vecs = vecs[:, ::-1]  # principal directions, largest first
        sq = (x @ vecs) ** 2
        norm2 = np.maximum(sq.sum(axis=1), 1e-30)
        # outside[r] = the largest share of a vector's squared length beyond the first r directions
        tail = np.cumsum(sq[:, ::-1], axis=1)[:, ::-1] / norm2[:, None]
        outside = np.append(tail.max(axis=0), 0.0)
        rank = int(np.argmax(outside <= tol**2))
        rank = min(dim, -(-max(rank, 1) // multiple) * multiple)
        if rank >= dim:
            return cls.full(dim)
        rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rank, rank)))
        basis = (rotation @ vecs[:, :rank].T).astype(np.float32)
        return cls(np.ascontiguousarray(basis), dim)

    def project(self, x: Vectors, chunk: int = 1 << 16) -> tuple[Vectors, npt.NDArray[np.float32]]:
        """Coordinates in the subspace, and each vector's squared length outside it."""
        if self.basis is None:
            return x, np.zeros(len(x), np.float32)
        coords = np.empty((len(x), self.rank), np.float32)
        beyond = np.empty(len(x), np.float32)
        for start in range(0, len(x), chunk):  # bounded temporaries for galleries of millions
            part = x[start : start + chunk]
            c = coords[start : start + chunk] = part @ self.basis.T
            rest = part - c @ self.basis  # not |x|² − |coords|²: float32 cancellation is ~1e-7
            beyond[start : start + chunk] = np.einsum("nd,nd->n", rest, rest)
        return coords, beyond

    def lift(self, coords: Vectors) -> Vectors:
        """Vectors of the full space from coordinates."""
        if self.basis is None:
            return coords
        return np.ascontiguousarray(coords @ self.basis)
