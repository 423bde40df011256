"""The scenarios, one module each, in the order they run.

Each module has `ID`, `KEY`, `TITLE` and `async run(ctx, result)`. Rebuild (8) runs before the point
queries (7): both use the same generated history, and the queries read the state the rebuild wrote.
The NATS scenario (10) runs last and is skipped when no NATS server answers.
"""

from __future__ import annotations

from types import ModuleType

from . import (
    duplicates,
    group_commit,
    ingest,
    lag,
    memory,
    nats,
    peer,
    point_queries,
    projection,
    rebuild,
)

SCENARIOS: tuple[ModuleType, ...] = (
    ingest,
    duplicates,
    group_commit,
    peer,
    projection,
    lag,
    rebuild,
    point_queries,
    memory,
    nats,
)
BY_ID: dict[int, ModuleType] = {m.ID: m for m in SCENARIOS}
