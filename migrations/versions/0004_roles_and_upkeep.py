"""Least-privilege roles, partition upkeep that cannot be blocked, bounded and deduplicated
rejections.

Roles (NOLOGIN; log in as a user that is a member, see README "Roles"):

* ``noetl_writer``: the sink. Looks events up and inserts them and their rejections; nothing
  else (no UPDATE, DELETE or TRUNCATE on ``noetl.event``: history cannot be rewritten).
* ``noetl_projector``: the projector. Reads every table and view, writes the state tables and
  the checkpoint, and creates partitions through ``noetl.ensure_event_partitions``, which runs
  with its owner's rights (SECURITY DEFINER) and is executable by it alone (and the owner).
* ``noetl_reader``: reads every table and view.

Roles belong to the whole server, not to one database: they are created only when missing (a
server may have them already, from another database), and the downgrade drops one only when
nothing in any database refers to it any more (no privileges, no owned objects, no members);
otherwise it stays, with this database's privileges revoked. Creating them needs CREATEROLE,
unless a superuser has created them beforehand.

Objects that later revisions create in ``noetl`` are readable by ``noetl_projector`` and
``noetl_reader`` through default privileges (of the role running the migrations). Writes are
granted by the revision that needs them: a new state table grants ``noetl_projector`` its INSERT,
UPDATE and DELETE there.

``noetl.ensure_event_partitions`` is replaced: a month whose rows already sit in the default
partition (a future-dated event, say) used to be refused by PostgreSQL, which stopped the upkeep
of every month. Now each missing month's table is created, the month's rows are moved into it
from the default partition and it is attached, in the caller's transaction.

``noetl.event_rejected`` gains ``raw_length`` and ``raw_sha256``: the sink keeps at most a prefix
of a rejected input (``projector.batch.REJECTED_PREFIX_BYTES``) with its full length and SHA-256,
and a unique index keeps the same input from the same place (source, position) once, so the
same bad file ingested twice, or a redelivered message, is kept once. Rows from before this
revision keep NULL in both (and never conflict).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "noetl"

CREATE_ROLES = r"""
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['noetl_writer', 'noetl_projector', 'noetl_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it at the same moment
            END;
        END IF;
    END LOOP;
END
$roles$;
"""

GRANTS = r"""
GRANT USAGE ON SCHEMA noetl TO noetl_writer, noetl_projector, noetl_reader;

GRANT SELECT, INSERT ON noetl.event TO noetl_writer;
GRANT INSERT ON noetl.event_rejected TO noetl_writer;
DO $seq$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO noetl_writer',
                   pg_get_serial_sequence('noetl.event_rejected', 'id'));
END
$seq$;

GRANT SELECT ON ALL TABLES IN SCHEMA noetl TO noetl_projector, noetl_reader;
GRANT INSERT, UPDATE, DELETE ON noetl.step_state, noetl.execution_state,
    noetl.projector_checkpoint TO noetl_projector;

ALTER DEFAULT PRIVILEGES IN SCHEMA noetl GRANT SELECT ON TABLES TO noetl_projector, noetl_reader;
"""

REVOKES = r"""
ALTER DEFAULT PRIVILEGES IN SCHEMA noetl REVOKE SELECT ON TABLES FROM noetl_projector, noetl_reader;
REVOKE ALL ON ALL TABLES IN SCHEMA noetl FROM noetl_writer, noetl_projector, noetl_reader;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA noetl FROM noetl_writer, noetl_projector, noetl_reader;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA noetl FROM noetl_writer, noetl_projector, noetl_reader;
REVOKE ALL ON SCHEMA noetl FROM noetl_writer, noetl_projector, noetl_reader;
"""

# A role is dropped only when nothing in any database refers to it (pg_shdepend is shared by all
# databases: privileges, default privileges and owned objects everywhere) and it has no members.
DROP_UNUSED_ROLES = r"""
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT oid, rolname FROM pg_roles
             WHERE rolname IN ('noetl_writer', 'noetl_projector', 'noetl_reader') LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_shdepend
                              WHERE refclassid = 'pg_authid'::regclass AND refobjid = r.oid);
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_auth_members
                              WHERE roleid = r.oid OR member = r.oid);
        BEGIN
            EXECUTE format('DROP ROLE %I', r.rolname);
        EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN
            NULL;  -- another database granted it something meanwhile, or dropped it
        END;
    END LOOP;
