"""The real noetl CLI (PyPI `noetl`, the Rust binary on the `noetl-events` crate) as a producer
(issue 10): `noetl subscribe SPEC --events FILE --once` over a stream on the test's NATS server,
one playbook that succeeds and one whose shell step exits 3; its trail goes through
`projector ingest`, and the statuses are what `tests/traces/README.md` says of the
`noetl_cli_subscribe_*.ndjson` traces the same CLI wrote."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api

from projector.cli import run
from projector.jetstream import ensure_stream
from tests.natsutil import unique_names

pytestmark = pytest.mark.nats

ERROR = "Command failed with exit code: Some(3)"
PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: {name}
workflow:
  - step: start
    next:
      - step: work
  - step: work
    tool:
      kind: shell
      cmds:
        - {command}
"""
SUBSCRIPTION = """\
apiVersion: noetl.io/v1
kind: Subscription
metadata:
  name: {name}
spec:
  source: nats
  url: {url}
  stream: {stream}
  consumer: {consumer}
  runtime:
    batch: 10
    timeout_ms: 1000
  dispatch:
    playbook: ./{name}.yaml
    payload_from: message.json
    execution_pool: local
"""


def _noetl() -> str:
    found = shutil.which("noetl", path=str(Path(sys.executable).parent)) or shutil.which("noetl")
    if found is None:
        pytest.skip("the noetl CLI is not installed (pip install -e '.[test]' brings it)")
    return found


async def _prepare(nats_url: str, stream: str, prefix: str, durable: str) -> None:
    """A stream with two messages and the listener's durable consumer."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream, prefix)
        await js.add_consumer(
            stream, api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT)
        )
        for order in (1, 2):
            await js.publish(f"{prefix}.orders", json.dumps({"order_id": order}).encode())
    finally:
        await nc.close()


async def _delete(nats_url: str, stream: str) -> None:
    nc = await nats.connect(nats_url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_stream(stream)
    await nc.close()


def subscribe_trail(tmp_path: Path, nats_url: str, name: str, command: str) -> list[dict[str, Any]]:
    """Publish two messages, run the listener over them once, and return its trail."""
    names = unique_names()
    asyncio.run(_prepare(nats_url, names.stream, names.prefix, names.durable))
    try:
        return _run_listener(tmp_path, nats_url, names.stream, names.durable, name, command)
    finally:
        asyncio.run(_delete(nats_url, names.stream))


def _run_listener(
    tmp_path: Path, nats_url: str, stream: str, consumer: str, name: str, command: str
) -> list[dict[str, Any]]:
    (tmp_path / f"{name}.yaml").write_text(PLAYBOOK.format(name=name, command=command))
    spec = tmp_path / "subscription.yaml"
    spec.write_text(SUBSCRIPTION.format(name=name, url=nats_url, stream=stream, consumer=consumer))
    trail = tmp_path / "trail.jsonl"
    done = subprocess.run(
        [_noetl(), "subscribe", str(spec), "--events", str(trail), "--once"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in trail.read_text().splitlines() if line.strip()]


def status_of(database_url: str, execution_id: int, capsys: pytest.CaptureFixture[str]) -> Any:
    assert run(["--database-url", database_url, "status", str(execution_id), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def ingest(database_url: str, path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    assert run(["--database-url", database_url, "ingest", str(path), "--json"]) == 0
    counts: dict[str, int] = json.loads(capsys.readouterr().out)
    return counts


def shape(trail: list[dict[str, Any]]) -> tuple[int, list[int], list[str]]:
    """The listener, its children, and the lifecycle statuses, as the trail says."""
    listener = trail[0]["execution_id"]
    children = sorted({e["execution_id"] for e in trail} - {listener})
    lifecycle = [e["status"] for e in trail if e["event_type"] == "subscription.lifecycle"]
    return listener, children, lifecycle


@pytest.mark.parametrize(("outcome", "command"), [("ok", "echo ok"), ("fail", "exit 3")])
def test_the_trail_of_the_real_cli_is_stored_as_it_wrote_it(
    tmp_path: Path,
    nats_url: str,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    outcome: str,
    command: str,
) -> None:
    trail = subscribe_trail(tmp_path, nats_url, f"pb_{outcome}", command)
    _listener, children, lifecycle = shape(trail)
    assert lifecycle == ["REGISTERED", "ACTIVE", "DRAINING", "DEACTIVATED"]
    assert len(children) == 2 and all(isinstance(e["execution_id"], int) for e in trail)
    ends = [e for e in trail if e["event_type"] in ("playbook.completed", "playbook.failed")]
    assert [e["event_type"] for e in ends] == [
        f"playbook.{'completed' if outcome == 'ok' else 'failed'}"
    ] * 2
    if outcome == "fail":
        assert [e["context"]["error"] for e in ends] == [ERROR, ERROR]
    counts = ingest(database_url, tmp_path / "trail.jsonl", capsys)
    assert (counts["inserted"], counts["rejected"]) == (len(trail), 0)
    assert ingest(database_url, tmp_path / "trail.jsonl", capsys)["duplicates"] == len(trail)
    for child in children:
        status = status_of(database_url, child, capsys)
        assert status["status"] == ("COMPLETED" if outcome == "ok" else "FAILED")
        assert status["steps"] == []
        if outcome == "fail":
            history = run(["--database-url", database_url, "history", str(child), "--json"])
            assert history == 0 and ERROR in capsys.readouterr().out


def test_statuses_are_what_the_traces_readme_says(
    tmp_path: Path,
    nats_url: str,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trail = subscribe_trail(tmp_path, nats_url, "pb_fail", "exit 3")
    listener, children, _ = shape(trail)
    ingest(database_url, tmp_path / "trail.jsonl", capsys)
    for child in children:
        status = status_of(database_url, child, capsys)
        assert (status["status"], status["steps"], status.get("error")) == ("FAILED", [], ERROR)
        assert status.get("parent_execution_id") in (listener, str(listener))
    status = status_of(database_url, listener, capsys)
    assert (status["status"], status["steps"]) == ("COMPLETED", [])
