"""Average-linkage clustering of unit embeddings over a sparse neighbour graph, at million scale.

FaceNet's third task: faces of one person are close, so a clustering that merges what is close
and stops where nothing is close enough needs no cluster count.  What it must not do is *chain*:
on a k-nearest-neighbour graph, plain connected components at any distance where photos of one
person join also join different people through one close pair each (LFW's 13,233 photos at
distance 0.35: 2,920 components for 5,749 people, pairwise F 0.01).  Average linkage does not
chain: two clusters merge only when the *mean* similarity over all their pairs of members is high.

Exact, and sparse
-----------------
For unit vectors the mean cosine similarity of clusters ``A`` and ``B`` over all ``|A|·|B|``
pairs is ``(ΣA · ΣB) / (|A| |B|)``: exact from the members' sums, with no pair list.  The graph
(each face's ``k`` nearest, from the gallery's own index) only proposes which clusters may merge;
the score of a proposal is the exact average.  Merging proceeds in rounds (reciprocal
agglomerative clustering, Sumengen et al. 2021): every cluster finds its best proposal among those
that pass the threshold, and all *reciprocal* best pairs merge at once — for a reducible linkage
such as average, the merges a one-at-a-time agglomeration would make.  Only the proposals that
touch a merged cluster are scored again, so a round costs the changed part of the graph:
LFW (13,233 faces, k = 10) clusters in ~2 s, a million faces in minutes (BENCHMARKS.md).

A threshold that depends on the evidence
----------------------------------------
The mean over ``|A|·|B|`` pairs is a better estimate the more pairs it averages; a single pair
of photos of two different people is close by chance far more often than two groups of photos
are on average.  So two clusters merge when their mean similarity reaches

    s(|A|, |B|) = s_loose + (s_strict − s_loose) / sqrt(|A| · |B|)

— ``s_strict`` for two single faces, approaching ``s_loose`` as the clusters grow (similarities
``1 − d²/2`` of the distances in :class:`~faceid.engine.config.ClusterConfig`).  On LFW this lifts
BCubed F from 0.938 (one threshold, its best) to 0.954 and pairwise F from 0.964 to 0.983.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Sizes = npt.NDArray[np.float64]

#: How often a long clustering reports progress: (round, proposals left, clusters) each round.
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Linkage:
    """The merge rule: mean similarity ``strict`` for two single faces, tending to ``loose``."""

    strict: float
    loose: float

    def required(
        self, size_a: npt.NDArray[np.float64], size_b: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """The mean similarity two clusters of these sizes must reach to merge."""
        return self.loose + (self.strict - self.loose) / np.sqrt(size_a * size_b)

    @classmethod
    def from_distances(cls, strict: float, loose: float) -> Linkage:
        """The rule from Euclidean distances between unit vectors (``s = 1 − d²/2``)."""
        return cls(1.0 - strict * strict / 2.0, 1.0 - loose * loose / 2.0)


def neighbour_pairs(neighbours: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The undirected edges ``(m, 2)``, ``lo < hi``, of a ``(n, k)`` neighbour table of row
    numbers (``-1``: no neighbour; a row listed as its own neighbour is dropped), each once."""
    n, k = neighbours.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = neighbours.reshape(-1).astype(np.int64)
    keep = (cols >= 0) & (cols != rows)
    lo, hi = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    keys = np.unique(lo * n + hi)
    return np.stack([keys // n, keys % n], axis=1)


def average_linkage(
    vectors: npt.NDArray[np.float32],
    pairs: npt.NDArray[np.int64],
    linkage: Linkage,
    progress: Progress | None = None,
) -> npt.NDArray[np.int64]:
    """Cluster labels, one per row of ``vectors`` (unit rows): average linkage with the
    size-dependent threshold of ``linkage``, merges proposed by ``pairs`` (row numbers, e.g. from
    :func:`neighbour_pairs`).  A cluster's label is the smallest row number among its members;
    a face no proposal joined keeps its own row number (a singleton)."""
    n = len(vectors)
    label = np.arange(n, dtype=np.int64)
    sums = vectors.astype(np.float64)
    sizes = np.ones(n)
    a, b = pairs[:, 0].copy(), pairs[:, 1].copy()
    scores = _scores(sums, sizes, a, b)
    rounds, clusters = 0, n
    while len(a):
        rounds += 1
        eligible = np.flatnonzero(scores >= linkage.required(sizes[a], sizes[b]))
        if not len(eligible):
            break
        best = _best_partner(n, a[eligible], b[eligible], scores[eligible])
        reciprocal = eligible[(best[a[eligible]] == b[eligible]) & (best[b[eligible]] == a[eligible])]
        keep, gone = a[reciprocal], b[reciprocal]  # a < b: the smaller row number names the cluster
        clusters -= len(keep)
        sums[keep] += sums[gone]
        sizes[keep] += sizes[gone]
        remap = np.arange(n, dtype=np.int64)
        remap[gone] = keep
        label = remap[label]
        changed = np.zeros(n, bool)
        changed[keep] = True
        a, b = remap[a], remap[b]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        live = lo != hi
        lo, hi, scores = lo[live], hi[live], scores[live]
        keys, first = np.unique(lo * n + hi, return_index=True)
        a, b, scores = keys // n, keys % n, scores[first]
        stale = np.flatnonzero(changed[a] | changed[b])
        scores[stale] = _scores(sums, sizes, a[stale], b[stale])
        if progress is not None:
            progress(rounds, len(a), clusters)
    return label


def _scores(
    sums: npt.NDArray[np.float64],
    sizes: npt.NDArray[np.float64],
    a: npt.NDArray[np.int64],
    b: npt.NDArray[np.int64],
    chunk: int = 1 << 18,
) -> npt.NDArray[np.float64]:
    """The mean similarity of clusters ``a[i]`` and ``b[i]``, in chunks (bounded memory)."""
    out = np.empty(len(a))
    for start in range(0, len(a), chunk):
        i, j = a[start : start + chunk], b[start : start + chunk]
        out[start : start + chunk] = np.einsum("ij,ij->i", sums[i], sums[j]) / (sizes[i] * sizes[j])
    return out


def _best_partner(
    n: int, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """For each cluster, the partner of its highest-scoring proposal (-1: none); ties go to the
    proposal listed first, the same from both ends, so that a tie cannot leave both unmerged."""
    ends = np.concatenate([a, b])
    others = np.concatenate([b, a])
    order = np.lexsort((np.tile(np.arange(len(a)), 2), -np.tile(scores, 2), ends))
    ends, others = ends[order], others[order]
    first = np.ones(len(ends), bool)
    first[1:] = ends[1:] != ends[:-1]
    best = np.full(n, -1, dtype=np.int64)
    best[ends[first]] = others[first]
    return best
