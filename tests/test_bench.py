"""Smoke test of the benchmark suite: `python -m bench --quick --scenarios 1,2,3` runs and writes
its results (no timing is asserted: the numbers belong to the machine)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path

import nats
import psycopg
import pytest

from tests.natsutil import _free_port

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


@pytest.mark.nats
def test_nats_scenario_runs_end_to_end(server_url: str, nats_url: str, tmp_path: Path) -> None:
    argv = ["--quick", "--scenarios", "10", "--events", "3000", "--rounds", "1"]
    argv += ["--database-url", server_url, "--nats-url", nats_url, "--output", str(tmp_path)]
    status = bench_cli.main(argv)
    assert status == 0
    (result,) = tmp_path.glob("*-quick-scenarios-10.json")
    (scenario,) = json.loads(result.read_text())["scenarios"]
    assert scenario["error"] is None and scenario["skipped"] is None
    assert set(scenario["series"]) == {
        "direct emit_many",
        "end to end, 1 bridge",
        "end to end, 2 bridges",
        "publisher alone",
    }
    for series in scenario["series"].values():
        assert [s["events"] for s in series["samples"]] == [3000]
    one_bridge = scenario["metrics"][0]
    assert one_bridge["target"] == 0.5 and one_bridge["ratio"] > 0

    # Every round's stream is gone.
    async def bench_streams() -> list[str]:
        nc = await nats.connect(nats_url)
        try:
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    assert not [s for s in asyncio.run(bench_streams()) if s.startswith("BENCH_")]


def test_nats_scenario_is_skipped_without_a_server(server_url: str, tmp_path: Path) -> None:
    argv = ["--quick", "--scenarios", "10", "--database-url", server_url]
    argv += ["--nats-url", f"nats://127.0.0.1:{_free_port()}", "--output", str(tmp_path)]
    status = bench_cli.main(argv)
    assert status == 0
    (result,) = tmp_path.glob("*-quick-scenarios-10.json")
    (scenario,) = json.loads(result.read_text())["scenarios"]
    assert scenario["error"] is None
    assert "no NATS server answers" in scenario["skipped"]
    assert "SKIPPED" in result.with_suffix(".md").read_text()
