"""What both trainers share: the step loop with exact resume, checkpoints, schedules, distribution.

Resuming is exact because nothing depends on hidden iterator state: the batch of step s is a pure
function of (seed, s) (a per-epoch permutation), and every random generator's state is checkpointed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import signal
import time
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from ..cpu.streams import thread_pool
from ..files import WriteFailed, write_atomically
from ..precision import default_device

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
SHARDED_CHECKPOINT = "checkpoint-sharded.pt"  # the index of a sharded (FSDP) run's checkpoint: see var.training.fsdp
METRICS = "metrics.jsonl"


class TrainingStopped(RuntimeError):
    """A run ended early for a reason the command line reports in one line, exiting with ``exit_code``."""

    exit_code = 1


class NonFiniteLoss(TrainingStopped):
    """The loss became NaN or inf: the run stops, keeping the last good checkpoint."""


class CheckpointWriteFailed(TrainingStopped):
    """Writing a run's checkpoint, exported model, samples or metrics failed (e.g. a full disk): the message
    names the file and the checkpoint that is intact; a temporary file is gone, the previous file whole."""


class Interrupted(TrainingStopped):
    """SIGINT or SIGTERM stopped the run after saving a checkpoint. The exit status is the shell's
    128 + signal (130, 143), so that schedulers see the run did not finish and requeue it."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}, checkpoint saved; re-run the same command "
                         "to resume")
        self.exit_code = 128 + signum


LR_SCHEDULES = ("cos", "lin0")
LIN0_WARMUP_START, LIN0_HOLD = 0.005, 0.05  # the reference's wp0, and the share of the decay phase held at peak


