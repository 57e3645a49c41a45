"""Vector search: the :class:`~faceid.engine.index.base.GalleryIndex` protocol the service holds,
and its FAISS implementation (the only module tree that imports faiss)."""

from faceid.engine.domain.search import IndexStats, SearchParams
from faceid.engine.index.base import GalleryIndex, IndexBackend, SnapshotError
from faceid.engine.index.faiss_index import FaissBackend, FaissGalleryIndex

__all__ = [
    "FaissBackend",
    "FaissGalleryIndex",
    "GalleryIndex",
    "IndexBackend",
    "IndexStats",
    "SearchParams",
    "SnapshotError",
]
