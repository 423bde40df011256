"""noetl.event.content_hash: a fingerprint of each row's content, written by PostgresEventSink.

A redelivered envelope is recognised as a duplicate by comparing 16 bytes returned by the sink's key
lookup, instead of sending the whole envelope back to the server for a jsonb comparison. Rows
written by anything else (or before this revision) have NULL here and are compared in full, as
before. Adding a nullable column without a default only touches the catalog: no rewrite.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "noetl"


COMMENT = (
    "BLAKE2b-128 of the envelope's content as PostgresEventSink serialised it "
    "(projector.pgsink.content_hash); NULL when written otherwise. A fast path only: "
    "NULL or another hash means a full comparison."
)


def upgrade() -> None:
    op.add_column(
        "event",
        sa.Column("content_hash", sa.LargeBinary(), nullable=True, comment=COMMENT),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("event", "content_hash", schema=SCHEMA)
