"""noetl.event (monthly range partitions), noetl.event_rejected, partition helper.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from projector.schema import XID8

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "noetl"

# Creates the monthly partitions noetl.event_YYYY_MM covering `months` months from the month of
# `first_month`; existing ones are left alone. Returns how many it created.
ENSURE_PARTITIONS = r"""
CREATE OR REPLACE FUNCTION noetl.ensure_event_partitions(first_month date, months integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    m date;
    created integer := 0;
    part text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        m := (date_trunc('month', first_month) + make_interval(months => i))::date;
        part := 'event_' || to_char(m, 'YYYY_MM');
        IF to_regclass(format('noetl.%I', part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE noetl.%I PARTITION OF noetl.event FOR VALUES FROM (%L) TO (%L)',
                part,
                to_char(m, 'YYYY-MM-DD') || ' 00:00:00+00',
                to_char((m + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$fn$;
"""


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "event",
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("step", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "context",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("meta", postgresql.JSONB(), nullable=True),
        sa.Column(
            "ingested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("txid", XID8(), server_default=sa.text("pg_current_xact_id()"), nullable=False),
        sa.UniqueConstraint(
            "execution_id",
            "event_id",
            "created_at",
            name="uq_event_execution_id_event_id_created_at",
        ),
        schema=SCHEMA,
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_event_execution_id_created_at", "event", ["execution_id", "created_at"], schema=SCHEMA
    )
    op.create_index(
        "ix_event_execution_id_step_created_at",
        "event",
        ["execution_id", "step", "created_at"],
        schema=SCHEMA,
    )
    op.create_index("ix_event_txid", "event", ["txid"], schema=SCHEMA)
    op.execute("CREATE TABLE noetl.event_default PARTITION OF noetl.event DEFAULT")
    op.execute(ENSURE_PARTITIONS)
    # The previous month, this one and the next three; later months via
    # `projector db partitions` (or the function), older rows land in the default partition.
    op.execute(
        "SELECT noetl.ensure_event_partitions("
        "(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date, 5)"
    )

    op.create_table(
        "event_rejected",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("raw_bytes", postgresql.BYTEA(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "rejected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_event_rejected"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("event_rejected", schema=SCHEMA)
    op.execute("DROP FUNCTION IF EXISTS noetl.ensure_event_partitions(date, integer)")
    op.drop_table("event", schema=SCHEMA)  # drops every partition with it
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}")
