"""Child process of scenario 9: `python -m bench.memory_child URL EVENTS PRODUCERS`.

Emits EVENTS fresh events through `PostgresEventSink.emit` from PRODUCERS concurrent tasks (more
than the sink's queue holds, so the queue stays full and callers wait for room), then prints one
JSON line: peak RSS (VmHWM, bytes), RSS once the sink was open, the largest queue
length seen, and how long it took. Events are generated lazily, so the producer itself holds only
those its tasks are waiting to hand over.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import time

from projector.pgsink import PostgresEventSink

from .events import execution_events


def _peak_rss() -> int:
    """Peak RSS of this process image: VmHWM from /proc (Linux), else getrusage.

    `getrusage().ru_maxrss` is not used on Linux: it survives fork + exec, so a child started by
    a large parent reports the parent's peak (the first full run measured exactly that).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


async def main(url: str, n: int, producers: int) -> dict[str, float]:
    source = itertools.islice(
        itertools.chain.from_iterable(execution_events() for _ in itertools.count()), n
    )
    async with PostgresEventSink(url, application_name="projector-bench-memory") as sink:
        rss_open = _current_rss()
        max_queue = 0
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal max_queue
            group = sink._group  # the group commit's queue (GroupCommit.queued)
            assert group is not None
            while not stop.is_set():
                max_queue = max(max_queue, group.queued)
                await asyncio.sleep(0.05)

        async def producer() -> None:
            for event in source:
                await sink.emit(event)

        watcher = asyncio.create_task(watch())
        t0 = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(producers)))
        seconds = time.perf_counter() - t0
        stop.set()
        await watcher
        return {
            "events": n,
            "producers": producers,
            "seconds": seconds,
            "rss_open_bytes": rss_open,
            "peak_rss_bytes": _peak_rss(),
            "max_queue": max_queue,
            "max_pending": sink._max_pending,
            "batch_size": sink.batch_size,
            "flushers": sink._flusher_count,
        }


if __name__ == "__main__":
    url, n, producers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(main(url, n, producers))))
