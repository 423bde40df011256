"""A corpus of hostile input: what any producer can send, and what must become of each item.

Every case of issue 11 and of the README's rejection list, as raw bytes (one NDJSON line each,
no newline inside), with what must happen to it: ``rejected`` (with a reason containing one of
`reason`), ``stored`` (`check` names the column and the value it must be stored with), or, for
blank input, ``blank`` (rejected where an item is given on its own, `emit_many` and `consume`;
skipped by `ingest`, which reads blank lines as no line at all). :func:`interleaved` puts a
good envelope between every two cases; the suites in ``tests/test_hostile.py`` run it through
`emit_many`, `projector ingest` and `projector consume`, and the fault suite may reuse it.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CASES", "Case", "Item", "good", "interleaved", "ndjson"]

Expect = Literal["rejected", "stored", "blank"]

_T = "2026-11-20T12:00:00Z"


def _envelope(execution_id: str, event_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "event_id": event_id,
        "event_type": "command.completed",
        "step": "s",
        "status": "COMPLETED",
        "created_at": _T,
        **fields,
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def _with(event_id: str, raw_field: str) -> bytes:
    """An envelope (execution ``hostile``) with one field written as raw JSON text."""
    head = _json(_envelope("hostile", event_id))[:-1]
    return head + b", " + raw_field.encode() + b"}"


def _random_text(n: int, seed: int) -> str:
    return "".join(random.Random(seed).choices(string.ascii_letters + string.digits, k=n))


@dataclass(frozen=True)
class Case:
    """One hostile item: its bytes, what must become of it, and how to tell."""

    name: str
    raw: bytes
    expect: Expect
    #: For rejected items: the reason contains one of these.
    reason: tuple[str, ...] = ()
    #: For stored items: (execution_id, event_id, column, value) it must be stored with.
    check: tuple[str, str, str, Any] | None = None


def _raw_value(envelope: dict[str, Any], name: str, raw_json: str | bytes) -> bytes:
    """`envelope` as JSON with field `name` written as `raw_json`, bytes as they are."""
    raw = raw_json.encode() if isinstance(raw_json, str) else raw_json
    return _json({**envelope, name: "@@"}).replace(b'"@@"', raw)


def _step(event_id: str, raw_json: str | bytes) -> bytes:
    """An envelope (execution ``hostile``) whose step is written as `raw_json`."""
    return _raw_value(_envelope("hostile", event_id), "step", raw_json)


def _text_field_cases() -> list[Case]:
    """U+0000 and a lone surrogate (as \\u escapes) in every text field and in JSON keys and
    values: rejected by validation, naming the field (never by the database, whose reason would
    not name it)."""
    cases = []
    fields = ["execution_id", "event_id", "event_type", "step", "status", "worker_id"]
    for char, words, label in (
        ("\\u0000", "a NUL character", "nul"),
        ("\\ud800", "a lone surrogate", "surrogate"),
    ):
        for name in fields:
            envelope = _envelope("hostile", f"{label}-{name}")
            raw = _raw_value(envelope, name, f'"x{char}"')
            cases.append(Case(f"{label} in {name}", raw, "rejected", (f"{name} contains {words}",)))
        for where in ("context", "meta"):
            value = _raw_value(
                _envelope("hostile", f"{label}-{where}-v"), where, f'{{"k": ["x{char}"]}}'
            )
            key = _raw_value(
                _envelope("hostile", f"{label}-{where}-k"), where, f'{{"a": {{"x{char}": 1}}}}'
            )
            cases += [
                Case(
                    f"{label} in a {where} value",
                    value,
                    "rejected",
                    (f"{where}.k[0] contains {words}",),
                ),
                Case(
                    f"{label} in a {where} key",
                    key,
                    "rejected",
                    (f"{where}.a key contains {words}",),
                ),
            ]
    return cases


CASES: list[Case] = [
    Case("NUL byte in the text", _step("nul-raw", '"a\x00b"'), "rejected", ("Invalid JSON",)),
    *_text_field_cases(),
    Case("NaN", _with("nan", '"context": {"x": NaN}'), "rejected", ("context.x is nan",)),
    Case("Infinity", _with("inf", '"context": [Infinity]'), "rejected", ("context[0] is inf",)),
    Case("-Infinity", _with("-inf", '"meta": {"x": -Infinity}'), "rejected", ("meta.x is -inf",)),
    Case(
        "JSON nested 10,000 deep",
        _with("deep", '"context": ' + "[" * 10_000 + "]" * 10_000),
        "rejected",
        ("recursion limit exceeded",),
    ),
    Case(
        "JSON nested 201 deep",
        _with("deep-201", '"meta": {"m": ' + "[" * 200 + "]" * 200 + "}"),
        "rejected",
        ("meta is nested more than 200 levels deep",),
    ),
    Case(
        "JSON nested 200 deep",
        _with("deep-200", '"context": ' + "[" * 200 + "]" * 200),
        "stored",
        check=("hostile", "deep-200", "jsonb_typeof(context)", "array"),
    ),
    Case(
        "~3 KB random event id",
        _json(_envelope("hostile", _random_text(3000, 1))),
        "rejected",
        ("54000", "exceeds btree version 4 maximum 2704"),
    ),
    Case(
        "~3 KB random execution id",
        _json(_envelope(_random_text(3000, 2), "long-execution")),
        "rejected",
        ("54000", "exceeds btree version 4 maximum 2704"),
    ),
    Case(
        "~3 KB random step",
        _json(_envelope("hostile", "long-step", step=_random_text(3000, 3))),
        "rejected",
        ("54000", "exceeds btree version 4 maximum 2704"),
    ),
    Case(
        "range edge with an offset (late)",
        _json(_envelope("hostile", "edge-late", created_at="9999-12-31T23:00:00-12:00")),
        "rejected",
        ("outside the range", "created_at"),
    ),
    Case(
        "range edge with an offset (early)",
        _json(_envelope("hostile", "edge-early", created_at="0001-01-01T00:00:00+01:00")),
        "rejected",
        ("outside the range", "created_at"),
    ),
    Case(
        "the last representable instant",
        _json(_envelope("hostile", "dec-9999", created_at="9999-12-31T23:59:59.999999Z")),
        "stored",
        check=("hostile", "dec-9999", "created_at::text", "9999-12-31 23:59:59.999999+00"),
    ),
    Case(
        "the first representable instant",
        _json(_envelope("hostile", "jan-0001", created_at="0001-01-01T00:00:00Z")),
        "stored",
        check=("hostile", "jan-0001", "created_at::text", "0001-01-01 00:00:00+00"),
    ),
    Case(
        "execution id beyond 64 bits",
        _json({**_envelope("x", "big-id"), "execution_id": 2**70}),
        "stored",
        check=(str(2**70), "big-id", "execution_id", str(2**70)),
    ),
    Case(
        "event id beyond 64 bits",
        _json({**_envelope("hostile", "x"), "event_id": 2**64 + 1}),
        "stored",
        check=("hostile", str(2**64 + 1), "event_id", str(2**64 + 1)),
    ),
    Case(
        "an integer id of 5,000 digits",
        _raw_value(_envelope("hostile", "x"), "event_id", "9" * 5000),
        "rejected",
        ("number out of range",),
    ),
    Case(
        "float execution id",
        _json({**_envelope("x", "float-id"), "execution_id": 1.5}),
        "rejected",
        ("execution_id: must be a string or an integer, not float",),
    ),
    Case(
        "boolean event id",
        _json({**_envelope("hostile", "x"), "event_id": True}),
        "rejected",
        ("event_id: must be a string or an integer, not bool",),
    ),
    Case(
        "float event id",
        _json({**_envelope("hostile", "x"), "event_id": 2.0}),
        "rejected",
        ("event_id: must be a string or an integer, not float",),
    ),
    # Duplicate keys: rejected with the key's name (a parser would silently keep the last).
    Case(
        "duplicate keys",
        _with("dup", '"step": "second", "context": {"k": 1, "k": 2}'),
        "rejected",
        ("duplicate key 'k' in one JSON object",),
    ),
    Case("a JSON array", b"[1, 2]", "rejected", ("must be a JSON object",)),
    Case("a JSON string", b'"envelope"', "rejected", ("must be a JSON object",)),
    Case("a JSON number", b"42", "rejected", ("must be a JSON object",)),
    Case("JSON null", b"null", "rejected", ("must be a JSON object",)),
    Case("not JSON", b"not json at all", "rejected", ("Invalid JSON",)),
    Case("truncated JSON", _json(_envelope("hostile", "cut"))[:40], "rejected", ("Invalid JSON",)),
    Case("an empty line", b"", "blank", ("Invalid JSON: EOF",)),
    Case("a line of spaces", b"   \t ", "blank", ("Invalid JSON: EOF",)),
    Case("invalid UTF-8", _step("utf8", b'"\xff\xfe"'), "rejected", ("Invalid JSON",)),
    Case(
        "UTF-8 of a surrogate (CESU)",
        _step("cesu", b'"\xed\xa0\x80"'),
        "rejected",
        ("step contains a lone surrogate",),
    ),
    Case(
        "overlong UTF-8",
        _step("overlong", b'"\xc0\xaf"'),
        "rejected",
        ("Invalid JSON",),
    ),
    Case(
        "no created_at",
        _json({k: v for k, v in _envelope("hostile", "no-time").items() if k != "created_at"}),
        "rejected",
        ("created_at",),
    ),
    Case(
        "created_at not a time",
        _json(_envelope("hostile", "bad-time", created_at="2026-13-45T99:00:00Z")),
        "rejected",
        ("created_at",),
    ),
    Case(
        "blank event_type",
        _json(_envelope("hostile", "blank-type", event_type="  ")),
        "rejected",
        ("event_type must not be empty",),
    ),
    Case("meta not an object", _with("meta-list", '"meta": [1]'), "rejected", ("meta",)),
    Case(
        "200 KB of junk",
        b"\x01" + _random_text(200_000, 4).encode(),
        "rejected",
        ("Invalid JSON",),
    ),
    # Terminal escapes are stored as sent (escaping them is the job of what displays them).
    Case(
        "terminal escapes in the step",
        _step("escapes", '"\\u001b]0;title\\u0007\\u001b[2J"'),
        "stored",
        check=("hostile", "escapes", "step", "\x1b]0;title\x07\x1b[2J"),
    ),
]


def good(n: int) -> bytes:
    """The `n`-th good neighbour: a valid envelope of execution ``good``."""
    return _json(_envelope("good", f"g{n:04d}", step=f"s{n % 7}", context={"n": n}))


@dataclass(frozen=True)
class Item:
    """One item of :func:`interleaved`: its bytes, and the case (None for a good neighbour)."""

    raw: bytes
    case: Case | None = field(default=None)


def interleaved() -> list[Item]:
    """A good envelope, then each case followed by another good envelope."""
    items = [Item(good(0))]
    for n, case in enumerate(CASES, start=1):
        items += [Item(case.raw, case), Item(good(n))]
    return items


def ndjson() -> bytes:
    """:func:`interleaved` as an NDJSON file (line `i + 1` holds item `i`)."""
    lines = [item.raw for item in interleaved()]
    assert not any(b"\n" in line for line in lines)
    return b"\n".join(lines) + b"\n"
