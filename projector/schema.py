"""SQLAlchemy Core metadata: the single source of truth for the project's tables.

Alembic migrations create what is described here, and `alembic check` (run in CI) fails when the two
drift apart. Objects SQLAlchemy does not model (partitions, views, functions) are created by the
migrations themselves (SQL text inside each revision, so old revisions never change).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import UserDefinedType

SCHEMA = "noetl"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class XID8(UserDefinedType[Any]):
    """PostgreSQL's 64-bit transaction id type (`xid8`), read and written as text."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# Let reflection (alembic check) recognise the type instead of warning about it.
postgresql.base.ischema_names["xid8"] = XID8

metadata = MetaData(schema=SCHEMA, naming_convention=NAMING_CONVENTION)

#: Every stored envelope. Range-partitioned by month on `created_at`; see README "Idempotency and
#: partitions" for why the unique key carries `created_at` and how the sink keeps ids unique anyway.
event = Table(
    "event",
    metadata,
    Column("execution_id", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("step", Text, nullable=False, server_default=text("''")),
    Column("status", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("context", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("worker_id", Text, nullable=True),
    Column("meta", JSONB, nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # The inserting transaction's id: readers fence on it to never skip a row committed late.
    Column("txid", XID8, nullable=False, server_default=text("pg_current_xact_id()")),
    # A fingerprint of the content, written by PostgresEventSink: a redelivery is recognised as a
    # duplicate from these 16 bytes. NULL for rows written otherwise (compared in full instead).
    Column(
        "content_hash",
        LargeBinary,
        nullable=True,
        comment=(
            "BLAKE2b-128 of the envelope's content as PostgresEventSink serialised it "
            "(projector.pgsink.content_hash); NULL when written otherwise. A fast path only: "
            "NULL or another hash means a full comparison."
        ),
    ),
    UniqueConstraint("execution_id", "event_id", "created_at"),
    Index(None, "execution_id", "created_at"),
    Index(None, "execution_id", "step", "created_at"),
    Index(None, "txid"),
    postgresql_partition_by="RANGE (created_at)",
)

#: Input that could not be read as an envelope, kept verbatim with the reason.
event_rejected = Table(
    "event_rejected",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    # The input as text; bytes that are not UTF-8 (or hold NUL) are escaped here and kept exactly
    # in `raw_bytes`.
    Column("raw", Text, nullable=False),
    Column("raw_bytes", postgresql.BYTEA, nullable=True),
    Column("source", Text, nullable=False),
    Column("position", BigInteger, nullable=True),
    Column("reason", Text, nullable=False),
    Column("rejected_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # `raw` / `raw_bytes` hold at most projector.batch.REJECTED_PREFIX_BYTES of the input; these
    # its full length in bytes and SHA-256 (NULL for rows from before revision 0004).
    Column("raw_length", BigInteger, nullable=True),
    Column("raw_sha256", LargeBinary, nullable=True),
)
# The same input from the same place is kept once (the sink inserts with ON CONFLICT DO NOTHING).
Index(
    "uq_event_rejected_input",
    event_rejected.c.raw_sha256,
    event_rejected.c.position,
    func.md5(event_rejected.c.source),
    unique=True,
)

#: One row per step, maintained by the projector (`projector project`); equal to the view
#: `noetl.step_status` once the projector has caught up.
step_state = Table(
    "step_state",
    metadata,
    Column("execution_id", Text, primary_key=True),
    Column("step", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("last_event_at", DateTime(timezone=True), nullable=False),
    Column("last_event_type", Text, nullable=False),
    Column("event_count", BigInteger, nullable=False),
    Column("error", Text, nullable=True),
)

#: One row per execution, maintained by the projector; equal to `noetl.execution_status` once the
#: projector has caught up.
execution_state = Table(
    "execution_state",
    metadata,
    Column("execution_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("last_event_at", DateTime(timezone=True), nullable=False),
    Column("event_count", BigInteger, nullable=False),
    Column("step_count", BigInteger, nullable=False),
    Column("steps_completed", BigInteger, nullable=False),
    Column("steps_failed", BigInteger, nullable=False),
    Column("steps_running", BigInteger, nullable=False),
    # "Newest executions first" (`projector executions`), optionally of one status.
    Index(None, "started_at"),
    Index(None, "status", "started_at"),
)

#: How far each projector has read: every event with `txid < position` is projected.
projector_checkpoint = Table(
    "projector_checkpoint",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", XID8, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
