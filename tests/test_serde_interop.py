"""What the project writes parses in the real Rust structs (issue 10), checked with the real serde:
`tests/serde_check` (the seed's `ExecutorEvent` and the `noetl-events` crate's, built offline
against Debian's packaged crates) reads the NDJSON of `model_dump_json()`, `StdoutEventSink` and
`NatsEventSink`'s bytes for every envelope of the corpus below. Integer ids must parse in the
crate's struct (i64 ids), string ids in the seed's (string ids)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from projector import ExecutorEvent, StdoutEventSink
from projector.natsink import _envelope

CHECKER = Path(__file__).parent / "serde_check"
TRACES = Path(__file__).parent / "traces"
REGISTRY = Path("/usr/share/cargo/registry")
AT = "2026-11-30T12:00:00.123456789Z"
SNOWFLAKE = 386072706292305920


def _cargo() -> str | None:
    return shutil.which("cargo") or next(
        (p for p in (os.path.expanduser("~/.cargo/bin/cargo"),) if os.path.exists(p)), None
    )


@pytest.fixture(scope="session")
def serde_check() -> Path:
    """The checker binary, built once (cached in a temporary target directory)."""
    cargo = _cargo()
    if cargo is None:
        pytest.skip("cargo is not installed (CI installs it: apt-get install cargo)")
    if not (REGISTRY / "serde_json-1").exists() and not any(REGISTRY.glob("serde_json-*")):
        pytest.skip(
            f"Debian's Rust crates are not in {REGISTRY} (apt-get install librust-serde-json-dev "
            "librust-serde-derive-dev librust-chrono-dev)"
        )
    target = Path(tempfile.gettempdir()) / "noetl-projector-serde-check"
    done = subprocess.run(
        [cargo, "build", "--offline", "--release", "--quiet"],
        cwd=CHECKER,
        env={**os.environ, "CARGO_TARGET_DIR": str(target)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return target / "release" / "serde_check"


def check(binary: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(binary)], input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60, check=True
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def corpus() -> list[dict[str, Any]]:
    """Every producer spelling, integer and string ids, derived ids, unicode, nested context,
    no status."""
    base = {"event_type": "command.completed", "step": "fetch", "created_at": AT}
    return [
        {**base, "execution_id": SNOWFLAKE, "event_id": SNOWFLAKE + 1, "status": "COMPLETED"},
        {**base, "execution_id": 2**63 - 1, "event_id": -(2**63), "context": {"rows": 12}},
        {**base, "execution_id": SNOWFLAKE, "status": "RUNNING"},  # derived id
        {
            "execution_id": SNOWFLAKE,
            "name": "action.completed",
            "node_name": "notify",
            "payload": {"sent": True},
            "meta": {"source": "python"},
            "worker_id": "w1",
            "event_time": "2026-05-20 04:30:00.123456+00:00",
            "trace_id": "abc",
        },
        {
            "execution_id": SNOWFLAKE,
            "event_type": "step.exit",
            "node_id": "n1",
            "timestamp": "2026-01-20T11:56:27.292930",
            "status": None,
        },  # no status
        {**base, "execution_id": "exec-1", "event_id": "e-1", "status": "COMPLETED"},
        {**base, "execution_id": "exec-1"},  # string id, derived event id, no status
        {
            **base,
            "execution_id": "exec é.1",
            "event_id": "ü-1",
            "step": "шаг",
            "context": {"text": "héllo ✓ 😀", "sep": "a\u2028b", "quote": 'say "hi"\n'},
        },
        {
            **base,
            "execution_id": "exec-2",
            "event_id": "nested",
            "status": "ok",
            "context": {
                "result": {"rows": [{"id": 1, "tags": ["x", {"deep": [1.5, None, True]}]}]},
                "empty": {},
                "list": [],
                "big": 2**62,
            },
        },
        {**base, "execution_id": "exec-3", "context": "a string", "meta": {"k": [1]}},
    ]


async def written(event: ExecutorEvent) -> list[tuple[str, bytes]]:
    out = io.StringIO()
    await StdoutEventSink(out).emit(event)
    return [
        ("model_dump_json", event.model_dump_json().encode()),
        ("StdoutEventSink", out.getvalue().rstrip("\n").encode()),
        ("NatsEventSink", _envelope(event)),
    ]


async def test_the_project_writes_what_each_producers_struct_reads(serde_check: Path) -> None:
    cases: list[tuple[str, str, bytes]] = []
    for wire in corpus():
        event = ExecutorEvent.model_validate(wire)
        struct = "crate" if isinstance(wire["execution_id"], int) else "seed"
        for writer, line in await written(event):
            cases.append((struct, writer, line))
        for writer, line in await written(event.with_event_id()):  # a derived id filled in
            cases.append((struct, f"{writer} (derived id filled in)", line))
    results = check(serde_check, [line for _, _, line in cases])
    assert len(results) == len(cases)
    failures = [
        (struct, writer, line, result[struct])
        for (struct, writer, line), result in zip(cases, results, strict=True)
        if result[struct] is not None
    ]
    assert failures == []


def test_the_real_noetl_cli_output_parses_in_the_crate_struct_and_after_our_round_trip(
    serde_check: Path,
) -> None:
    lines = [
        line.encode()
        for name in ("noetl_cli_subscribe_ok.ndjson", "noetl_cli_subscribe_fail.ndjson")
        for line in (TRACES / name).read_text().splitlines()
        if line.strip()
    ]
    again = [ExecutorEvent.parse_json(line).model_dump_json().encode() for line in lines]
    results = check(serde_check, lines + again)
    assert [r["crate"] for r in results] == [None] * len(results)
