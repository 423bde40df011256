"""SQLAlchemy Core metadata: the single source of truth for the project's tables.

Alembic migrations create what is described here, and `alembic check` (run in CI) fails when the two
drift apart. Objects SQLAlchemy does not model (partitions, views, functions) are created by the
migrations themselves (SQL text inside each revision, so old revisions never change).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
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
#: Comments (`COMMENT ON`) are part of the schema: migration 0005 wrote these texts, and
#: `alembic check` fails when the two differ.
event = Table(
    "event",
    metadata,
    Column(
        "execution_id",
        Text,
        nullable=False,
        comment="The execution the event belongs to (integers as decimal text).",
    ),
    Column(
        "event_id",
        Text,
        nullable=False,
        comment="The producer's event id, or one the sink derived from the content; unique per "
        "execution.",
    ),
    Column(
        "event_type",
        Text,
        nullable=False,
        comment="What happened, as the producer named it (command.issued, step.exit, "
        "playbook_completed, ...); noetl.event_class says what it is to the status rules.",
    ),
    Column(
        "step",
        Text,
        nullable=False,
        server_default=text("''"),
        comment="The step (node) as sent, '' for none; noetl.step_name maps it to its step.",
    ),
    Column(
        "status",
        Text,
        nullable=True,
        comment="The status exactly as sent (null when none); noetl.normalize_status maps it.",
    ),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        comment="When the producer says the event happened (UTC, microseconds); the fold "
        "order's first key.",
    ),
    Column(
        "context",
        JSONB,
        nullable=False,
        server_default=text("'{}'::jsonb"),
        comment="The event's free-form JSON payload (context / payload on the wire).",
    ),
    Column(
        "worker_id", Text, nullable=True, comment="The worker that sent the event, when it said."
    ),
    Column(
        "meta",
        JSONB,
        nullable=True,
        comment="Envelope metadata (command_id, attempt, loop fields, ...); top-level fields the "
        "envelope does not know are kept in meta.unknown_fields.",
    ),
    Column(
        "ingested_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When the row was stored.",
    ),
    # The inserting transaction's id: readers fence on it to never skip a row committed late.
    Column(
        "txid",
        XID8,
        nullable=False,
        server_default=text("pg_current_xact_id()"),
        comment="The inserting transaction's id: the projector reads rows by this fence.",
    ),
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
    # Time-window questions over the log (docs/cookbook.md): a few pages for the whole table.
    Index("ix_event_created_at", "created_at", postgresql_using="brin"),
    # The terminal lifecycle events only: an execution's deciding event (noetl.execution_end)
    # is a short index scan.
    Index(
        "ix_event_execution_end",
        "execution_id",
        "created_at",
        postgresql_where=text(
            "noetl.is_execution_event(event_type) "
            "AND noetl.is_terminal(noetl.normalize_status(status, event_type))"
        ),
    ),
    postgresql_partition_by="RANGE (created_at)",
    comment="Every stored event envelope, one row per (execution_id, event_id); range-"
    "partitioned by month on created_at. The history the status views read.",
)

#: Input that could not be read as an envelope, kept verbatim with the reason.
event_rejected = Table(
    "event_rejected",
    metadata,
    Column(
        "id",
        BigInteger,
        primary_key=True,
        autoincrement=True,
        comment="Sequence number of the rejection.",
    ),
    # The input as text; bytes that are not UTF-8 (or hold NUL) are escaped here and kept exactly
    # in `raw_bytes`.
    Column(
        "raw",
        Text,
        nullable=False,
        comment="The input as text (bytes that are not UTF-8, or NUL, escaped).",
    ),
    Column(
        "raw_bytes",
        postgresql.BYTEA,
        nullable=True,
        comment="The input's exact bytes when raw could not hold them.",
    ),
    Column(
        "source",
        Text,
        nullable=False,
        comment="Where the input came from (file, NATS subject, API).",
    ),
    Column(
        "position",
        BigInteger,
        nullable=True,
        comment="Its position in the source (line, sequence), when known.",
    ),
    Column("reason", Text, nullable=False, comment="Why it was rejected."),
    Column(
        "rejected_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When it was rejected.",
    ),
    # `raw` / `raw_bytes` hold at most projector.batch.REJECTED_PREFIX_BYTES of the input; these
    # its full length in bytes and SHA-256 (NULL for rows from before revision 0004).
    Column(
        "raw_length",
        BigInteger,
        nullable=True,
        comment="The whole input's length in bytes (raw keeps at most a prefix of it).",
    ),
    Column(
        "raw_sha256",
        LargeBinary,
        nullable=True,
        comment="SHA-256 of the whole input: with source and position, it keeps an input once.",
    ),
    comment="Input that could not be read or stored as an event, kept with the reason.",
)
# The same input from the same place is kept once (the sink inserts with ON CONFLICT DO NOTHING).
Index(
    "uq_event_rejected_input",
    event_rejected.c.raw_sha256,
    event_rejected.c.position,
    func.md5(event_rejected.c.source),
    unique=True,
)

#: What the columns of `noetl.step_state` (and of the view `noetl.step_status`) hold.
STEP_COMMENTS = {
    "execution_id": "The execution the step belongs to.",
    "step": "The step: noetl.event.step without a :task_sequence suffix (noetl.step_name); "
    "lifecycle and bookkeeping events belong to no step.",
    "status": "PENDING, RUNNING, COMPLETED, FAILED, CANCELLED or SKIPPED. While an iteration is "
    "open: PENDING when every event of the step is PENDING, else RUNNING. Then FAILED when an "
    "iteration's last try failed (even if others completed later), else CANCELLED, COMPLETED, "
    "SKIPPED in that order; CANCELLED too when the execution was cancelled first.",
    "attempts": "Tries of the iteration that needed the most: 1 without retries, however many "
    "iterations; explicit attempts (context.attempt, meta.attempt, 0-based meta.attempts) "
    "only ever raise it.",
    "started_at": "created_at of the step's first event.",
    "finished_at": "When the step became terminal (the latest close of an iteration's last "
    "try); null while it is not.",
    "last_event_at": "created_at of the step's last event.",
    "last_event_type": "event_type of the step's last event in the fold order (created_at, "
    "terminal first, event_id by code point).",
    "event_count": "Number of the step's events.",
    "error": "While FAILED: the error of the failed iteration that finished first (context.error, "
    "meta.error, the envelope's error or result.error; noetl.event_error).",
    "iterations": "Iterations of the step: loop items, parallel commands and each time the "
    "workflow entered the step; a retry is another try of the same iteration.",
    "iterations_completed": "Iterations whose last try closed COMPLETED.",
    "iterations_failed": "Iterations whose last try closed FAILED.",
    "iterations_running": "Iterations whose last try is still open (a command issued and not "
    "yet completed, failed or cancelled).",
}

#: One row per step, maintained by the projector (`projector project`); equal to the view
#: `noetl.step_status` once the projector has caught up.
step_state = Table(
    "step_state",
    metadata,
    Column("execution_id", Text, primary_key=True, comment=STEP_COMMENTS["execution_id"]),
    Column("step", Text, primary_key=True, comment=STEP_COMMENTS["step"]),
    Column("status", Text, nullable=False, comment=STEP_COMMENTS["status"]),
    Column("attempts", Integer, nullable=False, comment=STEP_COMMENTS["attempts"]),
    Column(
        "started_at", DateTime(timezone=True), nullable=False, comment=STEP_COMMENTS["started_at"]
    ),
    Column(
        "finished_at", DateTime(timezone=True), nullable=True, comment=STEP_COMMENTS["finished_at"]
    ),
    Column(
        "last_event_at",
        DateTime(timezone=True),
        nullable=False,
        comment=STEP_COMMENTS["last_event_at"],
    ),
    Column("last_event_type", Text, nullable=False, comment=STEP_COMMENTS["last_event_type"]),
    Column("event_count", BigInteger, nullable=False, comment=STEP_COMMENTS["event_count"]),
    Column("error", Text, nullable=True, comment=STEP_COMMENTS["error"]),
    Column("iterations", Integer, nullable=False, comment=STEP_COMMENTS["iterations"]),
    Column(
        "iterations_completed",
        Integer,
        nullable=False,
        comment=STEP_COMMENTS["iterations_completed"],
    ),
    Column(
        "iterations_failed", Integer, nullable=False, comment=STEP_COMMENTS["iterations_failed"]
    ),
    Column(
        "iterations_running", Integer, nullable=False, comment=STEP_COMMENTS["iterations_running"]
    ),
    # History questions (docs/cookbook.md): steps finished in a window, failed ones in a window.
    Index(
        None,
        "finished_at",
        postgresql_include=["execution_id", "step", "status", "started_at"],
    ),
    Index(None, "status", "finished_at"),
    comment="One row per step, kept by `projector project`: noetl.step_status as of the "
    "projector's checkpoint (equal to it once caught up).",
)

#: What the columns of `noetl.execution_state` (and of `noetl.execution_status`) hold.
EXECUTION_COMMENTS = {
    "execution_id": "The execution (noetl.event.execution_id; integers as decimal text).",
    "status": "The status of the last terminal lifecycle event (playbook.*, workflow.*, "
    "execution.*, playbook_* ..., subscription.lifecycle); without one PENDING while nothing "
    "but PENDING events exist, else RUNNING. Never guessed from the steps.",
    "started_at": "created_at of the execution's first event.",
    "finished_at": "created_at of the terminal lifecycle event that set the status; null "
    "without one.",
    "last_event_at": "created_at of the execution's last event, bookkeeping included.",
    "event_count": "Number of the execution's events, lifecycle and bookkeeping included.",
    "step_count": "Number of its steps.",
    "steps_completed": "Steps that are COMPLETED.",
    "steps_failed": "Steps that are FAILED.",
    "steps_running": "Steps that are not terminal (PENDING or RUNNING).",
    "error": "The error of the lifecycle event that set the status; else, unless COMPLETED, the "
    "error of the FAILED step that finished first (ties: step name by code point).",
    "parent_execution_id": "The execution that started this one (context.parent_execution_id, "
    "meta.parent_execution_id or the envelope's parent_execution_id), as text.",
    "playbook": "The playbook its playbook.* / playbook_* events name: context.playbook, else "
    "their step unless that is playbook, workflow or ingress.",
    "last_progress_at": "created_at of its last event that is not bookkeeping (batch, checkpoint, "
    "subscription machinery, heartbeats); null without one. Minutes behind last_event_at while "
    "not terminal: stalled.",
    "open_units": "Iterations still open across its steps.",
    "settled": "True when no step is running: nothing more happens unless the engine starts new "
    "work (a settled execution without an end event is stuck or lost its end).",
}


def _timestamp(name: str, nullable: bool) -> Column[Any]:
    return Column(
        name, DateTime(timezone=True), nullable=nullable, comment=EXECUTION_COMMENTS[name]
    )


def _counter(name: str) -> Column[Any]:
    return Column(name, BigInteger, nullable=False, comment=EXECUTION_COMMENTS[name])


#: One row per execution, maintained by the projector; equal to `noetl.execution_status` once the
#: projector has caught up.
execution_state = Table(
    "execution_state",
    metadata,
    Column("execution_id", Text, primary_key=True, comment=EXECUTION_COMMENTS["execution_id"]),
    Column("status", Text, nullable=False, comment=EXECUTION_COMMENTS["status"]),
    _timestamp("started_at", nullable=False),
    _timestamp("finished_at", nullable=True),
    _timestamp("last_event_at", nullable=False),
    _counter("event_count"),
    _counter("step_count"),
    _counter("steps_completed"),
    _counter("steps_failed"),
    _counter("steps_running"),
    Column("error", Text, nullable=True, comment=EXECUTION_COMMENTS["error"]),
    Column(
        "parent_execution_id",
        Text,
        nullable=True,
        comment=EXECUTION_COMMENTS["parent_execution_id"],
    ),
    Column("playbook", Text, nullable=True, comment=EXECUTION_COMMENTS["playbook"]),
    _timestamp("last_progress_at", nullable=True),
    _counter("open_units"),
    Column("settled", Boolean, nullable=False, comment=EXECUTION_COMMENTS["settled"]),
    # "Newest executions first" (`projector executions`), optionally of one status.
    Index(None, "started_at"),
    Index(None, "status", "started_at"),
    # The children of an execution (`projector status`). A hash index: the id comes from
    # producers' JSON, and a hash index has no size limit on its keys.
    Index(None, "parent_execution_id", postgresql_using="hash"),
    # The executions of one playbook in a window (docs/cookbook.md).
    Index(None, "playbook", "started_at"),
    # `projector executions --stalled`: the unfinished executions by their last progress.
    Index(None, "last_progress_at", postgresql_where=text("status IN ('PENDING', 'RUNNING')")),
    comment="One row per execution, kept by `projector project`: noetl.execution_status as of "
    "the projector's checkpoint.",
)

#: How far each projector has read: every event with `txid < position` is projected.
projector_checkpoint = Table(
    "projector_checkpoint",
    metadata,
    Column("name", Text, primary_key=True, comment="The projection's name (default: default)."),
    Column(
        "position",
        XID8,
        nullable=False,
        comment="Every event with txid below this position is projected.",
    ),
    Column(
        "updated_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When the position last moved.",
    ),
    comment="How far each projector has read noetl.event (by txid).",
)
