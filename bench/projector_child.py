"""`python -m bench.projector_child URL`: a long-running projector (`Projector.run`, what
`projector project` runs) until SIGTERM; the current transaction finishes first."""

from __future__ import annotations

import asyncio
import signal
import sys

from projector.projection import Projector


async def main(url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await Projector(url).run(stop)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
