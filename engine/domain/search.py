"""What a search is asked and what an index reports: value types shared by the index backends
and the service (no vector library here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
IndexKind = Literal["exact", "ivf_pq"]


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
