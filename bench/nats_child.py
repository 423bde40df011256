"""Publisher process of scenario 10: ``python -m bench.nats_child NATS_URL STREAM PREFIX EVENTS``.

Plays a worker: builds EVENTS fresh events (untimed), opens a `NatsEventSink`, prints ``ready``,
waits for a line on stdin (the scenario starts its clock as it writes it), publishes the events with
`emit_many` in lists of `BATCH` (each call returns once JetStream acknowledged all of them) and
prints one JSON line: ``{"events": N, "seconds": S, "cpu_seconds": C}`` (go -> last
acknowledgement; C is this process's user + system CPU time over the same span, from
``getrusage``).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from projector import NatsEventSink

from .events import fresh_events

BATCH = 2_000


async def main(url: str, stream: str, prefix: str, n: int) -> None:
    events = fresh_events(n)
    async with NatsEventSink(url, stream=stream, subject_prefix=prefix) as sink:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        start, cpu = time.perf_counter(), _cpu()
        for i in range(0, n, BATCH):
            await sink.emit_many(events[i : i + BATCH])
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    print(json.dumps({"events": n, "seconds": seconds, "cpu_seconds": cpu}), flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
