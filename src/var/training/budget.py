"""Training for a time budget (``--minutes``): the number of steps chosen by timing a few steps first.

The steps are fixed once, at the first start, and kept in the run folder's ``budget.json``: a resumed run
trains the same schedule (so it resumes exactly), whatever the machine's speed by then.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from ..files import write_atomically
from .common import DistInfo, Schedule, rng_state, set_rng_state

log = logging.getLogger(__name__)

BUDGET_JSON = "budget.json"
TIMED_STEPS, UNTIMED_STEPS = 6, 2     # steps timed, after steps left out (the first ones allocate and warm up)
SNAPSHOT_SHARE = 0.1                  # of the budget left for snapshots, checkpoints and the held-out checks
MIN_STEPS = 20
SNAPSHOTS = 6                         # snapshots (samples, exports, checkpoints) in a budget run


def seconds_per_step(trainer: Any, get_batch: Callable[[int], Any]) -> float:
    """The median time of a training step of ``trainer`` on the batches of steps 0, 1, ... (a copy of the
    trainer is trained: ``trainer`` and every random generator are left as they were)."""
    states = rng_state()
    probe = copy.deepcopy(trainer)
    times = []
    try:
        for step in range(UNTIMED_STEPS + TIMED_STEPS):
            batch = get_batch(step)
            start = time.perf_counter()
            probe.train_step(batch)
            times.append(time.perf_counter() - start)
    finally:
        set_rng_state(states)
        del probe
    return statistics.median(times[UNTIMED_STEPS:])


def schedule_for_minutes(out: Path, schedule: Schedule, minutes: float, trainer: Any,
                         get_batch: Callable[[int], Any], info: DistInfo) -> Schedule:
    """``schedule`` with as many steps as fit in ``minutes``, :data:`SNAPSHOTS` snapshots and checkpoints spread
    over them and a warm-up of at most a tenth of them (a longer one is shortened), chosen at the
    run's first start by :func:`seconds_per_step` and read back from ``out/budget.json`` when resuming.
    ValueError for ``minutes`` <= 0, and under torchrun (each process would time its own steps)."""
    if not minutes > 0:
        raise ValueError(f"--minutes {minutes}: expected a time budget > 0")
    if info.world > 1:
        raise ValueError("--minutes times the steps of one process; under torchrun give --steps instead")
    path = out / BUDGET_JSON
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["minutes"] != minutes:
            log.warning("%s: this run was planned for %g minutes (%d steps); resuming with that plan, not "
                        "--minutes %g", path, saved["minutes"], saved["steps"], minutes)
        steps = saved["steps"]
        log.info("resuming a --minutes %g run: %d steps, chosen at its start", saved["minutes"], steps)
    else:
        per_step = max(seconds_per_step(trainer, get_batch), 1e-6)
        steps = max(MIN_STEPS, int(minutes * 60 * (1 - SNAPSHOT_SHARE) / per_step))
        record = {"minutes": minutes, "seconds_per_step": per_step, "steps": steps}
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
        log.info("--minutes %g: a step takes %.2f s here (timed over %d steps), so the run trains %d steps "
                 "(%.0f%% of the time left for snapshots and checkpoints); saved in %s, which a resume keeps",
                 minutes, per_step, TIMED_STEPS, steps, 100 * SNAPSHOT_SHARE, path)
    every = max(1, steps // SNAPSHOTS)
    warmup = schedule.warmup
    if warmup > steps // 10:
        warmup = max(1, steps // 10)
        log.info("warm-up %d steps of %d (a tenth of the run; %d would take more)", warmup, steps, schedule.warmup)
    return dataclasses.replace(schedule, steps=steps, warmup=warmup, save_every=every, sample_every=every)
