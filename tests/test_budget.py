"""--minutes: the steps chosen by timing a few steps, kept for a resume; the trainer and RNGs left alone."""
import json
import logging

import pytest
import torch

from var.training import budget
from var.training.common import DistInfo, Schedule


class FakeClock:
    """time.perf_counter for the budget module: advances ``seconds_per_step`` for every training step."""

    def __init__(self, seconds_per_step: float):
        self.now, self.per_step = 0.0, seconds_per_step

    def __call__(self) -> float:
        return self.now

    def __deepcopy__(self, memo) -> "FakeClock":  # the timed copy of a trainer shares the one clock
        return self


class CountingTrainer:
    """A trainer whose steps draw random numbers and count, and take the fake clock's time."""

    def __init__(self, clock: FakeClock):
        self.clock, self.step, self.seen = clock, 0, []

    def train_step(self, batch) -> dict:
        torch.rand(3)
        self.step += 1
        self.seen.append(batch)
        self.clock.now += self.clock.per_step
        return {}


def plan(tmp_path, minutes, clock, monkeypatch, warmup=100, info=DistInfo()):
    monkeypatch.setattr(budget.time, "perf_counter", clock)
    trainer = CountingTrainer(clock)
    schedule = Schedule(steps=5000, batch_size=4, warmup=warmup, save_every=500, sample_every=500)
    return trainer, budget.schedule_for_minutes(tmp_path, schedule, minutes, trainer, lambda s: s, info)


def test_the_steps_fit_the_budget_and_a_resume_keeps_them(tmp_path, monkeypatch, caplog):
    clock = FakeClock(0.5)
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    trainer, s = plan(tmp_path, 10, clock, monkeypatch)
    # 10 minutes, 10% kept for snapshots, 0.5 s a step: 1,080 steps; 6 snapshots; warm-up 100 <= a tenth.
    assert s.steps == 1080 and s.save_every == s.sample_every == 180 and s.warmup == 100
    assert trainer.step == 0 and trainer.seen == []       # a copy was timed, on the batches of steps 0, 1, ...
    assert torch.equal(torch.rand(3), expected_next)       # the random generators are as they were
    assert json.loads((tmp_path / "budget.json").read_text())["steps"] == 1080

    slower = FakeClock(2.0)  # a resume on a slower machine, with another --minutes: the plan stays
    with caplog.at_level(logging.WARNING):
        _, resumed = plan(tmp_path, 20, slower, monkeypatch)
    assert resumed.steps == 1080 and slower.now == 0.0  # nothing timed
    assert "planned for 10 minutes" in caplog.text


def test_a_warmup_longer_than_a_tenth_of_the_planned_run_is_shortened(tmp_path, monkeypatch):
    _, s = plan(tmp_path, 1, FakeClock(0.5), monkeypatch, warmup=400)   # 108 steps
    assert (s.steps, s.warmup) == (108, 10)


def test_a_tiny_budget_still_trains_a_few_steps(tmp_path, monkeypatch):
    _, s = plan(tmp_path, 0.01, FakeClock(5.0), monkeypatch)
    assert s.steps == budget.MIN_STEPS


@pytest.mark.parametrize("minutes, info, message", [(0, DistInfo(), "expected a time budget > 0"),
                                                    (5, DistInfo(0, 2), "under torchrun give --steps")])
def test_budgets_that_cannot_be_planned_are_refused(tmp_path, monkeypatch, minutes, info, message):
    with pytest.raises(ValueError, match=message):
        plan(tmp_path, minutes, FakeClock(0.5), monkeypatch, info=info)
    assert not (tmp_path / "budget.json").exists()
