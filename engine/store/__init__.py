"""Persistence: galleries, identities, faces, the change log and API keys in SQL (SQLAlchemy 2,
the only module tree that imports it), SQLite by default and PostgreSQL at scale."""

from faceid.engine.store.clusterings import ClusterStore
from faceid.engine.store.keys import KeyStore
from faceid.engine.store.schema import Base
from faceid.engine.store.store import DatabaseError, IntegrityError, Store, is_unavailable, make_engine

__all__ = [
    "Base",
    "ClusterStore",
    "DatabaseError",
    "IntegrityError",
    "KeyStore",
    "Store",
    "is_unavailable",
    "make_engine",
]