@dataclass
class Schedule:
    """A training run's optimisation schedule: length, batch, learning-rate and weight-decay curves, and how
    often to log, write samples and checkpoint. Checked when made, so a bad value is named before any work.

    ``lr_schedule`` "cos": linear warm-up from lr / warmup to lr, then cosine decay to lr x ``min_lr_ratio``.
    "lin0" (the reference's default): warm-up from lr x 0.005 to lr, the peak held for the first 5% of the
    rest, then a linear decay to lr x ``min_lr_ratio`` at the last step. With either, the weight decay goes
    from ``weight_decay`` at the first step to ``final_weight_decay`` (None: the same, constant) at the last
    by a half cosine, as the reference's does."""
    steps: int = 1000
    batch_size: int = 64            # global: the sum of every process's local batch
    lr: float = 3e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1       # the decay ends at lr * min_lr_ratio (the reference's --wpe)
    weight_decay: float = 0.05
    grad_clip: float = 2.0
    seed: int = 0
    save_every: int = 500
    sample_every: int = 500
    log_every: int = 10
    lr_schedule: str = "cos"
    final_weight_decay: float | None = None  # the reference's --twde

    def __post_init__(self) -> None:
        counts = {"steps": self.steps, "batch_size": self.batch_size, "save_every": self.save_every,
                  "sample_every": self.sample_every, "log_every": self.log_every}
        for name, value in counts.items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"Schedule.{name}={value!r}: expected an integer >= 1")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"Schedule.warmup={self.warmup!r}: expected an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"Schedule.lr={self.lr!r}: expected a learning rate > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"Schedule.min_lr_ratio={self.min_lr_ratio!r}: expected a ratio in [0, 1]")
        if not (self.weight_decay >= 0 and self.grad_clip >= 0):
            raise ValueError(f"Schedule weight_decay={self.weight_decay!r}, grad_clip={self.grad_clip!r}: "
                             "expected values >= 0 (grad_clip 0: no clipping)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"Schedule.lr_schedule={self.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
        if self.final_weight_decay is not None and not self.final_weight_decay >= 0:
            raise ValueError(f"Schedule.final_weight_decay={self.final_weight_decay!r}: expected a value >= 0 "
                             "(None: the weight decay stays constant)")
        if self.weight_decay == 0 and self.final_weight_decay:
            raise ValueError(f"Schedule.final_weight_decay={self.final_weight_decay!r} with weight_decay 0: the "
                             "groups decayed are those made with a weight decay, so none would be; expected a "
                             "weight_decay > 0 to anneal from")

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step`` (0-based) under ``lr_schedule``."""
        if self.lr_schedule == "lin0":
            return self.lr * self._lin0(step)
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    def _lin0(self, step: int) -> float:
        """lin0's multiplier of lr: 0.005 at step 0 rising linearly to 1 at ``warmup``, 1 while the decay
        phase is less than 5% done, then linear to ``min_lr_ratio`` at the last step (``steps - 1``)."""
        if step < self.warmup:
            return LIN0_WARMUP_START + (1 - LIN0_WARMUP_START) * step / self.warmup
        done = min(1.0, (step - self.warmup) / max(1, self.steps - 1 - self.warmup))
        if done < LIN0_HOLD:
            return 1.0
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * (1 - done) / (1 - LIN0_HOLD)

    def weight_decay_at(self, step: int) -> float:
        """The weight decay of ``step``: ``weight_decay`` to ``final_weight_decay`` by a half cosine over the run."""
        if self.final_weight_decay is None:
            return self.weight_decay
        done = min(1.0, step / max(1, self.steps - 1))
        span = self.weight_decay - self.final_weight_decay
        return self.final_weight_decay + span * 0.5 * (1 + math.cos(math.pi * done))


@dataclass
class DistInfo:
    """Where this process trains: its rank among ``world`` processes (torchrun) and its device."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = device or default_device()
    if world == 1:
        return DistInfo(0, 1, torch.device(want))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, dev)


def local_batch_size(global_batch: int, world: int) -> int:
    """Each process's share of the global batch; ValueError when it does not divide evenly."""
    if global_batch % world:
        raise ValueError(f"--batch-size {global_batch} is not divisible by the {world} processes")
    return global_batch // world


def batch_indices(step: int, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """The data indices of ``step`` for process ``rank``: epoch e uses permutation(seed, e), sliced
    into consecutive global batches (the last partial one dropped); each process takes every
    ``world``-th item of the global batch."""
    if global_batch > n:
        raise ValueError(f"batch size {global_batch} is larger than the data set ({n} images)")
    per_epoch = n // global_batch
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * global_batch:(i + 1) * global_batch][rank::world]


class Prefetcher:
    """``get_batch`` with the next ``depth`` steps' batches read by a background thread while the current
    step trains (memory-mapped reads, decoding, augmentation), the loader's work overlapping the step's.
    The batches are the same ones: ``get_batch`` is a function of the step alone. Steps from ``end`` on are
    never read ahead. The thread's PyTorch ops run single-threaded (:func:`var.cpu.streams.thread_pool`), so it
    does not take cores from the step. A context manager: leaving it stops the thread and drops what it read
    ahead."""

    def __init__(self, get_batch: Callable[[int], Any], depth: int = 2, end: int | None = None):
        self.get_batch, self.depth, self.end = get_batch, depth, end
        self._exit = ExitStack()
        self.pool = self._exit.enter_context(thread_pool(1, 1, "var-prefetch"))
        self.pending: dict[int, Future] = {}

    def __call__(self, step: int) -> Any:
        for s in [s for s in self.pending if s < step]:  # not asked for (a repeated or skipped step)
            self.pending.pop(s).cancel()
        last = step + self.depth if self.end is None else min(step + self.depth, self.end - 1)
        for s in range(step, max(step, last) + 1):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(self.get_batch, s)
        return self.pending.pop(step).result()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.pending.clear()
        self._exit.close()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint. A failed
    write (e.g. a full disk) removes the temporary file and raises :class:`var.files.WriteFailed`."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict:
    """Every generator's state as tensors and plain numbers, so checkpoints load with ``weights_only=True``."""
    np_state = np.random.get_state(legacy=False)
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s states (also the numpy tuple of checkpoints written before it)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np_state = ("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
                    np_state["gauss"])
    np.random.set_state(np_state)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as both runs see (a resume may see fewer)
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# What checkpoints written before the states were stored as tensors hold besides tensors: numpy's RNG state.
_NP_CORE = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed it
_LEGACY_CHECKPOINT_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _NP_CORE.multiarray._reconstruct]


