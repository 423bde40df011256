"""The sink's raw path (`batch.encode_raw`: rows built from the canonical form's field values,
without the envelope) against the path it replaced (`encode(i, ExecutorEvent.parse_json(raw))`):
the same COPY rows, content hashes, keys and rejections (position, source, reason, kept input)
for the serde interop corpus as each writer writes it, the hostile corpus, the real traces and
random envelopes in every spelling."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector import ExecutorEvent, StdoutEventSink, batch
from projector.batch import RawEnvelope, encode, prepare
from projector.natsink import _envelope
from tests.hostile import CASES
from tests.test_envelope_parse import _spellings, envelopes, json_values
from tests.test_serde_interop import corpus

TRACES = Path(__file__).parent / "traces"


def _old_encode_raw(index: int, raw: bytes) -> batch.Pending:
    return encode(index, ExecutorEvent.parse_json(raw))


def _prepared(raws: list[bytes], old: bool) -> tuple[list[Any], list[Any]]:
    items = [RawEnvelope(raw, "nats:events.x", 100 + n) for n, raw in enumerate(raws)]
    pending: list[batch.Pending] = []
    rejects: list[batch.RejectedItem] = []
    with pytest.MonkeyPatch.context() as mp:
        if old:
            mp.setattr(batch, "encode_raw", _old_encode_raw)
        batch.prepare(items, "nats:STREAM", pending, rejects, 0, None, 7)
    rows = [
        (
            p.index,
            p.key,
            tuple(type(k) for k in p.key),
            p.content_hash,
            p.row,
            tuple(type(v) for v in p.row),
            p.envelope(),
            p.envelope().model_fields_set,
        )
        for p in pending
    ]
    rejections = [(r.index, r.raw, r.source, r.line, r.reason, r.columns()) for r in rejects]
    return rows, rejections


def assert_same(raws: list[bytes]) -> tuple[list[Any], list[Any]]:
    new = _prepared(raws, old=False)
    assert new == _prepared(raws, old=True)
    return new


def _orjson_spelling(raw: bytes) -> list[bytes]:
    """`raw`, and orjson's serialisation of what it holds when orjson can read and write it
    (the form the raw path reads without the envelope)."""
    out = [raw]
    with contextlib.suppress(orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        out.append(orjson.dumps(orjson.loads(raw)))
    return out


async def _interop_lines() -> list[bytes]:
    lines: list[bytes] = []
    for wire in corpus():
        lines.append(json.dumps(wire).encode())
        event = ExecutorEvent.model_validate(wire)
        for e in (event, event.with_event_id()):
            out = io.StringIO()
            await StdoutEventSink(out).emit(e)
            lines += [
                e.model_dump_json().encode(),
                out.getvalue().rstrip("\n").encode(),
                _envelope(e),
            ]
    return lines


async def test_the_interop_corpus_gives_the_same_rows_either_way() -> None:
    lines = await _interop_lines()
    rows, rejections = assert_same(lines)
    assert len(rows) == len(lines) and not rejections
    # What NatsEventSink writes with an event id is stored without building the envelope.
    raw_built = [r for r in rows if isinstance(_prepared_event(lines, r[0]), bytes)]
    assert raw_built, "the raw path was never taken"


def _prepared_event(lines: list[bytes], index: int) -> object:
    pending: list[batch.Pending] = []
    prepare([RawEnvelope(lines[index], "s", 1)], "s", pending, [])
    return pending[0].event if pending else None


def test_the_hostile_corpus_gives_the_same_rows_and_rejections_either_way() -> None:
    raws = [spelling for case in CASES for spelling in _orjson_spelling(case.raw)]
    rows, rejections = assert_same(raws)
    assert rows and rejections


@pytest.mark.parametrize("trace", sorted(p.name for p in TRACES.glob("*.ndjson")))
def test_the_traces_give_the_same_rows_either_way(trace: str) -> None:
    lines = [line for line in (TRACES / trace).read_bytes().splitlines() if line.strip()]
    assert_same([spelling for line in lines for spelling in _orjson_spelling(line)])


def test_what_the_nats_sink_writes_is_built_without_the_envelope() -> None:
    event = ExecutorEvent.model_validate(
        {
            "execution_id": 386072706292305920,
            "event_id": "e-1",
            "event_type": "command.completed",
            "created_at": "2026-11-30T12:00:00.123456Z",
            "context": {"rows": 1},
        }
    )
    raw = _envelope(event)
    pending: list[batch.Pending] = []
    prepare([RawEnvelope(raw, "s", 1)], "s", pending, [])
    assert pending[0].event == raw and type(pending[0].event) is bytes
    assert pending[0].envelope() == event
    assert pending[0].row == encode(0, event).row
    assert pending[0].created_at == event.created_at


@settings(max_examples=300, deadline=None)
@given(envelopes)
def test_random_envelopes_give_the_same_rows_and_rejections_either_way(d: dict[str, Any]) -> None:
    raws = [spelling for raw in _spellings(d) for spelling in _orjson_spelling(raw)]
    assert_same(raws)


# Envelopes in the canonical form with an event id, mostly valid (what the raw path reads), now
# and then with a field the full path must reject or read otherwise.
def _mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, valid, odd)


_texts = _mostly(
    st.sampled_from(["a", "step-1", "é", "NaN", "null", "RUNNING", "😀"]),
    st.sampled_from(["", " ", "\x00"]) | st.text(max_size=4),
)
_ids = _mostly(
    st.sampled_from(["e", "exec-1", "ü-1"]) | st.integers(min_value=0, max_value=2**63),
    st.sampled_from(["", " ", True, None, 1.5, 2**64, -(2**64)]),
)
_times = _mostly(
    st.datetimes(min_value=datetime(1000, 1, 1)).map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.sampled_from(
        [
            "2026-02-30T12:00:00.123456Z",  # no such day
            "2026-11-30T12:00:00Z",
            "2026-11-30T12:00:00.123456+00:00",
            "2026-11-30 12:00:00.123456Z",
            "20261130",
        ]
    ),
)
canonical_envelopes = st.fixed_dictionaries(
    {"execution_id": _ids, "event_id": _ids, "event_type": _texts, "created_at": _times},
    optional={
        "step": _mostly(_texts | st.none(), st.integers()),
        "status": _texts | st.none(),
        "context": json_values,
        "worker_id": _texts | st.none(),
        "meta": _mostly(st.none() | st.dictionaries(_texts, json_values, max_size=2), _texts),
    },
)


@settings(max_examples=500, deadline=None)
@given(st.lists(canonical_envelopes, min_size=1, max_size=4))
def test_random_canonical_envelopes_give_the_same_rows_and_rejections_either_way(
    ds: list[dict[str, Any]],
) -> None:
    raws = []
    for d in ds:
        with contextlib.suppress(TypeError, orjson.JSONEncodeError):
            raws.append(orjson.dumps(d))
        raws.append(json.dumps(d, allow_nan=True).encode("utf-8", "surrogatepass"))
    assert_same(raws)
