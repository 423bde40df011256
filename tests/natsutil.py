"""NATS fixtures and helpers for the tests of the JetStream path.

Server: PROJECTOR_TEST_NATS_URL; else the server on 127.0.0.1:4222 when it answers; else one
started for the session from the `nats-server` binary (JetStream on, storage in a temporary
directory); the tests are skipped, saying so, when there is no binary. Every test gets its own
stream, subject prefix and durable name (uuid suffix) and its stream is deleted afterwards, so test
runs sharing one server never meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest

from projector.envelope import ExecutorEvent
from projector.jetstream import ensure_stream

LOCAL_NATS = "nats://127.0.0.1:4222"


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _nats_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.path.exists(p)), None
    )


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a NATS server with JetStream (module docstring)."""
    explicit = os.environ.get("PROJECTOR_TEST_NATS_URL")
    if explicit:
        yield explicit
        return
    if _answers(LOCAL_NATS):
        yield LOCAL_NATS
        return
    binary = _nats_binary()
    if binary is None:
        pytest.skip("no NATS server on 127.0.0.1:4222 and no nats-server binary to start one")
    port = _free_port()
    with tempfile.TemporaryDirectory() as store:
        proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"nats://127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while not _answers(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{binary} did not start on port {port}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class Names:
    """One test's stream, subject prefix and durable consumer."""

    stream: str
    prefix: str
    durable: str


def unique_names() -> Names:
    """A stream, subject prefix and durable name no other test (or test run) uses."""
    suffix = uuid.uuid4().hex[:12]
    return Names(stream=f"T_{suffix}", prefix=f"t{suffix}.events", durable=f"d{suffix}")


@pytest.fixture
async def names(nats_url: str) -> AsyncIterator[Names]:
    """Unique names for this test; the stream is created, and deleted afterwards."""
    found = unique_names()
    nc = await nats.connect(nats_url)
    try:
        await ensure_stream(nc.jetstream(), found.stream, found.prefix)
        yield found
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(found.stream)
        await nc.close()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[Any]:
    """A JetStream context on its own connection, for setting up and checking."""
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def make_events(n: int, execution_id: str = "1001", start: int = 0) -> list[ExecutorEvent]:
    """`n` distinct events of one execution with ids ``e<start>`` .. (created a second apart)."""
    base = datetime.now(UTC).replace(microsecond=0)
    return [
        ExecutorEvent(
            execution_id=execution_id,
            event_id=f"e{i}",
            event_type="command.completed",
            step=f"step_{i % 7}",
            status="COMPLETED",
            created_at=base + timedelta(milliseconds=i),
            context={"i": i, "pad": "x" * 64},
        )
        for i in range(start, start + n)
    ]


def consume_argv(database_url: str, nats_url: str, names: Names, *extra: str) -> list[str]:
    """Command line of a `projector consume` subprocess for this test's names."""
    return [
        sys.executable,
        "-m",
        "projector",
        "--database-url",
        database_url,
        "consume",
        "--nats-url",
        nats_url,
        "--stream",
        names.stream,
        "--subject-prefix",
        names.prefix,
        "--durable",
        names.durable,
        *extra,
    ]


async def wait_for(predicate: Any, what: str, limit: float = 60.0) -> None:
    """Poll an async predicate until it holds; fail the test (never hang) after `limit` s."""

    deadline = time.monotonic() + limit
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
