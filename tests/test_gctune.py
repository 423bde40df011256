"""`projector.gctune`: the collector settings `projector consume` runs with."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from projector import gctune


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tuned_freezes_what_is_alive_raises_the_young_threshold_and_restores_both() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    with gctune.tuned():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (gctune.YOUNG_THRESHOLD, 10, 10)
        # Cycles made meanwhile are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restored_gc")
def test_tuned_keeps_a_higher_or_disabled_threshold_and_an_earlier_freeze() -> None:
    gc.set_threshold(50_000, 5, 5)
    with gctune.tuned():
        assert gc.get_threshold() == (50_000, 5, 5)
    gc.set_threshold(0, 5, 5)  # 0 disables automatic collection: left so
    with gctune.tuned():
        assert gc.get_threshold() == (0, 5, 5)
    gc.set_threshold(700, 5, 5)
    gc.freeze()  # someone else froze first: their freeze stays
    frozen = gc.get_freeze_count()
    assert frozen > 0
    with pytest.raises(RuntimeError), gctune.tuned():
        raise RuntimeError("the command failed")
    assert gc.get_freeze_count() >= frozen
    assert gc.get_threshold() == (700, 5, 5)


def test_overlapping_blocks_restore_what_the_first_found() -> None:
    """Two commands in one process whose blocks overlap without nesting."""
    before = gc.get_threshold()
    a, b = gctune.tuned(), gctune.tuned()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert gc.get_threshold()[0] >= gctune.YOUNG_THRESHOLD  # b still runs
    b.__exit__(None, None, None)
    assert gc.get_threshold() == before
