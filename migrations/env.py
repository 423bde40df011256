"""Alembic environment for the noetl schema.

Connection, in order: an outside connection handed in through
``config.attributes["connection"]`` (how `projector db upgrade` and the tests migrate), the
``sqlalchemy.url`` option or ``-x url=...``, ``PROJECTOR_DATABASE_URL``, else the embedded
PostgreSQL the command line uses; with the URL's ``connect_timeout``, else
``PROJECTOR_CONNECT_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import Connection

from projector.database import (
    CONNECT_KWARGS,
    embedded_server,
    sqlalchemy_url,
    with_connect_timeout,
)
from projector.schema import SCHEMA, metadata
from projector.settings import settings

config = context.config

# Monthly partitions of noetl.event are created by SQL, not modelled in the metadata.
_PARTITION = re.compile(r"^event_(\d{4}_\d{2}|default)$")


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    if type_ == "schema":
        return name == SCHEMA
    return not (type_ == "table" and name is not None and _PARTITION.match(name))


def run(connection: Connection) -> None:
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_schemas=True,
        include_name=include_name,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    outside = config.attributes.get("connection")
    if outside is not None:
        run(outside)
        return
    url = (
        config.get_main_option("sqlalchemy.url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or settings().database_url
    )
    with contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(embedded_server())
        engine = create_engine(
            sqlalchemy_url(with_connect_timeout(url, settings().connect_timeout)),
            poolclass=pool.NullPool,
            connect_args=CONNECT_KWARGS,
        )
        with engine.connect() as connection:
            run(connection)
            connection.commit()
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: the DDL reads the catalog")
main()
