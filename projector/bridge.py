"""The `projector consume` bridge: JetStream -> `noetl.event`, effectively once.

A durable pull consumer (default ``projector``) on the stream hands out batches; each batch goes to
`PostgresEventSink.emit_many` as raw envelopes, and every message is acknowledged only after the
transaction holding its event committed. Delivery is at least once, the sink is idempotent, so the
stored result is exactly once:

* stored or already stored (a redelivery, counted) or conflicting (same id, other content; counted
  and logged, the stored row kept): ``ack``;
* not a valid envelope: stored in ``noetl.event_rejected`` (raw bytes, ``nats:<subject>`` as
  source, the stream sequence as position, the reason) in the same transaction, then ``term``;
* a message may carry many events, as upstream's publisher sends them (``{"events": [...]}``,
  ``{"event": {...}}``, see :func:`projector.jsonstream.split`): every event is stored and the
  message is acknowledged once all are committed; an invalid one is rejected with the message's
  sequence as position and ``event k of n:`` in its reason (the message is termed only when none
  of its events could be stored). Identical id-less events of one message are distinct events
  (:class:`projector.envelope.Occurrences`, per message);
* PostgreSQL unavailable after the sink's own retries: no ack; the batch is ``nak``-ed with a delay
  and the bridge backs off (a :class:`~projector.backoff.Backoff`: 1 s doubling to 30 s, reset by
  the next success; the current delay is also the ``nak`` delay) and goes on; while a batch is
  being written the bridge tells JetStream it is still in progress, so slow retries don't cause
  early redelivery.

Fetching does not use nats-py's ``fetch`` (which spends ~80 µs a message on timers and queues):
`projector.jspull.PullConsumer` requests batches itself on a private inbox (``no_wait`` first, a
waiting ``expires`` request only when nothing is there), takes the messages before nats-py builds
``Msg`` objects (a :func:`projector.natswire.tap`), treats JetStream status messages (404, 408, 409,
heartbeats) as the end of a request, and writes a batch's acks as one buffer; the next batch is
fetched while the current one is written. A batch ends when it is full or the server says no more
are there, and every message of it is written and then acked (or termed) exactly as described above.

Several bridges on the same durable consumer split the work. `stop()` (SIGINT/SIGTERM in the CLI)
stops fetching; the batch in flight is finished and acknowledged. A bridge killed outright loses
nothing: its unacknowledged messages are redelivered after the consumer's ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from .backoff import Backoff
from .batch import BatchResult
from .envelope import Occurrences
from .errors import DatabaseUnavailable, ProjectorError
from .ingest import envelope_of
from .jetstream import (
    DEFAULT_DURABLE,
    DEFAULT_NATS_URL,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    check_prefix,
    connect,
    ensure_stream,
    require_stream,
    translate_nats,
)
from .jsonstream import ENVELOPE_START, Piece, Position, split
from .jspull import ACK, PROGRESS, TERM, PullConsumer, Pulled, ack_positions, nak_payload
from .pgsink import PostgresEventSink, RawEnvelope

__all__ = ["BatchObserver", "Bridge", "BridgeConfig", "BridgeStats"]

log = logging.getLogger(__name__)

#: Called after each batch stored: its result, the seconds `emit_many` took, its messages
#: (:class:`projector.metrics.ConsumeMetrics.on_batch`).
BatchObserver = Callable[[BatchResult, float, Sequence[Pulled]], None]

#: The bridge's back-off while PostgreSQL is unavailable: 1 s doubling to this many seconds.
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class BridgeConfig:
    """Settings of one bridge; the defaults are the CLI's."""

    nats_url: str = DEFAULT_NATS_URL
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    durable: str = DEFAULT_DURABLE
    #: Messages fetched (and written in one transaction) at a time.
    batch: int = 2000
    #: Batches written at once, so one batch's validation overlaps another's transaction.
    in_flight: int = 2
    #: How long one fetch waits for messages; also bounds how quickly a stop request is seen.
    fetch_timeout: float = 1.0
    #: Seconds between progress log lines (0: none).
    log_interval: float = 10.0
    #: Seconds between readings of the consumer's pending counts (the lag that metrics and
    #: /readyz report), taken whatever the loop is doing, so a bridge stuck storing shows it.
    lag_interval: float = 5.0
    #: Consumer settings, used only when this bridge creates the durable consumer.
    ack_wait: float = 30.0
    max_ack_pending: int = 20_000
    #: How long the PostgreSQL sink retries one batch before the bridge naks it and backs off.
    db_retry_for: float = 60.0
    #: Stop once the consumer has nothing pending and nothing unacknowledged.
    until_empty: bool = False
    #: Create the stream (with the default limits) when it is missing.
    create_stream: bool = False


