"""Fixtures the training tests share."""

from types import SimpleNamespace

import pytest

import training.teacher as teacher_module
import training.train as train_module


class TickingClock:
    """A ``time`` for the training loop on which every reading is one second after the last.

    The budget's arithmetic then follows the loop's own readings (an epoch, a validation, the teacher's
    epochs), not how busy the machine running the tests is: on a loaded machine real time gave the teacher
    too few epochs to learn and the budget too few to plan."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> TickingClock:
    clock = TickingClock()
    fake_time = SimpleNamespace(perf_counter=clock.perf_counter)  # anything else the loop reads fails loudly
    monkeypatch.setattr(train_module, "time", fake_time)
    monkeypatch.setattr(teacher_module, "time", fake_time)
    return clock
