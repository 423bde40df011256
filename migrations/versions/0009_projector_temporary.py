"""The projector's role may create temporary tables in this database.

`projector rebuild` folds on worker connections, and each worker keeps
its freshly folded steps in a temporary table (``pg_temp.rebuild_steps``, dropped at its commit)
to sum them up into its execution rows. PostgreSQL grants TEMPORARY to PUBLIC by default; a
database hardened with ``REVOKE TEMPORARY ON DATABASE ... FROM PUBLIC`` would refuse the rebuild
to a login in `noetl_projector`. This revision grants it to the role explicitly; the downgrade
revokes that grant (PUBLIC's, if any, is left as it is).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: GRANT or REVOKE (`{verb}`, `{direction}`) TEMPORARY on the current database.
_TEMPORARY = r"""
DO $$
BEGIN
    EXECUTE format('{verb} TEMPORARY ON DATABASE %I {direction} noetl_projector',
                   current_database());
END
$$;
"""


def upgrade() -> None:
    op.execute(_TEMPORARY.format(verb="GRANT", direction="TO"))


def downgrade() -> None:
    op.execute(_TEMPORARY.format(verb="REVOKE", direction="FROM"))
