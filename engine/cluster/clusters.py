"""What a clustering found: each cluster's members, its representative and its cohesion.

A cluster of one face is a *singleton*: reported as such, not forced into the nearest group.
The representative is the member nearest the members' mean direction (a medoid by the cosine),
so it is a real face a person can look at.  Cohesion is the mean cosine similarity over all
pairs of members, exact from the members' sum ``S``: ``(|S|² − n) / (n (n − 1))`` for unit rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Group:
    """One cluster, in row numbers of the clustered vectors; ``cohesion`` is None for a singleton."""

    members: npt.NDArray[np.int64]
    representative: int
    cohesion: float | None


def groups(vectors: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> list[Group]:
    """The clusters of ``labels`` (one per row of ``vectors``), largest first (ties: the one whose
    first member comes first), members in row order."""
    if not len(labels):
        return []
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    parts = np.split(order, cuts)
    parts.sort(key=lambda m: (-len(m), int(m[0])))
    out = []
    for members in parts:
        if len(members) == 1:
            out.append(Group(members, int(members[0]), None))
            continue
        rows = vectors[members].astype(np.float64)
        total = rows.sum(axis=0)
        n = len(members)
        cohesion = (float(total @ total) - n) / (n * (n - 1))
        out.append(Group(members, int(members[int(np.argmax(rows @ total))]), cohesion))
    return out
