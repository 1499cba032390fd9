"""The time budget of slow integration tests (MKOSI_TEST_SLOW_BUDGET, see tools/run-tests)."""

from __future__ import annotations

import time
from typing import Optional

import pytest

from tests.integration.conftest import pytest_runtest_setup, slow_deadline


class Item:
    """What the hook reads of a test item: its markers."""

    def __init__(self, *markers: str) -> None:
        self.markers = markers

    def get_closest_marker(self, name: str) -> Optional[str]:
        return name if name in self.markers else None


def setup(item: Item) -> None:
    pytest_runtest_setup(item)  # type: ignore[arg-type]


def test_without_a_deadline_every_test_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MKOSI_TEST_SLOW_DEADLINE", raising=False)
    assert slow_deadline() is None
    setup(Item("slow"))
    setup(Item())


def test_after_the_deadline_slow_tests_are_skipped_and_the_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKOSI_TEST_SLOW_DEADLINE", str(time.time() - 1))
    with pytest.raises(pytest.skip.Exception, match="time budget for slow tests"):
        setup(Item("slow", "integration"))
    setup(Item("integration"))
    monkeypatch.setenv("MKOSI_TEST_SLOW_DEADLINE", str(time.time() + 3600))
    setup(Item("slow"))
