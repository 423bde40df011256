"""Real noetl exports through `projector ingest` (issue 10): what `tests/traces/README.md` says is
stored, is stored."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from projector.cli import run

TRACES = Path(__file__).parent / "traces"
EXPORT_EXECUTION = "543942402780693277"


def count(url: str, sql: str = "SELECT count(*) FROM noetl.event") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def ingest(
    url: str, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, int], str]:
    status = run(["--database-url", url, "ingest", *args, "--json"])
    out, err = capsys.readouterr()
    return status, json.loads(out), err


def test_the_stalled_export_stores_every_row_once(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(TRACES / "pft_stall_606790043104968712.ndjson")
    status, counts, _ = ingest(database_url, capsys, path)
    assert status == 0 and counts["inserted"] == 1852 and counts["rejected"] == 0
    assert count(database_url) == 1852
    # The 100 identical command.issued of the fan-out are 100 events.
    assert (
        count(
            database_url,
            "SELECT count(*) FROM noetl.event WHERE step = 'fetch_assessments:task_sequence' "
            "AND event_type = 'command.issued'",
        )
        == 100
    )
    status, counts, _ = ingest(database_url, capsys, path)
    assert status == 0 and (counts["inserted"], counts["duplicates"]) == (0, 1852)


def test_an_api_export_with_its_execution_id_and_the_same_events_as_ndjson_store_60(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    export = str(TRACES / "noetl_api_export_execution_events.json")
    status, counts, err = ingest(database_url, capsys, export)
    assert status == 1 and counts["rejected"] == 60 and counts["inserted"] == 0
    assert f"{export}:element 1: rejected: execution_id is required" in err
    assert "--execution-id" in err
    status, counts, _ = ingest(database_url, capsys, export, "--execution-id", EXPORT_EXECUTION)
    assert status == 0 and counts["inserted"] == 60
    status, counts, _ = ingest(database_url, capsys, str(TRACES / "http_to_postgres_simple.ndjson"))
    assert status == 0 and (counts["inserted"], counts["duplicates"]) == (0, 60)
    assert count(database_url) == 60
    assert count(database_url, "SELECT count(DISTINCT execution_id) FROM noetl.event") == 1


def test_an_execution_id_that_differs_from_the_option_is_rejected(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = (TRACES / "http_to_postgres_simple.ndjson").read_text().splitlines()[:3]
    path = tmp_path / "x.ndjson"
    path.write_text("\n".join(lines) + "\n")
    status, counts, err = ingest(database_url, capsys, str(path), "--execution-id", "42")
    assert status == 1 and counts["rejected"] == 3
    assert (
        f"{path}:line 1: rejected: execution_id '{EXPORT_EXECUTION}' is not the expected '42'"
        in err
    )
