"""The step fold stops walking without commands once the walk with commands has begun (issue 15).

`noetl.step_fold_step`, the PL/pgSQL transition function of `noetl.step_fold` (revision 0005),
runs two walks over a step's events side by side: the walk without commands in scalars and, from
the step's first `command.issued` on, the walk with commands in arrays. The final function reads
the walk with commands whenever it has begun (`s.commands`), and that walk never reads the
scalars of the other. So once `s.commands` is set, the walk without commands is work nobody
reads: it is skipped from then on. Every result is the same (the fold is called once per step
event by the views, the projector and the rebuild: `tests/test_status_properties.py` binds them
to `projector.fold`).

The function text is revision 0005's (`AGGREGATE`) with that one branch added, so the rules stay
written once. Downgrade puts revision 0005's function back.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Where revision 0005's walk without commands begins (the head of one IF ... END IF chain).
_WALK = "    IF s.u_attempt = 0 THEN\n"
#: What this revision puts there.
_SKIP = (
    "    IF s.commands THEN\n"
    "        NULL;  -- the walk with commands has begun: the final function reads only that one\n"
    "    ELSIF s.u_attempt = 0 THEN\n"
)


def _transition(skip: bool) -> str:
    """`CREATE OR REPLACE` of revision 0005's transition function, with the skip or as it was."""
    old = importlib.import_module("projector.migrations.versions.0005_status_rules").AGGREGATE
    start = old.index("CREATE FUNCTION noetl.step_fold_step(")
    end = old.index("CREATE FUNCTION noetl.step_fold_final(")
    text = old[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    if skip:
        if text.count(_WALK) != 1:
            raise RuntimeError("revision 0005's walk without commands is not where it was")
        text = text.replace(_WALK, _SKIP)
    return text


def _run(statements: str) -> None:
    """Run SQL text as written, on the migration's connection and in its transaction."""
    with op.get_bind().connection.cursor() as cursor:
        cursor.execute(statements)


def upgrade() -> None:
    _run(_transition(skip=True))


def downgrade() -> None:
    _run(_transition(skip=False))
