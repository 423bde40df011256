"""Argument types of the command line: a bad value is an argparse error (exit 2, one line).

Each function takes the text of one argument and returns its value, or raises
:class:`argparse.ArgumentTypeError` with what a valid value looks like.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

from ..fold import status_filter
from ..health import parse_address

__all__ = [
    "address",
    "age",
    "duration",
    "jetstream_seconds",
    "jetstream_seconds_or_zero",
    "limit_or_none",
    "non_negative_int",
    "parse_duration",
    "positive_int",
    "seconds",
    "seconds_or_zero",
    "status",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def limit_or_none(text: str) -> int:
    """A size limit: a whole number of at least 1, or -1 for none (0 is refused: JetStream
    would read it as no limit too, which a typo should not mean)."""
    value = _int(text)
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"must be at least 1, or -1 for no limit, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def seconds(text: str) -> float:
    """A number of seconds greater than 0 (fractions allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def seconds_or_zero(text: str) -> float:
    """A number of seconds, 0 or more (0: never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, not {text}")
    return value


def jetstream_seconds(text: str) -> float:
    """:func:`seconds` for a JetStream duration (see :func:`_jetstream`)."""
    return _jetstream(seconds(text), text, zero="")


def jetstream_seconds_or_zero(text: str) -> float:
    """:func:`seconds_or_zero` for a JetStream duration: 0 is no limit (see :func:`_jetstream`)."""
    return _jetstream(seconds_or_zero(text), text, zero="0 or ")


#: The longest JetStream duration: a signed 64-bit count of nanoseconds (about 292 years).
_JETSTREAM_MAX_SECONDS = (2**63 - 1) / 1e9


def _jetstream(value: float, text: str, *, zero: str) -> float:
    """`value` if JetStream can hold it: it travels in whole nanoseconds, so a value that is not
    0 but rounds to 0 ns (1e-10) would silently mean JetStream's default or no limit, and one
    past 2^63 ns is refused by the server. `zero` words the error for options that take 0."""
    if value and value * 1e9 < 1:
        raise argparse.ArgumentTypeError(f"must be {zero}at least 1 ns (1e-09 seconds), not {text}")
    if value > _JETSTREAM_MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be at most {_JETSTREAM_MAX_SECONDS:.0f} seconds (JetStream counts "
            f"nanoseconds in 64 bits), not {text}"
        )
    return value


def address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` to listen on (port 0: any free port)."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_AGE = re.compile(r"^\s*(\d+)\s*([dw])\s*$")


def age(text: str) -> timedelta:
    """An age in days or weeks: ``180d``, ``26w`` (more than 0)."""
    match = _AGE.match(text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: write days or weeks, e.g. 180d or 26w"
        )
    count, unit = int(match.group(1)), match.group(2)
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be more than 0 days, not {text}")
    return timedelta(days=count * (7 if unit == "w" else 1))


_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
#: The longest duration accepted (anything longer reaches before the first event stored).
LONGEST_DURATION = timedelta(days=36_525)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``2h``, ``1d`` or a sum like ``1h30m``: more than 0, at most 100 years;
    else :class:`ValueError` saying what a duration looks like (the web view's ``stalled``
    filter uses it too)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 10m, 2h, 1d, 1h30m)")
    days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
    total = timedelta(days=days, hours=hours, minutes=minutes, seconds=secs)
    if total <= timedelta(0):
        raise ValueError("the duration must be more than 0")
    if total > LONGEST_DURATION:
        raise ValueError("the duration must be at most 100 years")
    return total


def status(text: str) -> str | None:
    """An execution status: one of :data:`~projector.fold.STATUSES` or a spelling the status
    table reads as one (``failed``, ``ok``, ``error``), any case; the canonical status. Blank
    text is no filter (None: ``--status "$S"`` with S empty, as the web's empty ``?status=``);
    a word the table does not know is an error, not ``RUNNING`` (what it means in an event)."""
    if not text.strip(" \t\r\n"):
        return None
    try:
        return status_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(text: str) -> timedelta:
    """:func:`parse_duration` as an argument type."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