END
$roles$;
"""

# Creates the monthly partitions noetl.event_YYYY_MM covering `months` months from the month of
# `first_month`; existing ones are left alone. A month's rows already in the default partition
# are moved into its new table before it is attached (the default partition is locked first, so
# no row for the month can land there meanwhile). Returns how many partitions it created.
ENSURE_PARTITIONS = r"""
CREATE OR REPLACE FUNCTION noetl.ensure_event_partitions(first_month date, months integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    m date;
    created integer := 0;
    part text;
    lo text;
    hi text;
    has_default boolean := to_regclass('noetl.event_default') IS NOT NULL;
    cols text;
BEGIN
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
    FROM pg_attribute
    WHERE attrelid = 'noetl.event'::regclass AND attnum > 0 AND NOT attisdropped;
    FOR i IN 0 .. months - 1 LOOP
        m := (date_trunc('month', first_month) + make_interval(months => i))::date;
        part := 'event_' || to_char(m, 'YYYY_MM');
        CONTINUE WHEN to_regclass(format('noetl.%I', part)) IS NOT NULL;
        IF created = 0 AND has_default THEN
            -- Attaching locks it so anyway; taken first, before any other lock of this call.
            LOCK TABLE noetl.event_default IN ACCESS EXCLUSIVE MODE;
        END IF;
        lo := to_char(m, 'YYYY-MM-DD') || ' 00:00:00+00';
        hi := to_char((m + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00';
        EXECUTE format('CREATE TABLE noetl.%I (LIKE noetl.event INCLUDING DEFAULTS)', part);
        -- The partition's bounds as a constraint: ATTACH then needs no scan to check them.
        EXECUTE format(
            'ALTER TABLE noetl.%I ADD CONSTRAINT %I CHECK (created_at IS NOT NULL '
            'AND created_at >= %L::timestamptz AND created_at < %L::timestamptz)',
            part, part || '_bounds', lo, hi);
        IF has_default THEN
            EXECUTE format(
                'WITH moved AS (DELETE FROM noetl.event_default '
                'WHERE created_at >= %L::timestamptz AND created_at < %L::timestamptz '
                'RETURNING %s) '
                'INSERT INTO noetl.%I (%s) SELECT %s FROM moved',
                lo, hi, cols, part, cols, cols);
        END IF;
        EXECUTE format(
            'ALTER TABLE noetl.event ATTACH PARTITION noetl.%I FOR VALUES FROM (%L) TO (%L)',
            part, lo, hi);
        EXECUTE format('ALTER TABLE noetl.%I DROP CONSTRAINT %I', part, part || '_bounds');
        created := created + 1;
    END LOOP;
    RETURN created;
END
$fn$;
REVOKE ALL ON FUNCTION noetl.ensure_event_partitions(date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION noetl.ensure_event_partitions(date, integer) TO noetl_projector;
"""

# What the downgrade adds to revision 0001's text of the function, which it restores: that text
# has no SECURITY or SET clause, and the grant is PostgreSQL's default.
RESTORE_PREVIOUS = r"""
ALTER FUNCTION noetl.ensure_event_partitions(date, integer) SECURITY INVOKER RESET ALL;
GRANT EXECUTE ON FUNCTION noetl.ensure_event_partitions(date, integer) TO PUBLIC;
"""


def _previous_ensure_partitions() -> str:
    """Revision 0001's text of ``noetl.ensure_event_partitions`` (frozen, like that revision),
    read from its file rather than copied here."""
    path = Path(__file__).with_name("0001_event.py")
    spec = importlib.util.spec_from_file_location("noetl_revision_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.ENSURE_PARTITIONS
    return text


def upgrade() -> None:
    op.add_column("event_rejected", sa.Column("raw_length", sa.BigInteger()), schema=SCHEMA)
    op.add_column("event_rejected", sa.Column("raw_sha256", sa.LargeBinary()), schema=SCHEMA)
    op.create_index(
        "uq_event_rejected_input",
        "event_rejected",
        ["raw_sha256", "position", sa.text("md5(source)")],
        unique=True,
        schema=SCHEMA,
    )
    op.execute(CREATE_ROLES)
    op.execute(GRANTS)
    op.execute(ENSURE_PARTITIONS)


def downgrade() -> None:
    op.execute(_previous_ensure_partitions())
    op.execute(RESTORE_PREVIOUS)
    op.execute(REVOKES)
    op.execute(DROP_UNUSED_ROLES)
    op.drop_index("uq_event_rejected_input", "event_rejected", schema=SCHEMA)
    op.drop_column("event_rejected", "raw_sha256", schema=SCHEMA)
    op.drop_column("event_rejected", "raw_length", schema=SCHEMA)
