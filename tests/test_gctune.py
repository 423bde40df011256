"""`projector.gctune`: the collector settings `projector consume` applies to its own process."""

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
def test_tune_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    gctune.tune()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (gctune.YOUNG_THRESHOLD, 10, 10)
    # Cycles made afterwards are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


@pytest.mark.usefixtures("restored_gc")
def test_tune_never_lowers_a_higher_threshold_nor_enables_a_disabled_one() -> None:
    gc.set_threshold(50_000, 5, 5)
    gctune.tune()
    assert gc.get_threshold() == (50_000, 5, 5)
    gc.set_threshold(0, 5, 5)  # 0 disables automatic collection: left so
    gctune.tune()
    assert gc.get_threshold() == (0, 5, 5)
