"""The reader finds every envelope of every input shape, exactly, with its position (issue 10)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector import ExecutorEvent
from projector.envelope import ParsedRaw
from projector.ingest import read_items
from projector.jsonstream import MAX_ITEM_BYTES, PREFIX_BYTES, pieces, split


def stream(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


def found(data: bytes) -> list[tuple[str, bytes, str | None]]:
    return [(str(p.position), p.raw, p.problem) for p in pieces(stream(data))]


def envelope(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "execution_id": 7,
        "event_id": i,
        "event_type": "step.enter",
        "step": f"s{i}",
        "created_at": "2026-01-20T11:56:27.292930",
        **extra,
    }


ROWS = [envelope(1), envelope(2, context={"a": [1, {"b": ']}\\"'}]})]


def test_ndjson_lines_keep_their_line_numbers() -> None:
    data = b"\n" + json.dumps(ROWS[0]).encode() + b"\n\nnot json\n" + json.dumps(ROWS[1]).encode()
    assert [(w, problem) for w, _, problem in found(data)] == [
        ("line 2", None),
        ("line 4", None),
        ("line 5", None),
    ]


@pytest.mark.parametrize(
    "document",
    [
        json.dumps(ROWS),  # a bare array on one line
        json.dumps(ROWS, indent=2),  # pretty-printed
        json.dumps({"error": None, "result": ROWS, "status": "ok"}, indent=2),  # noetl API export
        json.dumps({"error": None, "result": ROWS, "status": "ok"}),  # the same, one line
        json.dumps({"events": ROWS}, indent=1),  # upstream notification
        "\ufeff" + json.dumps(ROWS, indent=2),  # with a byte-order mark
    ],
)
def test_documents_give_their_elements_exactly(document: str) -> None:
    items = list(pieces(stream(document.encode("utf-8"))))
    assert [json.loads(p.raw) for p in items] == ROWS
    assert all(p.problem is None for p in items)
    if document.lstrip("\ufeff").startswith("[") or "\n" in document:
        assert [str(p.position) for p in items] == ["element 1", "element 2"]


def test_wrapper_lines_and_single_event_wrappers() -> None:
    data = (json.dumps({"event": ROWS[0]}) + "\n" + json.dumps({"events": ROWS}) + "\n").encode()
    items = list(pieces(stream(data)))
    assert [(str(p.position), p.wrapped) for p in items] == [
        ("line 1", (1, 1)),
        ("line 2", (1, 2)),
        ("line 2", (2, 2)),
    ]
    assert [json.loads(p.raw) for p in items] == [ROWS[0], *ROWS]


def test_pretty_printed_envelopes_one_after_another_are_at_their_lines() -> None:
    data = (json.dumps(ROWS[0], indent=2) + "\n" + json.dumps(ROWS[1], indent=2)).encode()
    items = list(pieces(stream(data)))
    assert [json.loads(p.raw) for p in items] == ROWS
    assert str(items[0].position) == "line 1" and items[1].position.kind == "line"


def test_an_envelope_with_a_result_field_is_not_a_wrapper() -> None:
    row = {"event_type": "call.done", "result": [1, 2], "execution_id": 1}
    assert split(json.dumps(row).encode()) is None
    assert split(json.dumps({"result": [row]}).encode()) == [json.dumps(row).encode()]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'[{"a": 1}, {"b": ', "the input ends inside element 2"),
        (b'[{"a": 1} {"b": 2}]', "not JSON after an element"),
        (b'[{"a": 1}, {"b": 2}', "the input ends inside an array"),
    ],
)
def test_a_broken_document_ends_with_one_rejection(data: bytes, problem: str) -> None:
    items = found(data)
    assert items[0] == ("element 1", b'{"a": 1}', None)
    assert len([i for i in items if i[2]]) == 1 and problem in (items[-1][2] or "")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=6), st.sampled_from([None, 0, 2]), st.booleans())
def test_array_elements_are_what_json_reads(
    elements: list[Any], indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(elements, indent=indent, ensure_ascii=ascii_only)
    items = list(pieces(stream(text.encode("utf-8", "surrogatepass"))))
    assert [json.loads(p.raw) for p in items] == elements
    assert [str(p.position) for p in items] == [f"element {n}" for n in range(1, len(elements) + 1)]


def test_duplicate_keys_in_an_element_are_rejected_at_its_element() -> None:
    data = (
        b'[{"execution_id": 1, "execution_id": 2, "event_type": "t",'
        b' "created_at": "2026-01-20T11:56:27"}]'
    )
    (item,) = read_items(stream(data), "f.json")
    assert item.position == 1 and bytes(item.raw) == data[1:-1]
    with pytest.raises(ValueError, match="duplicate key 'execution_id'"):
        ExecutorEvent.parse_json(item.raw)


def test_rows_without_ids_are_numbered_by_occurrence_within_the_source() -> None:
    row = json.dumps({k: v for k, v in envelope(0).items() if k != "event_id"}).encode()
    items = list(read_items(stream(row + b"\n" + row + b"\n" + row + b"\n"), "f"))
    ids = [ExecutorEvent.parse_json(i.raw).event_id for i in items]
    assert len(set(ids)) == 3
    assert ids[0] == ExecutorEvent.parse_json(row).resolved_event_id()
    again = [ExecutorEvent.parse_json(i.raw).event_id for i in read_items(stream(row * 1), "f")]
    assert again == ids[:1]


def test_oversized_items_are_rejected_with_their_length_and_a_prefix() -> None:
    big = b'{"event_type": "t", "context": "' + b"x" * (MAX_ITEM_BYTES + 10) + b'"}'
    small = json.dumps(envelope(1)).encode()
    for data, where in (
        (small + b"\n" + big + b"\n" + small, "line 2"),
        (b"[" + small + b"," + big + b"," + small + b"]", "element 2"),
    ):
        items = list(pieces(stream(data)))
        assert [str(p.position) for p in items][1] == where
        assert items[1].problem is not None and f"{len(big)} bytes" in items[1].problem
        assert items[1].raw == big[:PREFIX_BYTES]
        assert items[0].raw == items[2].raw == small  # its neighbours are read


def test_reader_rejections_reach_the_sink_with_their_reason() -> None:
    data = b'{"event_type": "t", "created_at": "2026-01-20T11:56:27", "execution_id": "a"}\n'
    (item,) = read_items(stream(data), "f", execution_id="b")
    assert type(item.raw) is ParsedRaw and item.raw.event is None
    with pytest.raises(ValueError, match="execution_id 'a' is not the expected 'b'"):
        ExecutorEvent.parse_json(item.raw)
