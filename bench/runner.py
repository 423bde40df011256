"""Measurement and bookkeeping shared by every scenario.

The alternation lives here and only here: :func:`measure` runs the variants of a scenario in turns
(A, B, A, B, ... with the starting variant rotating every round so neither side always runs
first), keeps every raw sample, and reports medians. Ratios are the median of the per-round
ratios: both sides of a round ran seconds apart, so the machine's noise mostly cancels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .scratch import ScratchDatabases


class SkipScenario(Exception):
    """Raised by a scenario that cannot run here (e.g. no NATS server): reported, not an error."""


@dataclass
class Sample:
    """One timed run of one variant: `events` processed in `seconds`, plus anything else seen."""

    events: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


Variant = Callable[[int], Awaitable[Sample]]


@dataclass
class Series:
    """Every sample of one variant, in round order."""

    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [s.rate for s in self.samples]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates) if self.samples else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median_rate": self.median_rate,
            "samples": [{**asdict(s), "rate": s.rate} for s in self.samples],
        }


def round_ratios(candidate: Series, baseline: Series) -> list[float]:
    """candidate rate / baseline rate, round by round."""
    return [
        c.rate / b.rate if b.rate else float("nan")
        for c, b in zip(candidate.samples, baseline.samples, strict=False)
    ]


def median_ratio(candidate: Series, baseline: Series) -> float:
    ratios = round_ratios(candidate, baseline)
    return statistics.median(ratios) if ratios else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def measure(
    variants: dict[str, Variant],
    rounds: int,
    *,
    tick: Callable[[str], None] | None = None,
    fixed_order: bool = False,
) -> dict[str, Series]:
    """Run every variant once per round, alternating; return all samples per variant.

    The first variant of round r is variant r mod n (unless `fixed_order`, for scenarios whose
    candidate needs what the baseline just did, e.g. project what was ingested).
    """
    names = list(variants)
    series = {name: Series(name) for name in names}
    for r in range(rounds):
        shift = 0 if fixed_order else r % len(names)
        for name in names[shift:] + names[:shift]:
            series[name].samples.append(await variants[name](r))
            if tick is not None:
                tick(f"round {r + 1}/{rounds}: {name}")
    return series


@dataclass
class PairResult:
    candidate: Series
    baseline: Series

    @property
    def ratios(self) -> list[float]:
        return round_ratios(self.candidate, self.baseline)

    @property
    def ratio(self) -> float:
        return median_ratio(self.candidate, self.baseline)


async def measure_pair(
    candidate: tuple[str, Variant],
    baseline: tuple[str, Variant],
    rounds: int,
    *,
    tick: Callable[[str], None] | None = None,
    fixed_order: bool = False,
) -> PairResult:
    """:func:`measure` for the common case of one candidate against one baseline."""
    series = await measure(
        {baseline[0]: baseline[1], candidate[0]: candidate[1]}
        if fixed_order
        else {candidate[0]: candidate[1], baseline[0]: baseline[1]},
        rounds,
        tick=tick,
        fixed_order=fixed_order,
    )
    return PairResult(series[candidate[0]], series[baseline[0]])


class Timer:
    """`with Timer() as t: ...` then `t.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclass
class Metric:
    """One line of the table. `ratio` is candidate/baseline; `target` e.g. '>= 0.9x'."""

    label: str
    value: float
    unit: str
    ratio: float | None = None
    target: float | None = None
    met: bool | None = None
    note: str = ""

    @classmethod
    def against(
        cls, label: str, value: float, unit: str, ratio: float, target: float | None, note: str = ""
    ) -> Metric:
        met = None if target is None else bool(ratio >= target)
        return cls(label, value, unit, ratio, target, met, note)


@dataclass
class ScenarioResult:
    """Everything one scenario produced: table lines, raw samples, notes, EXPLAIN plans."""

    id: int
    key: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plans: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    #: Why the scenario did not run (a missing service); a skip never fails the run.
    skipped: str | None = None

    def add_series(self, *many: Series) -> None:
        for s in many:
            self.series[s.name] = s.to_json()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "title": self.title,
            "metrics": [asdict(m) for m in self.metrics],
            "series": self.series,
            "params": self.params,
            "notes": self.notes,
            "plans": self.plans,
            "seconds": self.seconds,
            "error": self.error,
            "skipped": self.skipped,
        }


@dataclass
class Sizes:
    """Workload sizes; `--quick` uses small ones that still run every code path."""

    rounds: int
    ingest_events: int
    duplicate_events: int
    group_commit_events: int
    group_commit_tasks: int
    peer_events: int
    projection_events: int
    lag_seconds: float
    nats_events: int
    big_events: int
    memory_events: int
    memory_delay: float

    @classmethod
    def for_mode(cls, quick: bool, events: int | None, rounds: int | None) -> Sizes:
        if quick:
            s = cls(
                2, 20_000, 10_000, 2_000, 200, 10_000, 4_000, 2.0, 10_000, 200_000, 20_000, 0.05
            )
        else:
            s = cls(
                5,
                200_000,
                100_000,
                20_000,
                200,
                100_000,
                200_000,
                30.0,
                60_000,
                10_000_000,
                1_000_000,
                0.2,
            )
        if events is not None:
            s.ingest_events = s.duplicate_events = s.peer_events = s.projection_events = events
            s.nats_events = events
        if rounds is not None:
            s.rounds = rounds
        return s


class Context:
    """What a scenario gets: sizes, scratch databases, a shared cache, progress reporting."""

    def __init__(
        self,
        server_url: str,
        sizes: Sizes,
        console: Console,
        *,
        quick: bool,
        results: dict[int, ScenarioResult],
        nats_url: str = "nats://127.0.0.1:4222",
    ) -> None:
        self.server_url = server_url
        self.nats_url = nats_url
        self.sizes = sizes
        self.console = console
        self.quick = quick
        self.databases = ScratchDatabases(server_url)
        self.cache: dict[str, Any] = {}
        self.results = results
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    @contextmanager
    def progress(self, title: str, total: int) -> Iterator[Callable[[str], None]]:
        """A progress bar for one scenario; yields `tick(description)` to advance it."""
        if not self.console.is_terminal:
            start = time.perf_counter()

            def plain(desc: str) -> None:
                self.console.print(f"  [{time.perf_counter() - start:6.1f}s] {title}: {desc}")

            yield plain
            return
        with Progress(
            TextColumn("{task.fields[title]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            task = progress.add_task("starting", total=total, title=title)

            def tick(desc: str) -> None:
                progress.update(task, advance=1, description=desc)

            yield tick

    def log(self, message: str) -> None:
        self.console.print(f"  {message}")


def format_value(value: float, unit: str) -> str:
    if unit in ("events/s", "events"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:,.2f} ms"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    return f"{value:,.3g} {unit}"


def verdict(m: Metric) -> str:
    if m.met is None:
        return ""
    return f"{'met' if m.met else 'MISSED'} (>= {m.target:g}x)"


def metrics_table(results: Sequence[ScenarioResult]) -> Table:
    table = Table(title="noetl-projector benchmark", show_lines=False)
    for col in ("#", "scenario", "measure", "value", "ratio", "target"):
        table.add_column(col, justify="right" if col in ("value", "ratio") else "left")
    for r in results:
        if r.error:
            table.add_row(str(r.id), r.title, "ERROR", r.error[:60], "", "")
            continue
        if r.skipped:
            table.add_row(str(r.id), r.title, "SKIPPED", r.skipped[:60], "", "")
            continue
        for i, m in enumerate(r.metrics):
            table.add_row(
                str(r.id) if i == 0 else "",
                r.title if i == 0 else "",
                m.label,
                format_value(m.value, m.unit),
                "" if m.ratio is None else f"{m.ratio:.2f}x",
                verdict(m),
            )
    return table
