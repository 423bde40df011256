"""Every SQL statement the package sends, by name.

The statements live in ``projector/sql/*.sql``. Each one starts with a line ``-- name: NAME``;
the comment lines right after it say what it does; the statement runs to the next ``-- name:``
line (or the end of the file). Its full name is ``<file stem>.<NAME>``, for example
``sink.begin`` from ``sink.sql``::

    -- name: begin
    -- The transaction id and the advisory locks, in one round trip.
    SELECT pg_current_xact_id()::text, ...

Values are always parameters (``%s`` or ``%(name)s``, psycopg's placeholders; a literal ``%`` is
written ``%%``); to run one in psql, replace them by literals or ``PREPARE q AS ...`` with ``$1``.
Identifiers that vary at run time are composed with :mod:`psycopg.sql` where the query is used,
never pasted into the text. Frozen migrations keep their own DDL text and do not read these
files. A test checks that every name the code uses exists and that every query is used.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import LiteralString

__all__ = ["Query", "all_queries", "query"]

_NAME_LINE = re.compile(r"^-- name: *([a-z][a-z0-9_]*) *$")


@dataclass(frozen=True)
class Query:
    """One named statement: where it comes from, what it does, and its text."""

    name: str
    doc: str
    text: LiteralString


def _parse(stem: str, source: str) -> list[Query]:
    found: list[Query] = []
    name: str | None = None
    doc: list[str] = []
    body: list[str] = []
    in_doc = False

    def close() -> None:
        if name is not None:
            text = "\n".join(body).strip().rstrip(";").strip()
            if not text:
                raise ValueError(f"query {stem}.{name} in {stem}.sql has no statement")
            # The files are part of the package, never user input: their text is literal SQL.
            found.append(Query(f"{stem}.{name}", " ".join(doc), text))  # type: ignore[arg-type,unused-ignore]

    for line in source.splitlines():
        match = _NAME_LINE.match(line)
        if match:
            close()
            name, doc, body, in_doc = match.group(1), [], [], True
            continue
        if name is None:
            continue  # the file's own header comment
        if in_doc and line.startswith("--"):
            doc.append(line[2:].strip())
            continue
        in_doc = False
        body.append(line)
    close()
    return found


@functools.cache
def all_queries() -> dict[str, Query]:
    """Every query of every file in ``projector/sql``, by full name."""
    queries: dict[str, Query] = {}
    folder = resources.files("projector") / "sql"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        stem = entry.name.removesuffix(".sql")
        for q in _parse(stem, entry.read_text(encoding="utf-8")):
            if q.name in queries:
                raise ValueError(f"query {q.name} is defined twice in {entry.name}")
            queries[q.name] = q
    return queries


def query(name: LiteralString) -> LiteralString:
    """The text of the query called `name` (``file.name``); KeyError names the ones there are."""
    try:
        return all_queries()[name].text
    except KeyError:
        known = ", ".join(sorted(all_queries()))
        raise KeyError(f"no query named {name!r} in projector/sql (there are: {known})") from None
