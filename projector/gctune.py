"""Garbage-collector settings for a process that moves many small objects, such as `projector
consume`: its own processes only (a library must not change its caller's collector).

The bridge allocates a few container objects per message (the parsed JSON, the envelope, the
COPY row), almost all freed by reference counting within the batch. CPython's defaults still run
a young collection every 700 allocations and, every so often, a full one that walks every object
the process holds, including the thousands of modules, classes and pydantic schemas loaded at
start-up: measured on the bridge, ~4 µs of CPU per stored event (a fifth of it). :func:`tune`
moves what exists at start-up out of the collector's sight (`gc.freeze`) and lets more
allocations pass between young collections; reference cycles are still collected.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune"]

#: Allocations (net of deallocations) between two young-generation collections (CPython: 700).
YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Freeze the objects alive now and raise the young generation's threshold (never lower
    it); idempotent."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
