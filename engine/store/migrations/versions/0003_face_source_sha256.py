"""face source sha256: enrolment is idempotent

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 10:00:00.000000

``faces.image_sha256`` (the SHA-256 of the photo a face came from; NULL for embeddings) becomes
``source_sha256``: the SHA-256 of what a face was enrolled from, the photo's bytes or the
embedding's float32 values.  An enrolment of a source an identity already holds adds no face
(``Store.enrol``); the index (source, identity) finds those faces.  Renamed in place, not copied:
faces enrolled from photos before this revision keep their hash, so a photo enrolled before the
upgrade counts as already enrolled after it.  Rows enrolled from embeddings before it have none
(NULL: they never match).
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain SQL on both databases (SQLite >= 3.25): Alembic's batch mode would copy the whole table.
    op.execute("ALTER TABLE faces RENAME COLUMN image_sha256 TO source_sha256")
    op.create_index("ix_faces_identity_id_source_sha256", "faces", ["identity_id", "source_sha256"])


def downgrade() -> None:
    op.drop_index("ix_faces_identity_id_source_sha256", table_name="faces")
    op.execute("ALTER TABLE faces RENAME COLUMN source_sha256 TO image_sha256")
