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
    # The client's CPU per event is reported beside the rates (scenarios 1 and 3).
    labels = {m["label"]: m for s in doc["scenarios"] for m in s["metrics"]}
    for label in (
        "client CPU per event: emit_many",
        "client CPU per event: raw COPY, 1 connection",
        "emit() client CPU per event",
    ):
        assert labels[label]["unit"] == "µs" and labels[label]["value"] > 0


def test_catch_up_scenario_reports_its_per_round_series(server_url: str, tmp_path: Path) -> None:
    """Scenario 5's series without samples (catch-up while ingesting, 2 shards) reach the report."""
    status = bench_cli.main(
        ["--quick", "--scenarios", "5", "--database-url", server_url, "--output", str(tmp_path)]
    )
    assert status == 0
    (result,) = tmp_path.glob("*-quick-scenarios-5.json")
    (scenario,) = json.loads(result.read_text())["scenarios"]
    assert scenario["error"] is None
    assert len(scenario["series"]["2 shards"]["rates"]) >= 1
    report = result.with_suffix(".md").read_text()
    assert "- 2 shards: rounds: rates: " in report
    assert "- catch-up while ingesting: rounds: rates: " in report and "lags_s: " in report


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
    # Each process's CPU per stored event; the bridge's against the direct client's.
    metrics = {m["label"]: m for m in scenario["metrics"]}
    cpu = metrics["CPU per event: 1 bridge (ratio: direct client's / bridge's)"]
    assert cpu["target"] == pytest.approx(1 / 1.5, abs=1e-3)
    assert cpu["value"] > 0 and cpu["ratio"] > 0
    for label in ("publisher, while 1 bridge stores", "direct sink client (emit_many)"):
        assert metrics[f"CPU per event: {label}"]["value"] > 0
    (bridge_round,) = scenario["series"]["end to end, 1 bridge"]["samples"]
    assert bridge_round["extra"]["bridge_cpu_seconds"] > 0

    # Every round's stream is gone.
    async def bench_streams() -> list[str]:
        nc = await nats.connect(nats_url)
        try:
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    assert not [s for s in asyncio.run(bench_streams()) if s.startswith("BENCH_")]


def test_memory_scenario_sees_the_queue_fill_to_its_bound(server_url: str, tmp_path: Path) -> None:
    """Scenario 9's child watches the group commit's queue: with more producers than
    `max_pending`, the largest queue it sees is exactly the bound."""
    argv = ["--quick", "--scenarios", "9", "--database-url", server_url, "--output", str(tmp_path)]
    assert bench_cli.main(argv) == 0
    (result,) = tmp_path.glob("*-quick-scenarios-9.json")
    (scenario,) = json.loads(result.read_text())["scenarios"]
    assert scenario["error"] is None
    metrics = {m["label"]: m for m in scenario["metrics"]}
    assert metrics["largest queue seen"]["value"] == 10_000  # the sink's default max_pending


def test_process_cpu_is_read_from_proc() -> None:
    """`bench.proccpu` reads a process's CPU time as getrusage counts it, and finds processes by
    name; a pid that does not exist reads as unknown."""
    import resource
    import time

    from bench.proccpu import cpu_seconds, pids_named

    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc")
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn CPU for the clock to see
        pass
    after = cpu_seconds(os.getpid())
    assert before is not None and after is not None and after - before >= 0.1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert abs(after - (usage.ru_utime + usage.ru_stime)) < 0.1
    comm = Path("/proc/self/comm").read_text().strip()
    assert os.getpid() in pids_named(comm)
    assert cpu_seconds(2**22 + 12345) is None  # above pid_max: never a process


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
