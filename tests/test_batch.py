"""projector.batch without a database (rows, hashes, prepare, classify), and one property with it:
the in-process jsonb equality agrees with PostgreSQL's `jsonb =`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from projector.batch import (
    COPY_COLUMNS,
    COPY_TYPES,
    REJECTED_PREFIX_BYTES,
    BatchResult,
    Outcome,
    Outcomes,
    Pending,
    RawEnvelope,
    RejectedItem,
    Rejection,
    StoredRow,
    _json_bytes,
    classify,
    compare_values,
    content_hash,
    encode,
    first_occurrences,
    fresh,
    jsonb_equal,
    prepare,
    same_content,
    storable_text,
    triage,
    windows,
)
from projector.envelope import ENVELOPE_FIELDS, ExecutorEvent
from projector.queries import query
from tests.factories import T0, event, events

# -- rows and hashes -----------------------------------------------------------------------------


def test_the_copy_row_follows_the_copy_statement() -> None:
    """COPY_COLUMNS, COPY_TYPES, the `sink.copy` statement and the rows encode builds agree."""
    listed = re.search(r"COPY noetl\.event \(([^)]*)\)", query("sink.copy"))
    assert listed is not None
    assert tuple(c.strip() for c in listed.group(1).split(",")) == COPY_COLUMNS
    assert (*ENVELOPE_FIELDS, "content_hash") == COPY_COLUMNS
    e = event(event_id="7", context={"a": [1, 2]}, worker_id="w1", meta={"m": True})
    p = encode(3, e)
    assert len(p.row) == len(COPY_COLUMNS) == len(COPY_TYPES)
    row = dict(zip(COPY_COLUMNS, p.row, strict=True))
    assert (p.index, p.event, p.key) == (3, e, ("exec-1", "7"))
    assert row["created_at"] == e.created_at and row["worker_id"] == "w1"
    assert row["context"] == b'\x01{"a":[1,2]}'  # jsonb's binary format: version 1, then text
    assert row["meta"] == b'\x01{"m":true}'
    assert row["content_hash"] is p.content_hash == content_hash(e)
    assert encode(0, e.model_copy(update={"meta": None})).row[COPY_COLUMNS.index("meta")] is None


def test_a_derived_event_id_is_the_key() -> None:
    e = event(event_id=None)
    assert encode(0, e).key == ("exec-1", e.resolved_event_id())
    assert e.resolved_event_id().startswith("sha256:")


def test_content_hash_is_stable_across_versions() -> None:
    """Rows stored by earlier versions carry these hashes: the fingerprint must not drift."""
    e = event(
        event_id="1",
        context={"n": 1, "tags": ["a", "b"]},
        worker_id="w1",
        meta={"k": [1, 2.5, None]},
    )
    assert content_hash(e).hex() == "9d4e449e6a55acf62ef1e015aa2ccf53"
    # Beyond 64-bit integers orjson cannot write: the json module's text is hashed instead.
    assert content_hash(event(event_id="1", context={"n": 2**80})).hex() == (
        "4ca3797448686a16acd7194ef94c8593"
    )


def test_encode_reads_an_envelope_built_without_validation_like_a_validated_one() -> None:
    """encode reads the fields from the model's __dict__: an envelope made by model_construct
    (no event_id, so it is derived) gives the row, key and hash of the validated one, and
    hashes of consecutive events stay independent (the prepared hasher is copied each time)."""
    validated = event(event_id=None, context={"n": 1}, meta={"m": [1]})
    constructed = ExecutorEvent.model_construct(
        **{name: getattr(validated, name) for name in ENVELOPE_FIELDS}
    )
    a, b = encode(0, validated), encode(1, constructed)
    assert (a.key, a.row, a.content_hash) == (b.key, b.row, b.content_hash)
    assert a.key == ("exec-1", validated.resolved_event_id())
    assert isinstance(b, Pending) and (b.index, b.event) == (1, constructed)
    other = encode(2, validated.model_copy(update={"step": "s2"}))
    assert other.content_hash != a.content_hash == encode(3, validated).content_hash
    incomplete = ExecutorEvent.model_construct(execution_id="exec-1", event_type="t")
    with pytest.raises(ValueError, match=r"^created_at is missing$"):
        encode(4, incomplete)
    pending: list[Pending] = []
    rejects: list[RejectedItem] = []
    prepare([incomplete, validated], "test", pending, rejects)
    assert [p.index for p in pending] == [1]
    assert [(r.index, r.reason) for r in rejects] == [(0, "not storable: created_at is missing")]


def test_compare_values_are_the_row_as_text() -> None:
    e = event(event_id="5", context={"b": 1}, meta={"x": None})
    assert compare_values(encode(0, e)) == (
        "exec-1",
        "5",
        e.created_at.isoformat(),
        "command.completed",
        "step-a",
        "COMPLETED",
        '{"b":1}',
        None,
        '{"x":null}',
    )


# -- prepare -------------------------------------------------------------------------------------


def test_prepare_keeps_valid_items_and_rejects_the_rest_with_their_positions() -> None:
    good = event(event_id="g")
    # orjson writes infinity as null; beyond 64 bits the json module writes, and refuses it.
    unstorable = good.model_copy(update={"context": {"a": math.inf, "b": 2**80}})
    items: list[Any] = [
        RawEnvelope(b'{"event_type": "x"}', "file.ndjson", 7),
        good,
        {"execution_id": "e", "event_type": "t", "created_at": "2026-11-20T00:00:00Z"},
        {"event_type": "no execution"},
        unstorable,
        RawEnvelope(good.model_dump_json(), "nats", 9),
    ]
    pending: list[Pending] = []
    rejects: list[Any] = []
    prepare(items, "api", pending, rejects, offset=100)
    assert [p.index for p in pending] == [1, 2, 5]
    assert pending[2].event == good and pending[2].key == ("exec-1", "g")
    assert [(r.index, r.source, r.line) for r in rejects] == [
        (0, "file.ndjson", 7),  # a raw envelope keeps its own source and position
        (3, "api", 103),  # anything else: its position among the caller's items
        (4, "api", 104),
    ]
    assert "execution_id is required" in rejects[0].reason
    assert rejects[2].reason.startswith("not storable")
    assert rejects[0].columns() == (
        '{"event_type": "x"}',
        None,
        19,
        hashlib.sha256(b'{"event_type": "x"}').digest(),
        "file.ndjson",
        7,
        rejects[0].reason,
    )


def test_prepare_works_in_slices() -> None:
    batch = events(10)
    pending: list[Pending] = []
    prepare(batch, "api", pending, [], 0, 4)
    prepare(batch, "api", pending, [], 4, 40)
    assert [p.index for p in pending] == list(range(10))


def test_rejected_raw_bytes_are_kept_exactly_when_text_cannot_hold_them() -> None:
    rejects: list[Any] = []
    prepare(
        [RawEnvelope(b"\xff\x00not utf-8", "s", 1), RawEnvelope("a\x00b", "s", 2)], "x", [], rejects
    )
    (raw1, bytes1, *_), (raw2, bytes2, *_) = (r.columns() for r in rejects)
    assert bytes1 == b"\xff\x00not utf-8" and "\\xff" in raw1 and "\\x00" in raw1
    assert (raw2, bytes2) == ("a\\x00b", b"a\x00b")


def test_a_rejected_input_keeps_a_prefix_its_length_and_its_hash() -> None:
    """At most REJECTED_PREFIX_BYTES of the input, never a character cut in two; the length and
    SHA-256 are the whole input's."""
    huge = "é" * REJECTED_PREFIX_BYTES  # two bytes each: the prefix ends inside one at first
    data = huge.encode()
    raw, raw_bytes, length, digest, *_ = RejectedItem(0, huge, "s", 1, "r").columns()
    assert raw_bytes is None and raw == "é" * (REJECTED_PREFIX_BYTES // 2)
    assert (length, digest) == (len(data), hashlib.sha256(data).digest())
    odd = b"x" + data  # now the cut splits a character: it ends before it
    raw, raw_bytes, length, *_ = RejectedItem(0, odd, "s", 1, "r").columns()
    assert raw_bytes is None and raw == "x" + "é" * (REJECTED_PREFIX_BYTES // 2 - 1)
    assert length == len(odd)
    junk = b"\xff" * (3 * REJECTED_PREFIX_BYTES)
    raw, raw_bytes, length, *_ = RejectedItem(0, junk, "s", 1, "r").columns()
    assert raw_bytes == junk[:REJECTED_PREFIX_BYTES] and raw == "\\xff" * REJECTED_PREFIX_BYTES
    assert length == len(junk)


def test_every_column_of_a_rejection_is_storable_whatever_the_input() -> None:
    """Lone surrogates (text that UTF-8 cannot hold) and NUL anywhere: escaped in the text
    columns, the input's exact bytes kept in raw_bytes; a position beyond a bigint dropped."""
    raw = '{"step": "\ud800\x00"}'
    item = RejectedItem(0, raw, "file-\udcff.ndjson", 2**64, "step: \ud800 and \x00")
    text, raw_bytes, length, digest, source, position, reason = item.columns()
    exact = raw.encode("utf-8", "surrogatepass")
    assert raw_bytes == exact and length == len(exact)
    assert digest == hashlib.sha256(exact).digest()
    assert position is None
    for value in (text, source, reason):
        value.encode("utf-8")  # no lone surrogate left
        assert "\x00" not in value
    assert text == '{"step": "\\xed\\xa0\\x80\\x00"}'
    assert source == "file-\\udcff.ndjson" and reason == "step: \\ud800 and \\x00"
    assert storable_text("x" * 5000).endswith("\u2026") and len(storable_text("x" * 5000)) == 2000


def test_no_item_can_fail_its_neighbours() -> None:
    """Whatever validating or serialising one item raises (RecursionError, OverflowError, ...)
    rejects that item with a reason; the others are prepared."""
    deep: Any = {}
    for _ in range(10_000):
        deep = {"a": deep}
    good = event(event_id="g")
    unvalidated = ExecutorEvent.model_construct(**{**good.__dict__, "context": deep})
    edge = '{"execution_id":"e","event_type":"t","created_at":"9999-12-31T23:00:00-12:00"}'
    items: list[Any] = [
        {"execution_id": "e", "event_type": "t", "created_at": T0, "context": deep},
        good,
        unvalidated,
        RawEnvelope(edge, "f", 3),
        RawEnvelope(
            edge[:-1].replace("9999-12-31T23:00:00-12:00", "2026-11-20T00:00:00Z")
            + ',"context":'
            + "[" * 10_000
            + "]" * 10_000
            + "}",
            "f",
            4,
        ),
        event(event_id="h"),
    ]
    pending: list[Pending] = []
    rejects: list[RejectedItem] = []
    prepare(items, "api", pending, rejects)
    assert [p.index for p in pending] == [1, 5]
    reasons = {r.index: r.reason for r in rejects}
    assert "context is nested more than 200 levels deep" in reasons[0]
    assert "RecursionError" in reasons[2]
    assert "outside the range" in reasons[3]
    assert "recursion limit exceeded" in reasons[4]
    for r in rejects:
        r.columns()  # and each rejection can be written out


def test_raw_json_the_fast_parser_refuses_is_rejected_naming_the_field() -> None:
    """The fast parser refuses lone surrogates in \\u escapes with a position in the text; the
    reason names the field instead, as it does for every other input."""
    rejects: list[RejectedItem] = []
    base = '"execution_id":"e","event_type":"t","created_at":"2026-11-20T00:00:00Z"'
    prepare(
        [
            RawEnvelope(f'{{{base},"step":"\\ud800"}}', "f", 1),
            RawEnvelope(f'{{{base},"context":{{"\\udfff":1}}}}', "f", 2),
            RawEnvelope(f'{{{base},"context":{"[" * 201 + "]" * 201}}}', "f", 3),
            RawEnvelope(f"{{{base}", "f", 4),
        ],
        "api",
        [],
        rejects,
    )
    assert [r.reason for r in rejects[:3]] == [
        "step contains a lone surrogate, which is not valid UTF-8",
        "context key contains a lone surrogate, which is not valid UTF-8",
        "context is nested more than 200 levels deep (arrays and objects inside one another), "
        "deeper than the sink stores",
    ]
    assert rejects[3].reason.startswith("Invalid JSON: EOF")  # not JSON to anyone


def test_windows_slice_sequences_and_chunk_iterables() -> None:
    a, b, c, d, e = events(5)
    assert list(windows([a, b, c, d, e], 2)) == [[a, b], [c, d], [e]]
    assert list(windows(iter([a, b, c, d]), 2)) == [[a, b], [c, d]]
    assert list(windows([], 3)) == [[]] and list(windows(iter([]), 3)) == [[]]


# -- classification ------------------------------------------------------------------------------


def stored_as(p: Pending, *, txid: str = "100", **changes: Any) -> StoredRow:
    row = StoredRow(p.key[0], p.key[1], p.event.created_at, txid, p.content_hash)
    return row._replace(**changes)


def run_classify(
    pending: list[Pending],
    stored: dict[tuple[str, str], StoredRow],
    changed: set[int] = frozenset(),  # type: ignore[assignment]
    earlier: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[Outcome | None], list[tuple[str, str]]]:
    outcomes: list[Outcome | None] = [None] * len(pending)
    conflicts: list[tuple[str, str]] = []
    first = first_occurrences(pending)
    classify(pending, first, stored, set(changed), set(earlier), outcomes, conflicts)
    return outcomes, conflicts


def test_new_keys_are_inserted_once_and_repeats_compared_with_the_first() -> None:
    a = event(event_id="1", context={"n": 1, "ok": True})
    items = [
        a,
        a.model_copy(update={"context": {"ok": True, "n": 1.0}}),  # the same as jsonb
        a.model_copy(update={"context": {"ok": 1, "n": 1}}),  # true is not 1
        event(event_id="2"),
    ]
    pending = [encode(i, e) for i, e in enumerate(items)]
    first = first_occurrences(pending)
    assert list(first) == [("exec-1", "1"), ("exec-1", "2")] and first[a_key(a)] is pending[0]
    assert list(fresh(first, {})) == [pending[0], pending[3]]
    outcomes, conflicts = run_classify(pending, {})
    assert outcomes == ["inserted", "duplicate", "conflict", "inserted"]
    assert conflicts == [("exec-1", "1")]


def a_key(e: Any) -> tuple[str, str]:
    return (e.execution_id, e.resolved_event_id())


def test_stored_keys_are_duplicates_unless_changed() -> None:
    pending = [encode(i, e) for i, e in enumerate(events(4))]
    stored = {p.key: stored_as(p) for p in pending[:3]}
    assert list(fresh(first_occurrences(pending), stored)) == [pending[3]]
    outcomes, conflicts = run_classify(pending, stored, changed={1})
    assert outcomes == ["duplicate", "conflict", "duplicate", "inserted"]
    assert conflicts == [pending[1].key]


def test_rows_of_a_lost_commit_count_as_inserted() -> None:
    """Found with the transaction id of an earlier attempt at this batch: ours, not duplicates."""
    pending = [encode(i, e) for i, e in enumerate([event(event_id="1"), event(event_id="1")])]
    stored = {pending[0].key: stored_as(pending[0], txid="41")}
    outcomes, conflicts = run_classify(pending, stored, earlier={"41", "42"})
    assert outcomes == ["inserted", "duplicate"] and conflicts == []
    assert triage(pending, stored, {"41", "42"}) == (set(), [])


def test_triage_sorts_stored_rows_by_what_the_client_can_tell() -> None:
    pending = [encode(i, e) for i, e in enumerate(events(4))]
    earlier = pending[1].event.created_at - timedelta(days=1)
    stored = {
        pending[0].key: stored_as(pending[0]),  # same hash: identical
        pending[1].key: stored_as(pending[1], created_at=earlier, content_hash=None),
        pending[2].key: stored_as(pending[2], content_hash=None),  # written by another tool
        pending[3].key: stored_as(pending[3], content_hash=b"\x00" * 16),
    }
    changed, candidates = triage(pending, stored, {"7"})
    assert changed == {1}  # another created_at: another partition, surely other content
    assert candidates == [pending[2], pending[3]]  # for the server to compare as jsonb


def test_outcomes_count_and_list_what_was_not_stored() -> None:
    rejects: list[Any] = []
    prepare([RawEnvelope(b"{", "f", 12)], "api", [], rejects)
    outcomes: list[Outcome | None] = ["rejected", "inserted", None, "duplicate", "conflict"]
    result = Outcomes(outcomes, {0: "bad json"}, [("e", "4")]).result(rejects)
    assert result.counts() == {"inserted": 1, "duplicates": 1, "conflicts": 1, "rejected": 2}
    assert result.rejected == [Rejection(0, "bad json", 12), Rejection(2, "not stored", None)]
    assert result.outcomes == ["rejected", "inserted", "rejected", "duplicate", "conflict"]
    assert result.conflict_ids == [("e", "4")]


def test_batch_results_extend_with_shifted_positions() -> None:
    total = BatchResult(inserted=2, outcomes=["inserted", "inserted"])
    total.extend(BatchResult(outcomes=["rejected"], rejected=[Rejection(0, "why", 3)]))
    assert total.rejected == [Rejection(2, "why", 3)]
    assert total.counts() == {"inserted": 2, "duplicates": 0, "conflicts": 0, "rejected": 1}


def test_same_content_ignores_the_key_and_json_spelling() -> None:
    a = event(event_id="1", context={"x": [1, {"y": 2}], "z": None})
    respelled = a.model_copy(update={"context": {"z": None, "x": [1.0, {"y": 2}]}})
    assert same_content(encode(0, a), encode(1, a.model_copy(update={"event_id": "2"})))
    assert same_content(encode(0, a), encode(1, respelled))
    changes: list[dict[str, Any]] = [
        {"status": "FAILED"},
        {"worker_id": "w"},
        {"meta": {}},
        {"context": {"x": 1}},
    ]
    for change in changes:
        assert not same_content(encode(0, a), encode(1, a.model_copy(update=change)))


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (False, 0, False),
        (None, 0, False),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True),
        ([1, 2], [2, 1], False),
        ("1", 1, False),
        (2**60, float(2**60), False),  # jsonb compares the float's JSON text: 1.152921504606847e18
        (10**16, 1e16, True),
        (math.inf, None, True),  # written as null
        (math.nan, math.nan, True),
    ],
)
def test_jsonb_equality_examples(a: Any, b: Any, equal: bool) -> None:
    assert jsonb_equal(a, b) is equal and jsonb_equal(b, a) is equal


