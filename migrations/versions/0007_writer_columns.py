"""The sink's role may not choose an event's `txid`.

`noetl.event.txid` is the id of the transaction that stored the row (its default,
`pg_current_xact_id()`); the projector reads the log by it and the views trust that every event
below a checkpoint was committed before that checkpoint was written. An INSERT that names a
`txid` below the checkpoint would store an event that is never projected, and that the fast views
(revision 0006) hide as well. `noetl_writer` now holds INSERT on every column of `noetl.event`
but `txid` (the sink never names it), so such an INSERT is refused with 42501. Owners and
superusers are not bound by grants: a restore from pg_dump into another cluster brings back the
old txids and checkpoints (README, "Restoring a dump": delete the checkpoint rows, then
`projector rebuild`).

The downgrade gives the table-wide INSERT back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The columns of noetl.event as this revision finds them, quoted, as one list (`cols`); `{but}`:
#: a condition on `attname` that leaves some out.
_COLUMNS = r"""
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
      FROM pg_attribute
     WHERE attrelid = 'noetl.event'::regclass AND attnum > 0 AND NOT attisdropped AND {but};
"""

#: INSERT on every column of noetl.event but txid, instead of on the table.
WRITER_COLUMNS = f"""
DO $$
DECLARE
    cols text;
BEGIN
{_COLUMNS.format(but="attname <> 'txid'")}
    REVOKE INSERT ON noetl.event FROM noetl_writer;
    EXECUTE format('GRANT INSERT (%s) ON noetl.event TO noetl_writer', cols);
END
$$;
"""

#: The table-wide INSERT of revision 0004 again.
TABLE_WIDE = f"""
DO $$
DECLARE
    cols text;
BEGIN
{_COLUMNS.format(but="true")}
    EXECUTE format('REVOKE INSERT (%s) ON noetl.event FROM noetl_writer', cols);
    GRANT INSERT ON noetl.event TO noetl_writer;
END
$$;
"""


def upgrade() -> None:
    op.execute(WRITER_COLUMNS)


def downgrade() -> None:
    op.execute(TABLE_WIDE)
