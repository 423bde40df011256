"""Garbage-collector settings for a command that moves many small objects, such as `projector
consume`, while it runs (a library never changes its caller's collector).

The bridge allocates a few container objects per message (the parsed JSON, the envelope, the
COPY row), almost all freed by reference counting within the batch. CPython's defaults still run
a young collection every 700 allocations and, every so often, a full one that walks every object
the process holds, including the thousands of modules, classes and pydantic schemas loaded at
start-up: measured on the bridge, ~4 µs of CPU per stored event (a fifth of it). :func:`tuned`
moves what exists when it starts out of the collector's sight (`gc.freeze`) and lets more
allocations pass between young collections; reference cycles are still collected. On exit the
previous settings are back (the CLI also runs in-process, in tests and embedders).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_THRESHOLD", "tuned"]

#: Allocations (net of deallocations) between two young-generation collections (CPython: 700).
YOUNG_THRESHOLD = 10_000


#: The blocks of :func:`tuned` running now, and the settings the first of them found.
_active = 0
_saved: tuple[tuple[int, int, int], bool] | None = None


@contextmanager
def tuned() -> Iterator[None]:
    """Within the block: the objects alive at its start frozen, the young generation's threshold
    at least :data:`YOUNG_THRESHOLD` (a higher one, or 0 = automatic collection off, is kept).
    When the last block running ends (blocks may overlap: two commands run in one process), the
    threshold the first one found is restored and, unless something had frozen objects before,
    the frozen ones are unfrozen."""
    global _active, _saved
    if _active == 0:
        _saved = (gc.get_threshold(), gc.get_freeze_count() == 0)
    _active += 1
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    try:
        yield
    finally:
        _active -= 1
        if _active == 0 and _saved is not None:
            threshold, froze = _saved
            _saved = None
            gc.set_threshold(*threshold)
            if froze:
                gc.unfreeze()