def load_checkpoint_file(path: Path) -> dict:
    """A training checkpoint, read with ``weights_only=True``: a run folder from someone else cannot run
    code. Older checkpoints (numpy arrays inside) load with just those numpy types allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is truncated or not a training checkpoint ({e}); move it away to start over") from e
    try:
        with torch.serialization.safe_globals(_LEGACY_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds Python objects other than tensors and RNG states (loading it would run "
                         "code): refused") from e


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (then it saves and exits)."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        log.warning("stop requested (signal %d): saving a checkpoint after this step", signum)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def append_metrics(out: Path, record: dict) -> None:
    """Append one JSON line to the run's metrics.jsonl; :class:`var.files.WriteFailed` when it cannot be written."""
    try:
        with open(out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise WriteFailed.from_error(out / METRICS, e) from e


def drop_metrics_after(out: Path, step: int) -> int:
    """Remove from metrics.jsonl the records of steps after ``step`` and any line cut short by a kill: a run
    resumed from its step-``step`` checkpoint logs those steps again, and kept they would show twice (a
    curve that turns back). Returns how many lines went."""
    path = out / METRICS
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        write_atomically(path, lambda tmp: tmp.write_text("".join(kept)))
    return len(lines) - len(kept)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every process if it is True on any (a stop request on one rank stops them all)."""
    if info.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=info.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_rng_states(info: DistInfo) -> list[dict]:
    """Every process's RNG states, in rank order (each rank draws its own label dropout)."""
    if info.world == 1:
        return [rng_state()]
    states: list = [None] * info.world
    dist.all_gather_object(states, rng_state())
    return states


def check_replicas_in_sync(modules: dict, info: DistInfo) -> None:
    """Under DDP every process must hold the same weights; a mismatch is a bug worth stopping for."""
    if info.world == 1:
        return
    total = torch.zeros(1, dtype=torch.float64, device=info.device)
    for m in modules.values():
        for p in m.parameters():
            total += p.detach().double().abs().sum()
    gathered = [torch.zeros_like(total) for _ in range(info.world)]
    dist.all_gather(gathered, total)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"processes hold different weights: checksums {[g.item() for g in gathered]}")


def fit(trainer, schedule: Schedule, out: Path, info: DistInfo, get_batch: Callable[[int], Any],
        on_snapshot: Callable[[int], None] | None = None, images_per_step: int | None = None) -> dict:
    """Run ``trainer.train_step`` from the checkpointed step (or 0) to ``schedule.steps``, under ``schedule``'s
    learning rate and weight decay.

    Saves a checkpoint (``trainer.checkpoint_name``; a sharded trainer's is written by every process) every
    ``save_every`` steps, at the end and on SIGINT/SIGTERM (then raises :class:`Interrupted`); ValueError when
    ``out`` holds the other kind of checkpoint (a run started with or without --fsdp); a non-finite loss
    raises :class:`NonFiniteLoss` before any weight is changed by it, a file of the run that cannot be written
    (checkpoint, snapshot, metrics) :class:`CheckpointWriteFailed` naming the file and the step whose
    checkpoint is intact. Snapshots run inside ``trainer.full_weights``, which every process enters.
    """
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / trainer.checkpoint_name
    _refuse_other_kind_of_checkpoint(ckpt)
    saved_step = None  # the step of the checkpoint on disk
    if ckpt.exists():
        trainer.load_checkpoint(ckpt, info.rank)
        saved_step = trainer.step
        if saved_step > schedule.steps:  # else the run would end at once, its step-`saved_step` model kept
            raise ValueError(f"{ckpt} is at step {saved_step}, past --steps {schedule.steps}: a run does not go "
                             f"back; give --steps {saved_step} or more to resume it, or start a new --out")
        if info.is_main:
            log.info("resuming %s from step %d", ckpt, trainer.step)
            dropped = drop_metrics_after(out, saved_step)
            if dropped:
                log.info("dropped %d metrics record(s) logged after the checkpoint: those steps run again", dropped)
    images_per_step = images_per_step or schedule.batch_size
    trainer.schedule = schedule  # each step takes its learning rate and weight decay from it
    last: dict = {}
    with StopRequest() as stop, tqdm(total=schedule.steps, initial=trainer.step, disable=not info.is_main,
                                      desc=out.name, unit="step", dynamic_ncols=True) as bar:
        t0, s0 = time.perf_counter(), trainer.step
        while trainer.step < schedule.steps:
            step = trainer.step
            last = trainer.train_step(get_batch(step))  # raises NonFiniteLoss; step advances only on success
            bar.update(1)
            done = trainer.step
            if done % schedule.log_every == 0 or done == schedule.steps:
                rate = (done - s0) * images_per_step / max(1e-9, time.perf_counter() - t0)
                last.update(step=done, lr=schedule.lr_at(step), images_per_s=rate)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", img_s=f"{rate:.0f}")
                _on_main_process(_stop_if_unwritable(lambda: append_metrics(out, last), f"the metrics of step {done}",
                                                     saved_step), info)
            if on_snapshot is not None and (done % schedule.sample_every == 0 or done == schedule.steps):
                with trainer.full_weights(info):  # sharded weights are gathered by every process
                    _on_main_process(_stop_if_unwritable(lambda: on_snapshot(done), f"the snapshot of step {done}",
                                                         saved_step), info)
            stopping = any_rank(stop.requested, info)
            if done % schedule.save_every == 0 or done == schedule.steps or stopping:
                if not trainer.sharded:
                    check_replicas_in_sync(trainer.modules, info)
                states = gather_rng_states(info)
                save = _stop_if_unwritable(lambda: trainer.save_checkpoint(ckpt, states),
                                           f"the checkpoint of step {done}", saved_step)
                (_on_every_process if trainer.sharded else _on_main_process)(save, info)
                saved_step = done
                if stopping:
                    if info.world > 1:
                        dist.barrier()  # every process waits for the checkpoint before any of them exits
                    raise Interrupted(stop.signum, done)
    return last


