"""Smoke test of the benchmark suite: `python -m bench --quick --scenarios 1,2,3` runs and writes
its results (no timing is asserted: the numbers belong to the machine)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import psycopg
import pytest

bench_cli = pytest.importorskip("bench.cli")

pytestmark = pytest.mark.slow


def test_quick_run_writes_results(server_url: str, tmp_path: Path) -> None:
    status = bench_cli.main(
        ["--quick", "--scenarios", "1,2,3", "--database-url", server_url, "--output", str(tmp_path)]
    )
    assert status == 0
    (result,) = tmp_path.glob("*-quick-scenarios-1-2-3.json")
    doc = json.loads(result.read_text())
    assert doc["mode"] == "quick"
    assert {"host", "cpus", "memory_bytes", "postgresql", "python"} <= doc["machine"].keys()
    assert [s["id"] for s in doc["scenarios"]] == [1, 2, 3]
    for scenario in doc["scenarios"]:
        assert scenario["error"] is None
        assert scenario["metrics"]
        for series in scenario["series"].values():
            assert series["samples"], series["name"]
            assert all({"events", "seconds", "rate"} <= s.keys() for s in series["samples"])
    assert result.with_suffix(".md").read_text().startswith("# noetl-projector benchmark")
    if importlib.util.find_spec("matplotlib") is not None:  # the plot needs the bench extra
        assert result.with_suffix(".png").stat().st_size > 0
    # This process's scratch databases are gone.
    prefix = f"projector_bench_{os.getpid()}"
    with psycopg.connect(server_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s OR datname LIKE %s",
            (prefix, prefix + "\\_%"),
        ).fetchone()
    assert row is not None and row[0] == 0