@dataclass
class BridgeStats:
    """What a bridge did; `summary()` is the `--json` output."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    redelivered: int = 0
    batches: int = 0
    db_failures: int = 0
    pending: int | None = None
    ack_pending: int | None = None
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        """JSON-ready counters plus elapsed seconds and the storing rate."""
        data = asdict(self)
        seconds = time.monotonic() - data.pop("started")
        data["seconds"] = round(seconds, 3)
        handled = self.stored + self.duplicates + self.conflicts
        data["events_per_second"] = round(handled / seconds, 1) if seconds > 0 else 0.0
        return data

    def line(self) -> str:
        """The progress log line."""
        s = self.summary()
        return (
            f"stored={s['stored']} duplicates={s['duplicates']} conflicts={s['conflicts']} "
            f"rejected={s['rejected']} redelivered={s['redelivered']} pending={s['pending']} "
            f"ack_pending={s['ack_pending']} rate={s['events_per_second']}/s"
        )


_new = object.__new__


def _raw_envelope(raw: bytes, source: str, position: int | None) -> RawEnvelope:
    """`RawEnvelope(raw, source, position)` without the frozen dataclass's `__init__` (three
    `object.__setattr__` calls: a third of the bridge's own work per message); the same object."""
    made: RawEnvelope = _new(RawEnvelope)
    fields = made.__dict__
    fields["raw"] = raw
    fields["source"] = source
    fields["position"] = position
    return made


