"""The named queries in projector/sql: every name used exists, every query is used, and each one
is a statement PostgreSQL accepts against the migrated schema."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pgerrors

from projector.queries import _parse, all_queries, query

PACKAGE = Path(__file__).resolve().parent.parent / "projector"
_USE = re.compile(r"""\bquery\(\s*["']([a-z0-9_.]+)["']\s*\)""")
# Statements PREPARE cannot take (COPY, SET, CREATE, BEGIN; several statements in one text);
# checked by their tests.
_NOT_PREPARABLE = re.compile(r"^\s*(COPY\b|SET\b|CREATE\b|BEGIN\b)|;", re.I)


def used_names() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        names.update(_USE.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_name_used_exists() -> None:
    missing = used_names() - set(all_queries())
    assert not missing, f"query() names with no query in projector/sql: {sorted(missing)}"


def test_every_query_is_used() -> None:
    unused = set(all_queries()) - used_names()
    assert not unused, f"queries in projector/sql that no code uses: {sorted(unused)}"


def test_unknown_name_says_which_exist() -> None:
    with pytest.raises(KeyError, match=r"no query named 'sink\.nope'"):
        query("sink.nope")


def test_parse_reads_names_docs_and_bodies() -> None:
    text = (
        "-- header of the file, not a query\n"
        "-- name: first\n-- Says what it does,\n-- on two lines.\nSELECT 1;\n\n"
        "-- name: second\nSELECT %s\n  -- a comment inside stays\n  , 2;\n"
    )
    first, second = _parse("f", text)
    assert first.name == "f.first"
    assert first.doc == "Says what it does, on two lines."
    assert first.text == "SELECT 1"
    assert second.name == "f.second"
    assert second.text == "SELECT %s\n  -- a comment inside stays\n  , 2"


def test_a_name_without_a_statement_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"f\.empty .* has no statement"):
        _parse("f", "-- name: empty\n-- nothing follows\n")


def _positional(text: str) -> str:
    """psycopg placeholders as PREPARE's $n (named ones numbered by first appearance)."""
    names: dict[str, int] = {}
    counter = iter(range(1, 1000))

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        if m.group(1) is None:
            return f"${next(counter)}"
        if m.group(1) not in names:
            names[m.group(1)] = next(counter)
        return f"${names[m.group(1)]}"

    return re.sub(r"%%|%(?:\((\w+)\))?s", repl, text)


def test_every_query_is_valid_sql(database_url: str) -> None:
    problems = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for n, q in enumerate(all_queries().values()):
            if _NOT_PREPARABLE.search(q.text):
                continue
            try:
                conn.execute(f"PREPARE q{n} AS {_positional(q.text)}")  # type: ignore[arg-type]
            except pgerrors.IndeterminateDatatype:
                pass  # parsed and analysed; only a parameter's type is left open
            except psycopg.Error as exc:
                problems.append(f"{q.name}: {exc}")
    assert not problems, "\n".join(problems)
