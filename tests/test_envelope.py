"""The envelope model: every producer spelling, its rejections, and the wire round trip."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from projector import ExecutorEvent
from projector.envelope import UNKNOWN_FIELDS_KEY
from projector.pgsink import describe_validation_error
from projector.sinks import envelope_bytes

SEED_JSON = (
    '{"execution_id":"exec_test","event_type":"batch.completed","step":"start",'
    '"status":"COMPLETED","created_at":"2026-01-20T11:56:27.292930123Z",'
    '"context":{"processing_ms":12.3}}'
)
SNOWFLAKE = 7288213371283718145  # > 2**53: a float would round it


def reason(raw: object) -> str:
    with pytest.raises(ValidationError) as info:
        if isinstance(raw, str | bytes):
            ExecutorEvent.model_validate_json(raw)
        else:
            ExecutorEvent.model_validate(raw)
    return describe_validation_error(info.value)


def test_seed_json_is_read_exactly() -> None:
    ev = ExecutorEvent.model_validate_json(SEED_JSON)
    assert ev.execution_id == "exec_test"
    assert ev.event_type == "batch.completed"
    assert ev.step == "start"
    assert ev.status == "COMPLETED"
    # nanoseconds are truncated to PostgreSQL's microseconds, the zone is UTC
    assert ev.created_at == datetime(2026, 1, 20, 11, 56, 27, 292930, tzinfo=UTC)
    assert ev.context == {"processing_ms": 12.3}
    assert ev.event_id is None and ev.worker_id is None and ev.meta is None


def test_round_trip_gives_json_the_rust_struct_reads() -> None:
    ev = ExecutorEvent.model_validate_json(SEED_JSON)
    out = json.loads(ev.model_dump_json())
    # Same field names as the serde struct; absent optional fields are omitted, not null.
    assert set(out) == {"execution_id", "event_type", "step", "status", "created_at", "context"}
    assert out["created_at"] == "2026-01-20T11:56:27.292930Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", out["created_at"])
    assert ExecutorEvent.model_validate_json(ev.model_dump_json()) == ev


def test_later_crate_integer_ids_and_payload_alias() -> None:
    ev = ExecutorEvent.model_validate_json(
        json.dumps(
            {
                "execution_id": SNOWFLAKE,
                "event_id": SNOWFLAKE + 1,
                "event_type": "command.started",
                "step": "fetch",
                "status": "STARTED",
                "created_at": "2026-01-20T11:56:27Z",
                "payload": {"attempt": 2},
                "worker_id": "w-1",
                "meta": {"host": "a"},
            }
        )
    )
    assert ev.execution_id == "7288213371283718145"
    assert ev.event_id == "7288213371283718146"
    assert ev.context == {"attempt": 2}
    assert ev.worker_id == "w-1"
    assert ev.meta == {"host": "a"}


def test_python_report_event_spelling() -> None:
    ev = ExecutorEvent.model_validate(
        {
            "execution_id": str(SNOWFLAKE),
            "name": "call.done",
            "node_name": "load",
            "payload": {"rows": 3},
            "meta": {"k": 1},
            "worker_id": "py",
            "created_at": "2026-01-20T11:56:27.292930",
        }
    )
    assert (ev.event_type, ev.step, ev.context, ev.status) == (
        "call.done",
        "load",
        {"rows": 3},
        None,
    )
    assert ev.created_at.tzinfo is not None and ev.created_at.utcoffset() == UTC.utcoffset(None)
    by_node_id = ExecutorEvent.model_validate(
        {"execution_id": 1, "name": "x", "node_id": "n1", "created_at": "2026-01-01T00:00:00Z"}
    )
    assert by_node_id.step == "n1"


def test_naive_is_utc_and_offsets_are_converted() -> None:
    naive = ExecutorEvent.model_validate(
        {"execution_id": "e", "event_type": "t", "created_at": "2026-01-20T11:56:27.292930"}
    )
    offset = ExecutorEvent.model_validate(
        {"execution_id": "e", "event_type": "t", "created_at": "2026-01-20T13:56:27.292930+02:00"}
    )
    assert naive.created_at == offset.created_at
    assert offset.created_at.utcoffset() is not None
    assert offset.model_dump()["created_at"] == "2026-01-20T11:56:27.292930Z"


def test_unknown_fields_are_kept_in_meta() -> None:
    ev = ExecutorEvent.model_validate(
        {
            "execution_id": "e",
            "event_type": "t",
            "created_at": "2026-01-01T00:00:00Z",
            "meta": {"a": 1},
            "trace_id": "abc",
            "node_id": "shadowed",  # loses to `step`, still kept
            "step": "s",
        }
    )
    assert ev.step == "s"
    assert ev.meta == {"a": 1, UNKNOWN_FIELDS_KEY: {"trace_id": "abc", "node_id": "shadowed"}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"event_type": "t", "created_at": "2026-01-01T00:00:00Z"}, "execution_id is required"),
        ({"execution_id": "", "event_type": "t", "created_at": "2026-01-01T00:00:00Z"}, "empty"),
        ({"execution_id": 1.5, "event_type": "t", "created_at": "2026-01-01T00:00:00Z"}, "float"),
        ({"execution_id": True, "event_type": "t", "created_at": "2026-01-01T00:00:00Z"}, "bool"),
        ({"execution_id": "e", "event_id": 2.0, "event_type": "t", "created_at": "2026"}, "float"),
        ({"execution_id": "e", "created_at": "2026-01-01T00:00:00Z"}, "event_type"),
        ({"execution_id": "e", "event_type": " ", "created_at": "2026-01-01T00:00:00Z"}, "empty"),
        ({"execution_id": "e", "event_type": "t"}, "created_at"),
        ({"execution_id": "e", "event_type": "t", "created_at": "yesterday"}, "created_at"),
        ({"execution_id": "e", "event_type": "t", "created_at": 1700000000}, "RFC 3339"),
        (
            {"execution_id": "e", "event_type": "t", "created_at": "2026-01-01T00:00Z", "meta": []},
            "meta",
        ),
        (
            {"execution_id": "e", "event_type": "t", "created_at": "2026-01-01T00:00Z", "step": 3},
            "step",
        ),
        (
            {
                "execution_id": "e",
                "event_type": "t",
                "created_at": "2026-01-01T00:00:00Z",
                "context": {"x": "a\u0000b"},
            },
            "context.x contains a NUL",
        ),
        (
            '{"execution_id":"e","event_type":"t","created_at":"2026-01-01T00:00:00Z",'
            '"context":{"x":"\\ud800"}}',
            "Invalid JSON",
        ),
        (
            {
                "execution_id": "e",
                "event_type": "t",
                "created_at": "2026-01-01T00:00:00Z",
                "step": "\ud800",
            },
            "step contains a lone surrogate",
        ),
        ("[1, 2]", "JSON object"),
        ("{not json", "JSON"),
    ],
)
def test_rejections_say_why(raw: object, expected: str) -> None:
    assert expected in reason(raw)


def test_non_finite_and_non_json_context_is_rejected() -> None:
    base = {"execution_id": "e", "event_type": "t", "created_at": "2026-01-01T00:00:00Z"}
    assert "nan" in reason({**base, "context": {"v": float("nan")}})
    assert "not JSON" in reason({**base, "context": {"v": {1, 2}}})
    assert "non-string key" in reason({**base, "context": {1: "a"}})


def test_derived_event_id_is_deterministic_and_content_sensitive() -> None:
    a = ExecutorEvent.model_validate_json(SEED_JSON)
    b = ExecutorEvent.model_validate_json(SEED_JSON)
    assert a.resolved_event_id() == b.resolved_event_id()
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", a.resolved_event_id())
    changed = a.model_copy(update={"context": {"processing_ms": 12.4}})
    assert changed.resolved_event_id() != a.resolved_event_id()
    # The documented rule, recomputed independently.
    import hashlib

    canonical = json.dumps(
        {
            "context": {"processing_ms": 12.3},
            "created_at": "2026-01-20T11:56:27.292930Z",
            "event_type": "batch.completed",
            "execution_id": "exec_test",
            "meta": None,
            "status": "COMPLETED",
            "step": "start",
            "worker_id": None,
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    assert a.resolved_event_id() == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
    explicit = a.model_copy(update={"event_id": "42"})
    assert explicit.resolved_event_id() == "42"


def test_wire_bytes_leave_a_derived_id_out_and_the_reader_derives_it_again() -> None:
    ev = ExecutorEvent.model_validate_json(SEED_JSON)
    out = json.loads(envelope_bytes(ev))
    assert "event_id" not in out
    again = ExecutorEvent.parse_json(envelope_bytes(ev))
    assert again == ev and again.resolved_event_id() == ev.resolved_event_id()