# -- the property, against PostgreSQL ------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=4)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # infinities and NaN too: the sink writes them as null
    | _TEXT
)
JSON = st.recursive(
    _SCALARS,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from("abcd"), kids, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def twin(draw: st.DrawFn, value: Any) -> Any:
    """A value jsonb may well find equal to `value`: objects with their keys in another order,
    numbers spelled otherwise (1 and 1.0), booleans as 0 and 1 (never equal), or now and then a
    fresh value."""
    if draw(st.integers(0, 11)) == 0:
        return draw(JSON)
    if isinstance(value, bool):
        return draw(st.sampled_from([value, int(value)]))
    if isinstance(value, int):
        try:
            return draw(st.sampled_from([value, float(value)]))
        except OverflowError:
            return value
    if isinstance(value, float):
        return draw(st.sampled_from([value, int(value) if value.is_integer() else value]))
    if isinstance(value, list):
        return [draw(twin(v)) for v in value]
    if isinstance(value, dict):
        return {k: draw(twin(v)) for k, v in draw(st.permutations(list(value.items())))}
    return value


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def _as_jsonb_text(value: Any) -> str:
    """The JSON text the sink sends for `value` (see `encode`)."""
    return _json_bytes(value).decode("utf-8", "surrogatepass")


@settings(
    max_examples=int(os.environ.get("PROJECTOR_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pair=JSON.flatmap(lambda a: st.tuples(st.just(a), twin(a))))
@example(pair=(1, 1.0))
@example(pair=(True, 1))
@example(pair=({"a": [1, {"b": 2.5}], "c": None}, {"c": None, "a": [1.0, {"b": 2.5}]}))
@example(pair=(2**60, float(2**60)))
@example(pair=(-(2**70), float(-(2**70))))
def test_jsonb_equality_agrees_with_postgresql(
    pg: psycopg.Connection[Any], pair: tuple[Any, Any]
) -> None:
    a, b = pair
    try:
        texts = (_as_jsonb_text(a), _as_jsonb_text(b))
    except ValueError:  # infinity beyond orjson's reach (next to a 65-bit integer): not storable
        reject()
    row = pg.execute("SELECT %s::jsonb = %s::jsonb", texts).fetchone()
    assert row is not None
    hypothesis_event("equal in PostgreSQL" if row[0] else "different in PostgreSQL")
    assert jsonb_equal(a, b) is row[0], f"{texts[0]} vs {texts[1]}"


TEXT_FIELDS = ("execution_id", "event_id", "event_type", "step", "status", "worker_id")


@pytest.mark.parametrize("form", ["mapping", "raw JSON"])
@pytest.mark.parametrize(
    "where", [*TEXT_FIELDS, "context value", "context key", "meta value", "meta key"]
)
@pytest.mark.parametrize("char", ["\x00", "\ud800"], ids=["NUL", "lone surrogate"])
def test_validation_alone_rejects_forbidden_characters_naming_the_field(
    form: str, where: str, char: str
) -> None:
    """The primary defence on its own (no database behind it to refuse the row): U+0000 and lone
    surrogates in every text field and in JSON keys and values are rejected, the reason naming
    the field."""
    item: dict[str, Any] = {
        "execution_id": "e",
        "event_id": "1",
        "event_type": "t",
        "created_at": "2026-11-20T00:00:00Z",
    }
    bad = "x" + char
    if where in TEXT_FIELDS:
        item[where], expected = bad, f"{where} contains"
    else:
        field, kind = where.split()
        item[field] = {"k": [bad]} if kind == "value" else {"a": {bad: 1}}
        expected = f"{field}.k[0] contains" if kind == "value" else f"{field}.a key contains"
    given: Any = item if form == "mapping" else RawEnvelope(json.dumps(item), "f", 1)
    rejects: list[RejectedItem] = []
    prepare([given], "api", [], rejects)
    [rejected] = rejects
    words = "a NUL character" if char == "\x00" else "a lone surrogate"
    assert f"{expected} {words}" in rejected.reason