def _on_main_process(work: Callable[[], None], info: DistInfo) -> None:
    """Run ``work`` (writing files) on the main process alone. When it fails, every process stops: the
    main one with its error, the others with :class:`TrainingStopped`; they would otherwise wait forever
    for the main one at the next step's gradient exchange."""
    _stop_all_if_one_fails(work if info.is_main else (lambda: None), info, "the main process")


def _on_every_process(work: Callable[[], None], info: DistInfo) -> None:
    """Run ``work`` (writing each process's part of the files) on every process. When it fails on one, every
    process stops: those where it failed with their error, the others with :class:`TrainingStopped`."""
    _stop_all_if_one_fails(work, info, "another process")


def _stop_all_if_one_fails(work: Callable[[], None], info: DistInfo, who: str) -> None:
    """Run ``work`` here; if it failed on any process, re-raise its error where it failed and stop the others
    with :class:`TrainingStopped` naming ``who`` failed."""
    error = None
    try:
        work()
    except Exception as e:  # re-raised below, after the other processes have been told
        error = e
    if any_rank(error is not None, info):
        if error is not None:
            raise error
        raise TrainingStopped(f"process {info.rank}: stopping, {who} failed (its log says why)")


def _refuse_other_kind_of_checkpoint(ckpt: Path) -> None:
    """ValueError when the run folder holds the other kind of checkpoint than ``ckpt`` and not ``ckpt``: a run
    resumes with or without --fsdp as it started."""
    other = ckpt.with_name(SHARDED_CHECKPOINT if ckpt.name == CHECKPOINT else CHECKPOINT)
    if other.exists() and not ckpt.exists():
        how = "without --fsdp" if other.name == CHECKPOINT else "with --fsdp"
        raise ValueError(f"{other.parent} holds {other.name}, the checkpoint of a run {how}: resume it {how}, "
                         "or start a new --out")


def _stop_if_unwritable(write: Callable[[], None], what: str, saved_step: int | None) -> Callable[[], None]:
    """``write`` (``what`` of the run), its :class:`var.files.WriteFailed` turned into :class:`CheckpointWriteFailed`
    that also names the checkpoint still intact (step ``saved_step``, or none yet)."""
    def run() -> None:
        try:
            write()
        except WriteFailed as e:
            intact = f"the checkpoint of step {saved_step} is intact" if saved_step is not None else \
                "no checkpoint exists yet"
            raise CheckpointWriteFailed(f"{e} ({what}); {intact}") from e
    return run

