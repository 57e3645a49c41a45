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
from typing import Any

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


def neighbour_pairs(
    neighbours: npt.NDArray[np.int64], rows: npt.NDArray[np.int64] | None = None
) -> npt.NDArray[np.int64]:
    """The undirected edges ``(m, 2)``, ``lo < hi``, each once, of a neighbour table of row
    numbers whose line ``i`` holds the neighbours of row ``rows[i]`` (default: of row ``i``);
    ``-1`` is no neighbour, and a row listed as its own neighbour is dropped."""
    k = neighbours.shape[1]
    owners = np.arange(len(neighbours), dtype=np.int64) if rows is None else rows.astype(np.int64)
    a = np.repeat(owners, k)
    b = neighbours.reshape(-1).astype(np.int64)
    keep = (b >= 0) & (b != a)
    n = int(max(a.max(initial=0), b.max(initial=0))) + 1
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    keys = np.unique(lo * n + hi)
    return np.stack([keys // n, keys % n], axis=1)


def average_linkage(
    vectors: npt.NDArray[np.float32],
    pairs: npt.NDArray[np.int64],
    linkage: Linkage,
    progress: Progress | None = None,
    start: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]:
    """Cluster labels, one per row of ``vectors`` (unit rows): average linkage with the
    size-dependent threshold of ``linkage``, merges proposed by ``pairs`` (row numbers, e.g. from
    :func:`neighbour_pairs`).  A cluster's label is the smallest row number among its members;
    a face no proposal joined keeps its own row number (a singleton).

    ``start`` (a label per row) begins from an earlier clustering instead of from single faces:
    its clusters stay whole and may grow or merge by the proposals given — how faces enrolled
    after a run are assigned without redoing it (only their proposals need be given)."""
    n = len(vectors)
    label = np.arange(n, dtype=np.int64) if start is None else _canonical(start)
    sums = np.zeros((n, vectors.shape[1]))
    np.add.at(sums, label, vectors.astype(np.float64))
    sizes = np.bincount(label, minlength=n).astype(np.float64)
    clusters = int(np.count_nonzero(sizes))
    a, b = _distinct(n, label[pairs[:, 0]], label[pairs[:, 1]])
    scores = _scores(sums, sizes, a, b)
    if progress is not None:
        progress(0, len(a), clusters)
    rounds = 0
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
        sizes[gone] = 0
        remap = np.arange(n, dtype=np.int64)
        remap[gone] = keep
        label = remap[label]
        changed = np.zeros(n, bool)
        changed[keep] = True
        kept = _distinct(n, remap[a], remap[b], scores)
        a, b, scores = kept[0], kept[1], kept[2]
        stale = np.flatnonzero(changed[a] | changed[b])
        scores[stale] = _scores(sums, sizes, a[stale], b[stale])
        if progress is not None:
            progress(rounds, len(a), clusters)
    return label


def _canonical(start: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Labels renamed to the smallest row of each cluster."""
    _, first, inverse = np.unique(start, return_index=True, return_inverse=True)
    return first[inverse].astype(np.int64)


def _distinct(
    n: int, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], *carried: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[Any], ...]:
    """Proposals between two different clusters, each once, ``a < b`` (and the values carried
    along, the first of each repeated proposal's)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    live = lo != hi
    keys, first = np.unique(lo[live] * n + hi[live], return_index=True)
    return (keys // n, keys % n, *(c[live][first] for c in carried))


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
