"""``--log-format json``: one JSON object a line, credentials redacted, controls harmless."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from projector.cli import run
from projector.cli.safe import SafeFormatter
from projector.logs import JsonFormatter

HOSTILE = "step\x1b]0;owned\x07\u202e\nFAKE INFO line"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("projector.test", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_record_is_one_json_object_with_the_fields_and_extras() -> None:
    line = JsonFormatter().format(record("projected %d events", 7, lag_seconds=1.5, checkpoint=9))
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and doc["logger"] == "projector.test"
    assert doc["message"] == "projected 7 events"
    assert (doc["lag_seconds"], doc["checkpoint"]) == (1.5, 9)
    assert doc["time"].endswith("Z") and doc["time"][10] == "T"
    assert "args" not in doc and "msg" not in doc  # the record's own attributes stay out


def test_through_the_safe_formatter_it_stays_json_redacted_and_harmless() -> None:
    url = 'postgresql://app:s3cr3t-pw@db/noetl password="quoted secret"'
    formatter = SafeFormatter(JsonFormatter())
    line = formatter.format(record("cannot connect to %s for %s", url, HOSTILE, step=HOSTILE))
    assert "\n" not in line and line.isascii()
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
    doc = json.loads(line)
    assert "s3cr3t-pw" not in line and "quoted secret" not in line
    assert "postgresql://app:***@db/noetl password=***" in doc["message"]
    assert doc["step"] == HOSTILE  # the same text, as JSON escapes only


def test_an_exception_comes_with_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "projector.x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    doc = json.loads(JsonFormatter().format(failed))
    assert doc["exception"].startswith("Traceback") and "ValueError: boom" in doc["exception"]


def test_projector_log_format_json_from_the_environment(database_url: str) -> None:
    env = {**os.environ, "PROJECTOR_LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "projector", "--database-url", database_url, "project", "--once"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stderr.splitlines()]
    assert [d["message"] for d in docs][-1] == "projected 0 events"
    assert docs[0]["logger"] == "projector.project" and "checkpoint" in docs[0]
    assert done.stdout == "projected 0 events\n"


def test_a_bad_log_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--log-format", "xml", "executions"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
