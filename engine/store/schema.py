"""The tables (SQLAlchemy 2 typed models) and the UTC time type both databases share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite's rowid alias must be INTEGER


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and always read back as an aware UTC datetime.

    The column is ``DateTime(timezone=True)`` (no schema change: TIMESTAMP WITH TIME ZONE on
    PostgreSQL, text on SQLite).  SQLite keeps no offset (``2026-11-25 09:49:45.461433``), so a
    value read back was naive, and the API's ``isoformat()`` sent a time without one; PostgreSQL
    answers in the session's time zone (``+05:30`` on a server set to local time).  Written:
    converted to UTC (a naive value is taken as UTC); read: naive → UTC, aware → converted to UTC.
    The API's times are then RFC 3339 with ``+00:00`` on both databases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class GalleryRow(Base):
    __tablename__ = "galleries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class IdentityRow(Base):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("gallery_id", "external_id", name="uq_identity_external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(256))
    display_name: Mapped[str] = mapped_column(String(256), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class FaceRow(Base):
    __tablename__ = "faces"
    __table_args__ = (
        Index("ix_faces_gallery_id_id", "gallery_id", "id"),
        # An enrolment of a source the identity already holds finds those faces (Store.enrol).
        Index("ix_faces_identity_id_source_sha256", "identity_id", "source_sha256"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"))
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    model_version: Mapped[str] = mapped_column(String(64))
    detection_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    box_left: Mapped[float | None] = mapped_column(Float, nullable=True)
    box_top: Mapped[float | None] = mapped_column(Float, nullable=True)
    box_right: Mapped[float | None] = mapped_column(Float, nullable=True)
    box_bottom: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: SHA-256 (hex) of what the face was enrolled from: the photo's bytes, or the embedding's values
    #: as little-endian float32 (as sent, before normalisation).  NULL for faces enrolled from an
    #: embedding before migration 0003, and for faces written by :meth:`Store.add_faces` without one.
    source_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ChangeRow(Base):
    """One change to a gallery that an index must follow; ``seq`` only grows (indexes replay by it)."""

    __tablename__ = "changes"
    __table_args__ = (Index("ix_changes_gallery_id_seq", "gallery_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    gallery_id: Mapped[int] = mapped_column(BigInteger)  # no FK: the log outlives a deleted gallery briefly
    op: Mapped[str] = mapped_column(String(8))  # "add" | "remove" | "update" | "drop" | "trim"
    #: The face added or removed; for "update" the identity's row id; 0 for "drop"; for "trim" the
    #: highest sequence number dropped from the log (see :meth:`Store.trim_changes`).
    face_id: Mapped[int] = mapped_column(BigInteger)


class ClusteringRow(Base):
    """One clustering run of a gallery's faces (a background job) and its progress.

    ``updated_at`` is the job's heartbeat: the process running it writes it at least every few
    seconds, so a run whose process stopped is told apart from a slow one by its age."""

    __tablename__ = "clusterings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))  # "running" | "succeeded" | "failed"
    phase: Mapped[str] = mapped_column(String(32), default="")
    faces: Mapped[int] = mapped_column(BigInteger)  # the gallery's faces when the run started
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    neighbours: Mapped[int] = mapped_column(Integer)
    #: The run this one started from (an update: only faces not in it were searched); None: all.
    based_on: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: Only the faces of identities whose id starts with this ("": every face).
    identity_prefix: Mapped[str] = mapped_column(String(256), default="")
    strict_distance: Mapped[float] = mapped_column(Float)
    loose_distance: Mapped[float] = mapped_column(Float)
    clusters: Mapped[int] = mapped_column(BigInteger, default=0)  # of two or more faces
    singletons: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ClusterRow(Base):
    """A cluster of a clustering run: ``rank`` 1 is its largest.  The representative and the
    cohesion are as the run found them; the members follow deletes (:class:`ClusterFaceRow`)."""

    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("clustering_id", "rank"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clusterings.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)
    #: No foreign key: a deleted representative leaves the cluster; readers then show another member.
    representative_face_id: Mapped[int] = mapped_column(BigInteger)
    cohesion: Mapped[float | None] = mapped_column(Float, nullable=True)


class ClusterFaceRow(Base):
    """A face's membership of a cluster; deleting the face (or its identity, or its gallery)
    deletes it, so that a cluster never lists a face that is gone."""

    __tablename__ = "cluster_faces"

    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True)
    face_id: Mapped[int] = mapped_column(
        ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True, index=True
    )
