"""Scratch databases on the target server: a migrated template, one clone per scenario."""

from __future__ import annotations

import itertools
import os
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from projector import migrate


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


class ScratchDatabases:
    """Creates `projector_bench_<pid>` (migrated once) and clones of it; drops them all at the end.

    `close()` drops every database it created, WITH (FORCE); the runner calls it on success,
    errors and Ctrl-C alike.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.prefix = f"projector_bench_{os.getpid()}"
        self._created: list[str] = []
        self._counter = itertools.count(1)
        self._template: str | None = None

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(statement)

    def template(self) -> str:
        """The migrated template database (created on first use)."""
        if self._template is None:
            name = self.prefix
            self._admin(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self._created.append(name)
            migrate.upgrade(with_dbname(self.server_url, name))
            self._template = name
        return self._template

    def fresh(self, label: str) -> str:
        """URL of a new migrated database, cloned from the template."""
        template = self.template()
        name = f"{self.prefix}_{next(self._counter)}_{label}"[:63]
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        self._created.append(name)
        return with_dbname(self.server_url, name)

    def drop(self, url: str) -> None:
        """Drop one database made by `fresh` before the end (frees disk for the next scenario)."""
        name = urlsplit(url).path.lstrip("/")
        if name in self._created:
            self._admin(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            self._created.remove(name)

    def close(self) -> None:
        """Drop every database this object created (template last)."""
        for name in reversed(self._created):
            try:
                self._admin(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            except psycopg.Error as exc:  # keep dropping the others
                print(f"bench: could not drop database {name}: {exc}")
        self._created.clear()
        self._template = None
