"""The Prometheus metrics of `projector project` and `projector consume`.

Each process (each test, too) holds its own :class:`prometheus_client.CollectorRegistry`, never
the library's global one. The code that does the work knows nothing of Prometheus: the projector
calls an optional ``on_chunk(result, seconds)`` after each transaction
(:class:`projector.projection.Projector`), the bridge an optional ``on_batch(result, seconds,
messages)`` after each batch it stored (:class:`projector.bridge.Bridge`), and the bridge's event
counters are read from its :class:`~projector.bridge.BridgeStats` when Prometheus scrapes, so the
sink's hot path gains nothing but one call per batch.

`project` (:class:`ProjectMetrics`):

* ``noetl_projector_events_projected_total``, ``noetl_projector_chunks_total``;
* ``noetl_projector_projector_chunk_duration_seconds`` (histogram, one observation a transaction);
* ``noetl_projector_checkpoint_position`` (the txid the projection has read up to);
* ``noetl_projector_projection_lag_seconds`` (how long the oldest unprojected event has been
  stored) and ``noetl_projector_projection_lag_events`` (events not projected yet, counted up to
  :data:`projector.health.LAG_COUNT_CAP`), refreshed by the health monitor.

`consume` (:class:`ConsumeMetrics`):

* ``noetl_projector_events_stored_total``, ``..._duplicate_total``, ``..._conflict_total``,
  ``..._rejected_total``, ``noetl_projector_nats_redeliveries_total``;
* ``noetl_projector_sink_batch_duration_seconds`` (histogram, one observation a stored batch);
* ``noetl_projector_nats_pending`` (messages the durable consumer has not delivered yet) and
  ``noetl_projector_nats_lag_seconds`` (0 when every message is stored and acknowledged; else
  the age, by JetStream's timestamp, of the newest message stored).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .batch import BatchResult
from .bridge import BridgeStats
from .jspull import Pulled
from .projection import ChunkResult

__all__ = ["ConsumeMetrics", "ProjectMetrics", "stream_timestamp"]

PREFIX: Final = "noetl_projector"
#: Seconds: a transaction of the projector or a batch of the sink (milliseconds to a minute).
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class ProjectMetrics:
    """The metrics of `projector project`; :meth:`on_chunk` is the projector's observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.projected = Counter(
            f"{PREFIX}_events_projected", "Events projected into the state tables.", registry=r
        )
        self.chunks = Counter(
            f"{PREFIX}_chunks", "Projector transactions that projected events.", registry=r
        )
        self.chunk_seconds = Histogram(
            f"{PREFIX}_projector_chunk_duration_seconds",
            "Seconds per projector transaction that projected events.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.checkpoint = Gauge(
            f"{PREFIX}_checkpoint_position",
            "The projection's checkpoint: every event with a lower txid is projected.",
            registry=r,
        )
        self.lag_seconds = Gauge(
            f"{PREFIX}_projection_lag_seconds",
            "Seconds since the oldest event not projected yet was stored (0: caught up).",
            registry=r,
        )
        self.lag_events = Gauge(
            f"{PREFIX}_projection_lag_events",
            "Events stored and not projected yet (counted up to a cap).",
            registry=r,
        )

    def on_chunk(self, result: ChunkResult, seconds: float) -> None:
        """Count one projector transaction (the observer :class:`Projector` calls)."""
        self.checkpoint.set(result.position)
        if result.events:
            self.projected.inc(result.events)
            self.chunks.inc()
            self.chunk_seconds.observe(seconds)

    def set_lag(self, position: int | None, seconds: float, events: int) -> None:
        """The figures of the last lag query (:func:`projector.health.projection_lag`)."""
        if position is not None:
            self.checkpoint.set(position)
        self.lag_seconds.set(seconds)
        self.lag_events.set(events)


def stream_timestamp(reply: bytes) -> float | None:
    """JetStream's timestamp (seconds since the epoch) of a message, from its ``$JS.ACK``
    reply subject (both forms, see :func:`projector.jspull.ack_info`); None for another reply."""
    t = reply.split(b".")
    token = t[7] if len(t) == 9 else t[9] if len(t) >= 11 else None
    try:
        return int(token) / 1e9 if token is not None else None
    except ValueError:
        return None


class _StatsCollector(Collector):
    """The bridge's counters, read from its stats when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], BridgeStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        figures = (
            ("events_stored", "Events stored in noetl.event.", "stored"),
            ("events_duplicate", "Events already stored (redeliveries, re-sends).", "duplicates"),
            ("events_conflict", "Events whose id was stored with other content.", "conflicts"),
            ("events_rejected", "Messages or events rejected as invalid.", "rejected"),
            ("nats_redeliveries", "Messages JetStream delivered more than once.", "redelivered"),
        )
        for name, doc, attr in figures:
            value = getattr(stats, attr) if stats is not None else 0
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class ConsumeMetrics:
    """The metrics of `projector consume`; :meth:`on_batch` is the bridge's observer.

    `stats` returns the bridge's counters (None before there is a bridge).
    """

    def __init__(
        self,
        stats: Callable[[], BridgeStats | None],
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._stats = stats
        self._clock = clock
        self._started = clock()
        #: JetStream's timestamp of the newest message stored (None: none yet).
        self.newest: float | None = None
        r = self.registry
        r.register(_StatsCollector(stats))
        self.batch_seconds = Histogram(
            f"{PREFIX}_sink_batch_duration_seconds",
            "Seconds per batch written by the PostgreSQL sink (one transaction).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        pending = Gauge(
            f"{PREFIX}_nats_pending",
            "Messages of the durable consumer not delivered yet (last seen).",
            registry=r,
        )
        pending.set_function(lambda: float(self.pending() or 0))
        lag = Gauge(
            f"{PREFIX}_nats_lag_seconds",
            "0 when every message is stored and acknowledged; else the age of the newest "
            "message stored.",
            registry=r,
        )
        lag.set_function(self.lag_seconds)

    def pending(self) -> int | None:
        """Messages not delivered yet, as the bridge last saw it (None: not known yet)."""
        stats = self._stats()
        return stats.pending if stats is not None else None

    def on_batch(self, result: BatchResult, seconds: float, messages: Sequence[Pulled]) -> None:
        """Time one stored batch (the observer :class:`Bridge` calls)."""
        self.batch_seconds.observe(seconds)
        if messages:
            stamp = stream_timestamp(messages[-1][1])
            if stamp is not None and (self.newest is None or stamp > self.newest):
                self.newest = stamp

    def outstanding(self) -> int | None:
        """Messages not stored yet: not delivered, or delivered and not acknowledged (a batch
        being written, or one a stuck bridge holds), as last seen (None: not known yet)."""
        stats = self._stats()
        if stats is None or stats.pending is None:
            return None
        return stats.pending + (stats.ack_pending or 0)

    def lag_seconds(self) -> float:
        """How far behind the bridge is: 0 when every message is stored and acknowledged (or the
        bridge has not heard yet), else the age of the newest message stored (since the start
        when none was)."""
        if not self.outstanding():  # nothing outstanding, or not known yet
            return 0.0
        since = self.newest if self.newest is not None else self._started
        return max(0.0, self._clock() - since)
