"""`projector.cli.safe`: no character a producer sends can drive the operator's terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from projector.cli import safe

# What hostile producers send: a window title, the clipboard (OSC 52), a hyperlink, a screen
# clear (CSI), a device control string, the 8-bit CSI and OSC, a bidi override, a line
# separator, a carriage return that overwrites the line, and rich markup.
TITLE = "\x1b]0;owned\x07"
CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsfHNo\x07"
HYPERLINK = "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
CLEAR = "\x1b[2J\x1b[H"
DCS = "\x1bP+q544e\x1b\\"
C1 = "\x9b31m\x9d0;t\x9c"
BIDI = "abc\u202edcba\u2066x\u2069"
SEPARATORS = "a\u2028b\u2029c"
OVERWRITE = "ok\rFAILED"
MARKUP = "[link=https://evil.example]click[/link][blink]x[/blink]"
HOSTILE = [TITLE, CLIPBOARD, HYPERLINK, CLEAR, DCS, C1, BIDI, SEPARATORS, OVERWRITE]


def _unsafe(ch: str) -> bool:
    """What must never reach a terminal raw (the module's list, by Unicode property)."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) == "Cc"  # C0, DEL, C1
        or 0xD800 <= cp <= 0xDFFF
        or ch in "\u061c\u200e\u200f\u2028\u2029"
        or 0x202A <= cp <= 0x202E
        or 0x2066 <= cp <= 0x2069
    )


def test_every_control_character_is_written_visibly() -> None:
    for cp in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:
        assert safe.escape(chr(cp)) == f"\\u{cp:04x}"


def test_esc_introduced_sequences_are_shown_not_obeyed() -> None:
    assert safe.escape(TITLE) == "\\u001b]0;owned\\u0007"
    assert safe.escape(CLEAR) == "\\u001b[2J\\u001b[H"
    assert safe.escape(C1) == "\\u009b31m\\u009d0;t\\u009c"
    for payload in HOSTILE:
        assert not any(_unsafe(ch) for ch in safe.escape(payload)), payload


def test_bidi_controls_separators_and_lone_surrogates() -> None:
    assert safe.escape(BIDI) == "abc\\u202edcba\\u2066x\\u2069"
    assert safe.escape(SEPARATORS) == "a\\u2028b\\u2029c"
    escaped = safe.escape("x\ud800y")
    assert escaped == "x\\ud800y"
    escaped.encode("utf-8")  # printable on any UTF-8 stream (the raw one raises)


def test_tab_and_newline_are_kept_only_where_the_layout_needs_them() -> None:
    assert safe.escape("a\tb\nc") == "a\\u0009b\\u000ac"
    assert safe.escape("a\tb\nc\r", newlines=True) == "a\tb\nc\\u000d"


def test_ordinary_text_is_unchanged() -> None:
    for s in ["step_1", "copy users", "Größe", "日本語", "emoji 🎉", "C:\\path", "a [b] c", ""]:
        assert safe.escape(s) == s


def test_non_text_values_are_converted() -> None:
    assert safe.escape(42) == "42"
    assert safe.escape(["\x1b"]) == "['\\x1b']"  # repr already escaped it; nothing raw is left


@given(st.text())
def test_nothing_unsafe_survives_escaping(s: str) -> None:
    out = safe.escape(s, newlines=True)
    assert not any(_unsafe(ch) for ch in out if ch not in "\t\n")
    assert not any(_unsafe(ch) for ch in safe.escape(s))


@given(st.text().filter(lambda s: not any(_unsafe(ch) for ch in s)))
def test_safe_text_passes_through(s: str) -> None:
    assert safe.escape(s) == s


def _render(*cells: object) -> str:
    """A table of `cells` as a colour terminal receives it."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=400)
    table = Table()
    table.add_column("cell")
    for cell in cells:
        table.add_row(cell)  # type: ignore[arg-type]
    console.print(table)
    return out.getvalue()


def test_text_cells_carry_no_terminal_sequence_and_no_markup() -> None:
    raw = _render(*HOSTILE, MARKUP)
    assert "\x1b]" in raw and "\x9b" in raw  # the problem: rich passes them (and makes links)
    shown = _render(*(safe.text(s) for s in [*HOSTILE, MARKUP]))
    # rich's own colour codes (ESC [ ... m) remain; nothing else starts with ESC or is C1.
    without_styles = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert not any(_unsafe(ch) for ch in without_styles if ch != "\n")
    assert "\\u001b]0;owned\\u0007" in shown
    assert "[link=https://evil.example]click[/link]" in shown  # markup shown, not obeyed


def test_text_of_none_is_an_empty_cell_and_styles_apply() -> None:
    assert safe.text(None).plain == ""
    assert safe.text("x", "bold").style == "bold"


def test_markup_escapes_inside_a_markup_string() -> None:
    out = io.StringIO()
    Console(file=out, width=200, no_color=True).print(f"execution [bold]{safe.markup(MARKUP)}[/]")
    assert out.getvalue() == f"execution {MARKUP}\n"


def test_error_text_redacts_and_escapes() -> None:
    exc = RuntimeError("cannot reach postgresql://app:hunter22@127.0.0.1/db\nDETAIL: \x1b]0;t\x07")
    assert safe.error_text(exc) == (
        "cannot reach postgresql://app:***@127.0.0.1/db\nDETAIL: \\u001b]0;t\\u0007"
    )
    assert safe.error_text(TimeoutError()) == "TimeoutError"


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("projector.bridge", logging.WARNING, __file__, 1, msg, args, None)


def test_log_lines_are_redacted_escaped_and_cannot_forge_records() -> None:
    formatter = safe.SafeFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    line = formatter.format(
        _record(
            "rejected message on %s: %s",
            "t.events.\x1b]0;x\x07",
            "nats://tok3n@127.0.0.1:4222 refused\nCRITICAL projector: fake",
        )
    )
    assert line == (
        "WARNING projector.bridge: rejected message on t.events.\\u001b]0;x\\u0007: "
        "nats://***@127.0.0.1:4222 refused\n  CRITICAL projector: fake"
    )


def test_guard_logging_wraps_the_stderr_handlers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr, elsewhere = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    logger = logging.getLogger("projector.test_safe")
    logger.propagate = False
    handlers = [logging.StreamHandler(sys.stderr), logging.StreamHandler(elsewhere)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    try:
        safe.guard_logging(logger)
        safe.guard_logging(logger)
        guarded = handlers[0].formatter
        assert isinstance(guarded, safe.SafeFormatter)
        assert not isinstance(guarded.inner, safe.SafeFormatter)
        assert not isinstance(handlers[1].formatter, safe.SafeFormatter)
        logger.warning("password=%s \x1b[2J", "s3cret")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.propagate = True
    assert stderr.getvalue() == "password=*** \\u001b[2J\n"
    assert elsewhere.getvalue() == "password=s3cret \x1b[2J\n"