class Bridge:
    """Moves events from a JetStream durable consumer into PostgreSQL (module docstring)."""

    def __init__(
        self,
        database_url: str,
        config: BridgeConfig | None = None,
        *,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.database_url = database_url
        self.config = config or BridgeConfig()
        self.on_batch = on_batch
        check_prefix(self.config.subject_prefix)
        self.stats = BridgeStats()
        self._stop = asyncio.Event()
        # While PostgreSQL is unavailable: 1 s doubling to MAX_BACKOFF, reset by a success;
        # each delay is also the redelivery delay asked for the batch that failed.
        self._backoff = Backoff(1.0, factor=2.0, cap=MAX_BACKOFF)

    def stop(self) -> None:
        """Ask the bridge to stop fetching; the batch in flight is still finished."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stop.is_set()

    def _db_failed(self) -> float:
        """Count a PostgreSQL failure; the seconds to back off before going on."""
        self.stats.db_failures += 1
        delay = self._backoff.next_delay()
        return self._backoff.cap if delay is None else delay  # no deadline: never None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when a stop is requested."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _ensure_consumer(self, js: Any) -> None:
        cfg = self.config
        try:
            await js.consumer_info(cfg.stream, cfg.durable)
            return
        except nats.js.errors.NotFoundError:
            pass
        consumer = api.ConsumerConfig(
            durable_name=cfg.durable,
            name=cfg.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=cfg.ack_wait,
            max_ack_pending=cfg.max_ack_pending,
            filter_subject=f"{cfg.subject_prefix}.>",
        )
        await js.add_consumer(cfg.stream, consumer)
        log.info("created durable consumer %s on stream %s", cfg.durable, cfg.stream)

    async def run(self) -> BridgeStats:
        """Consume until `stop()` (or, with `until_empty`, until nothing is left); return stats.

        Raises only the project's errors: NATS errors that end the bridge pass through
        :func:`~projector.jetstream.translate_nats` (PostgreSQL's are the sink's to translate).
        """
        cfg = self.config
        try:
            return await self._run()
        except ProjectorError:
            raise
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise translate_nats(exc, f"consuming {cfg.stream}/{cfg.durable}") from exc

    async def _run(self) -> BridgeStats:
        cfg = self.config
        nc = await connect(cfg.nats_url, name=f"noetl-projector-bridge:{cfg.durable}")
        try:
            js = nc.jetstream()
            try:
                if cfg.create_stream:
                    await ensure_stream(js, cfg.stream, cfg.subject_prefix)
                else:
                    await require_stream(js, cfg.stream)
                await self._ensure_consumer(js)
                puller = PullConsumer(nc, cfg.stream, cfg.durable)
                await puller.start()
            except ProjectorError:
                raise
            except Exception as exc:
                raise translate_nats(exc, f"binding to consumer {cfg.durable!r}") from exc
            try:
                watcher = asyncio.create_task(self._watch_lag(js))
                try:
                    sink = await self._open_sink()
                    if sink is not None:
                        try:
                            await self._loop(js, puller, sink)
                        finally:
                            await sink.close()
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                await self._refresh_lag(js)
            finally:
                await puller.close()
        finally:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=5)
            with contextlib.suppress(Exception):
                await nc.close()
        log.info("bridge stopped: %s", self.stats.line())
        return self.stats

    async def _open_sink(self) -> PostgresEventSink | None:
        """Open the PostgreSQL sink, waiting (with backoff) while the database is unavailable."""
        while not self.stopping:
            sink = PostgresEventSink(
                self.database_url,
                retry_for=self.config.db_retry_for,
                application_name="projector-consume",
            )
            try:
                await sink.open()
                self._backoff.reset()
                return sink
            except DatabaseUnavailable as exc:
                delay = self._db_failed()
                log.warning("PostgreSQL unavailable (%s); retrying in %.0fs", exc, delay)
                await self._sleep(delay)
        return None

    async def _fetch(self, puller: PullConsumer) -> list[Pulled]:
        """One batch (empty when nothing came within `fetch_timeout`; with `until_empty`, when
        nothing is there right now)."""
        cfg = self.config
        try:
            return await puller.fetch(cfg.batch, 0.0 if cfg.until_empty else cfg.fetch_timeout)
        except (nats.errors.Error, OSError) as exc:
            log.warning("fetch from %s/%s failed: %s; retrying", cfg.stream, cfg.durable, exc)
            await self._sleep(1.0)
            return []

    async def _loop(self, js: Any, puller: PullConsumer, sink: PostgresEventSink) -> None:
        """Fetch the next batch while earlier ones are written; stop between batches.

        Up to `in_flight` batches are written at once, so one batch's validation (CPU in this
        process) overlaps another's transaction (CPU in PostgreSQL). A batch that was fetched is
        always written and acknowledged, even after `stop()`.
        """
        cfg = self.config
        next_log = time.monotonic() + cfg.log_interval
        prefetch: asyncio.Task[list[Pulled]] | None = None
        writing: set[asyncio.Task[None]] = set()

        async def settle(until: int) -> None:
            while len(writing) > until:
                done, _ = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    writing.discard(task)
                    task.result()  # a failure of the bridge itself stops it

        try:
            while prefetch is not None or not self.stopping:
                if prefetch is None:
                    prefetch = asyncio.create_task(self._fetch(puller))
                msgs = await prefetch
                prefetch = None
                if msgs:
                    await settle(cfg.in_flight - 1)
                    if not self.stopping:
                        prefetch = asyncio.create_task(self._fetch(puller))
                    writing.add(asyncio.create_task(self._handle(puller, msgs, sink)))
                if cfg.log_interval > 0 and time.monotonic() >= next_log:
                    # pending / ack_pending as _watch_lag last read them (at most lag_interval old)
                    log.info("bridge %s/%s: %s", cfg.stream, cfg.durable, self.stats.line())
                    next_log = time.monotonic() + cfg.log_interval
                if cfg.until_empty and not msgs and prefetch is None:
                    await settle(0)
                    await self._refresh_lag(js)
                    if self.stats.pending == 0 and self.stats.ack_pending == 0:
                        break
                    # Another bridge holds the rest unacknowledged (or the lag is unknown).
                    await self._sleep(0.05)
            await settle(0)
        finally:
            if prefetch is not None:  # only on errors: its messages are redelivered after ack_wait
                prefetch.cancel()
                with contextlib.suppress(BaseException):
                    await prefetch
            if writing:  # only on errors: let the batches being written finish and be acked
                await asyncio.gather(*writing, return_exceptions=True)

    async def _watch_lag(self, js: Any) -> None:
        """Read the consumer's pending counts every `lag_interval` seconds until cancelled."""
        while self.config.lag_interval > 0:
            await asyncio.sleep(self.config.lag_interval)
            await self._refresh_lag(js)

    async def _refresh_lag(self, js: Any) -> None:
        try:
            info = await js.consumer_info(self.config.stream, self.config.durable)
        except Exception as exc:  # lag is informative only; never stop the bridge for it
            log.debug("consumer info unavailable: %s", exc)
            return
        self.stats.pending = info.num_pending
        self.stats.ack_pending = info.num_ack_pending

    async def _keep_in_progress(self, puller: PullConsumer, msgs: Sequence[Pulled]) -> None:
        """Tell JetStream the batch is still being worked on, so it is not redelivered early."""
        interval = max(self.config.ack_wait / 3, 0.5)
        try:
            while True:
                await asyncio.sleep(interval)
                await puller.reply_all(msgs, PROGRESS)
        except (nats.errors.Error, OSError) as exc:  # redelivery is harmless; just say so
            log.warning("could not extend the batch's ack deadline: %s", exc)

    async def _handle(
        self, puller: PullConsumer, msgs: Sequence[Pulled], sink: PostgresEventSink
    ) -> None:
        cfg = self.config
        items: list[RawEnvelope] = []
        append = items.append
        #: The index of the message each item came from, when some message held several.
        owners: list[int] | None = None
        # A reply subject that is not from JetStream's pull API: still stored, no position.
        sequences, redelivered, pending = ack_positions(msgs)
        sources: dict[bytes, str] = {}  # (a batch holds a few subjects, many times each)
        for m, (subject, _, data) in enumerate(msgs):
            sequence = sequences[m]
            source = sources.get(subject)
            if source is None:
                # A subject is any bytes but white space, not always UTF-8: kept with \x escapes.
                source = sources[subject] = "nats:" + subject.decode("utf-8", "backslashreplace")
            parts = None if data.startswith(ENVELOPE_START) else split(data)
            if parts is None:
                append(_raw_envelope(data, source, sequence))
                if owners is not None:
                    owners.append(m)
                continue
            if owners is None:
                owners = list(range(len(items)))
            occurrences = Occurrences()
            position = Position("element", sequence or 0)
            for k, part in enumerate(parts, start=1):
                piece = Piece(position, part, wrapped=(k, len(parts)))
                append(RawEnvelope(envelope_of(piece, occurrences), source, sequence))
                owners.append(m)
        self.stats.redelivered += redelivered
        keepalive = asyncio.create_task(self._keep_in_progress(puller, msgs))
        began = time.perf_counter()
        try:
            result = await sink.emit_many(items, source=f"nats:{cfg.stream}")
        except DatabaseUnavailable as exc:
            delay = self._db_failed()
            log.warning(
                "PostgreSQL unavailable (%s); %d messages left unacknowledged, retrying in %.0fs",
                exc,
                len(msgs),
                delay,
            )
            with contextlib.suppress(Exception):
                await puller.reply_all(msgs, nak_payload(delay))
            await self._sleep(delay)
            return
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        self._backoff.reset()
        if self.on_batch is not None:
            self.on_batch(result, time.perf_counter() - began, msgs)
        if owners is None:  # one event a message
            if result.rejected:
                outcomes = list(zip(msgs, result.outcomes, strict=True))
                await puller.reply_all([m for m, o in outcomes if o != "rejected"], ACK)
                await puller.reply_all([m for m, o in outcomes if o == "rejected"], TERM)
            else:
                await puller.reply_all(msgs, ACK)
        else:  # a message is termed only when none of its events could be stored
            stored = [False] * len(msgs)
            for owner, outcome in zip(owners, result.outcomes, strict=True):
                stored[owner] = stored[owner] or outcome != "rejected"
            held = set(owners)
            await puller.reply_all(
                [msg for m, msg in enumerate(msgs) if stored[m] or m not in held], ACK
            )
            await puller.reply_all(
                [msg for m, msg in enumerate(msgs) if m in held and not stored[m]], TERM
            )
        # One round trip makes sure the server has every acknowledgement before we go on.
        with contextlib.suppress(Exception):
            await puller.flush(5)
        self.stats.batches += 1
        self.stats.stored += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.conflicts += result.conflicts
        self.stats.rejected += len(result.rejected)
        for rejection in result.rejected:
            owner = rejection.position if owners is None else owners[rejection.position]
            log.warning(
                "rejected message %s on %s: %s",
                items[rejection.position].position,
                items[rejection.position].source,
                rejection.reason,
            )
        for execution_id, event_id in result.conflict_ids:
            log.warning(
                "event %r of execution %r was redelivered with different content; kept the "
                "stored row",
                event_id,
                execution_id,
            )
        if pending is not None:
            self.stats.pending = pending
