"""clusterings: background clustering runs of a gallery's faces, their clusters and members

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "clusterings",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("gallery_id", BigId, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("faces", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("neighbours", sa.Integer(), nullable=False),
        sa.Column("based_on", sa.BigInteger(), nullable=True),
        sa.Column("identity_prefix", sa.String(length=256), nullable=False),
        sa.Column("strict_distance", sa.Float(), nullable=False),
        sa.Column("loose_distance", sa.Float(), nullable=False),
        sa.Column("clusters", sa.BigInteger(), nullable=False),
        sa.Column("singletons", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["gallery_id"], ["galleries.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_clusterings_gallery_id", "clusterings", ["gallery_id"])
    op.create_table(
        "clusters",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("clustering_id", BigId, nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("representative_face_id", sa.BigInteger(), nullable=False),
        sa.Column("cohesion", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["clustering_id"], ["clusterings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("clustering_id", "rank"),
    )
    op.create_table(
        "cluster_faces",
        sa.Column("cluster_id", BigId, nullable=False),
        sa.Column("face_id", BigId, nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["face_id"], ["faces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("cluster_id", "face_id"),
    )
    op.create_index("ix_cluster_faces_face_id", "cluster_faces", ["face_id"])


def downgrade() -> None:
    op.drop_table("cluster_faces")
    op.drop_table("clusters")
    op.drop_index("ix_clusterings_gallery_id", table_name="clusterings")
    op.drop_table("clusterings")
