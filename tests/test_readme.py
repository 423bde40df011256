"""Every code block of the README runs as written.

Python blocks run as scripts, each against a database of its own that holds the samples `projector
demo` stores (``PROJECTOR_DATABASE_URL`` names it); a block that uses NATS gets the test NATS
server and a stream of its own (``PROJECTOR_NATS_URL``, ``_STREAM``, ``_SUBJECT_PREFIX``). A
``text`` block after a Python block in the same section is its expected output. SQL blocks run
against the same sample data.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.eventlog import INSERT, rows
from tests.natsutil import Names
from tests.test_readmodel import samples

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
_HEADING = re.compile(r"^#{2,} (.+)$", re.M)


@dataclass(frozen=True)
class Block:
    language: str
    section: str
    code: str
    #: The ``text`` block that follows a Python block in its section, if any.
    output: str | None = None


def blocks(text: str) -> list[Block]:
    """The README's code blocks, each with its section and (Python) its expected output."""
    found: list[Block] = []
    for match in _FENCE.finditer(text):
        headings = _HEADING.findall(text, 0, match.start())
        section = headings[-1] if headings else ""
        language, code = match.group(1), match.group(2)
        last = found[-1] if found else None
        if (
            language == "text"
            and last is not None
            and (last.language, last.section, last.output) == ("python", section, None)
        ):
            found[-1] = Block(last.language, last.section, last.code, code)
            continue
        found.append(Block(language, section, code))
    return found


README_BLOCKS = blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in README_BLOCKS if b.language == "python"]
#: The section whose shell block repairs a restored dump (run whole, below).
RESTORE = "Restoring a dump"
#: SQL in the shell blocks: `projector psql -c "..."` (the quickstart's SQL on the demo data).
_PSQL_C = re.compile(r'projector psql -c "([^"]+)"')
#: (The Roles block creates login users: tests/test_roles.py runs it, on a server of its own.)
SQL = [b for b in README_BLOCKS if b.language == "sql" and b.section != "Roles"] + [
    Block("sql", b.section, sql)
    for b in README_BLOCKS
    if b.language == "bash" and b.section != RESTORE
    for sql in _PSQL_C.findall(b.code)
]


def test_the_readme_has_the_blocks_this_file_runs() -> None:
    assert [b.section for b in PYTHON] == [
        "The durable sink (Python)",
        "Workers on NATS",
        "Reading status from Python",
    ]
    assert PYTHON[2].output is not None
    assert [b.section for b in SQL] == ["Storage: `noetl.event`", "Step status", "Quickstart"]


def load_samples(url: str) -> None:
    """What `projector demo` stores: the bundled sample executions."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.cursor().executemany(INSERT, rows(samples()))


async def run_block(block: Block, tmp_path: Path, env: dict[str, str]) -> str:
    """Run `block` as a script; return what it printed (checked against its output block)."""
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={**os.environ, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    if block.output is not None:
        assert out.decode() == block.output
    return out.decode()


async def _after_the_sink_block(stdout: str, database_url: str) -> None:
    """It prints the counts of its batch: two stored, one rejected with its reason."""
    assert stdout.startswith("2 0 0 [] [Rejection(position=2, reason=")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT execution_id, step, event_type FROM noetl.event")
        stored = await cur.fetchall()
        cur = await conn.execute("SELECT source FROM noetl.event_rejected")
        rejected = await cur.fetchall()
    assert ("42", "load", "step.enter") in stored and ("run-2", "fetch", "step.exit") in stored
    assert ("7288213371283718001", "fetch", "step.enter") in stored
    assert rejected == [("example",)]


#: What else must hold after a block ran, by section.
AFTER: dict[str, Callable[[str, str], Awaitable[None]]] = {
    "The durable sink (Python)": _after_the_sink_block,
}
NATS_BLOCKS = [b for b in PYTHON if "NatsEventSink" in b.code]
DB_BLOCKS = [b for b in PYTHON if b not in NATS_BLOCKS]


@pytest.mark.parametrize("block", DB_BLOCKS, ids=[b.section for b in DB_BLOCKS])
async def test_every_python_block_runs_as_written(
    block: Block, database_url: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(load_samples, database_url)
    out = await run_block(block, tmp_path, {"PROJECTOR_DATABASE_URL": database_url})
    if block.section in AFTER:
        await AFTER[block.section](out, database_url)


@pytest.mark.nats
@pytest.mark.parametrize("block", NATS_BLOCKS, ids=[b.section for b in NATS_BLOCKS])
async def test_every_nats_block_runs_as_written(
    block: Block, tmp_path: Path, nats_url: str, names: Names, js: Any
) -> None:
    env = {
        "PROJECTOR_NATS_URL": nats_url,
        "PROJECTOR_NATS_STREAM": names.stream,
        "PROJECTOR_NATS_SUBJECT_PREFIX": names.prefix,
    }
    await run_block(block, tmp_path, env)
    info = await js.stream_info(names.stream)
    assert info.state.messages == 1  # what the block emitted


@pytest.mark.parametrize("block", SQL, ids=[f"{b.section}-{i}" for i, b in enumerate(SQL)])
def test_every_sql_block_runs_on_the_demo_data(block: Block, database_url: str) -> None:
    load_samples(database_url)
    with psycopg.connect(database_url) as conn:
        for statement in (s.strip() for s in block.code.split(";")):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if lines:
                assert conn.execute("\n".join(lines)).fetchall()  # type: ignore[arg-type]


def test_the_restore_block_brings_back_events_stored_below_a_restored_checkpoint(
    database_url: str,
) -> None:
    """After a restore into another cluster the checkpoint may lie above the new cluster's ids:
    events stored then are neither projected nor shown, until the README's block ran."""
    (block,) = [b for b in README_BLOCKS if b.section == RESTORE and b.language == "bash"]
    load_samples(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO noetl.projector_checkpoint (name, position) "
            "VALUES ('default', (pg_current_xact_id()::text::bigint + 1000000)::text::xid8)"
        )
        # New in this cluster (below the restored checkpoint), and restored from the old one
        # (above every id this cluster has handed out).
        conn.execute(
            "INSERT INTO noetl.event (execution_id, event_id, event_type, step, status, "
            "created_at) VALUES ('restored', '1', 'step.exit', 'only', 'COMPLETED', now())"
        )
        conn.execute(
            "INSERT INTO noetl.event (execution_id, event_id, event_type, step, status, "
            "created_at, txid) VALUES ('old', '1', 'step.exit', 'first', 'COMPLETED', now(), "
            "(pg_current_xact_id()::text::bigint + 2000000)::text::xid8)"
        )
        hidden = "SELECT count(*) FROM noetl.step_status WHERE execution_id = 'restored'"
        assert conn.execute(hidden).fetchone() == (0,)  # the harm the block repairs
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PROJECTOR_DATABASE_URL": database_url,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", "-euc", block.code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute(hidden).fetchone() == (1,)
        state = "SELECT execution_id, status FROM noetl.step_state ORDER BY 1"
        states = conn.execute(state).fetchall()
        assert ("restored", "COMPLETED") in states and ("old", "COMPLETED") in states
        # Nothing is left above the checkpoint: the views read it all from the state tables.
        assert conn.execute("SELECT count(*) FROM noetl.unprojected_executions()").fetchone() == (
            0,
        )
