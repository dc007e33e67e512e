"""The training loop (var.training.common): schedules, fit, checkpoint files, full disks, resumes and processes."""
import errno
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from var import VQVAE
from var.data import image_folder_dataset
from var.files import leftover_temporaries
from var.training import common
from var.training.common import (CheckpointWriteFailed, DistInfo, Interrupted, NonFiniteLoss, Schedule, fit,
                                 load_checkpoint_file, rng_state)
from conftest import RunsCode, TINY_VAE, batch, full_disk_after, interrupt_at, small_schedule, tiny_trainer


def _fit_with_a_full_disk_on_rank_0(rank: int, init_file: str, out: str, results: dict) -> None:
    """One of two processes training with a checkpoint every 2 steps; the main process's disk is full."""
    from datetime import timedelta
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a hang fails the test instead of blocking it
    try:
        if rank == 0:
            real_save = torch.save

            def no_space(obj, f, *args, **kwargs):  # checkpoints only (collectives pickle with torch.save too)
                if str(f).endswith(".tmp"):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_save(obj, f, *args, **kwargs)
            common.torch.save = no_space
        sched = Schedule(steps=6, batch_size=2, warmup=1, save_every=2, sample_every=100, log_every=100)
        try:
            fit(tiny_trainer(), sched, Path(out), DistInfo(rank, 2), batch)
            results[rank] = "finished"
        except Exception as e:
            results[rank] = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()


TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def test_full_disk_removes_the_partial_file_and_names_the_intact_step(tmp_path, monkeypatch):
    full_disk_after(1, monkeypatch)
    sched = Schedule(steps=4, batch_size=2, warmup=1, save_every=2, sample_every=100, log_every=100)
    with pytest.raises(CheckpointWriteFailed, match=r"cannot write .*checkpoint.pt: No space left on device, .* free on "
                                                    r"its disk \(the checkpoint of step 4\); the checkpoint of step 2 is "
                                                    r"intact"):
        fit(tiny_trainer(), sched, tmp_path, DistInfo(), batch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
    assert load_checkpoint_file(tmp_path / "checkpoint.pt")["step"] == 2


def test_checkpoints_load_without_running_code_and_old_ones_still_load(tmp_path):
    trainer = tiny_trainer()
    trainer.save_checkpoint(tmp_path / "new.pt")
    assert torch.load(tmp_path / "new.pt", weights_only=True)["step"] == 0
    old = trainer.state()  # as the previous code wrote it: numpy's state tuple, with an array inside
    np.random.seed(7)
    old["rng_per_rank"] = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}]
    expected = np.random.rand(3)
    torch.save(old, tmp_path / "old.pt")
    np.random.seed(1)
    common.set_rng_state(load_checkpoint_file(tmp_path / "old.pt")["rng_per_rank"][0])
    assert np.array_equal(np.random.rand(3), expected)
    torch.save({"step": 1, "x": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt holds Python objects other than tensors"):
        load_checkpoint_file(tmp_path / "evil.pt")


@pytest.mark.parametrize("field, value, expected", [
    ("steps", 0, "integer >= 1"), ("batch_size", -4, "integer >= 1"), ("save_every", 0, "integer >= 1"),
    ("sample_every", 0, "integer >= 1"), ("log_every", 0, "integer >= 1"), ("warmup", -1, "integer >= 0"),
    ("lr", 0.0, "learning rate > 0"), ("min_lr_ratio", 1.5, r"ratio in \[0, 1\]"), ("grad_clip", -1.0, ">= 0")])
def test_a_schedule_names_a_bad_value_when_made(field, value, expected):
    with pytest.raises(ValueError, match=rf"{field}={value!r}.*expected .*{expected}"):
        Schedule(**{field: value})


def test_a_failed_checkpoint_on_the_main_process_stops_every_process(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_fit_with_a_full_disk_on_rank_0, args=(str(tmp_path / "init"), str(tmp_path / "run"), results),
                 nprocs=2)
        r0, r1 = results[0], results[1]
    assert r0.startswith("CheckpointWriteFailed") and "No space left on device" in r0, r0
    assert r1 == "TrainingStopped: process 1: stopping, the main process failed (its log says why)", r1


def test_a_checkpoint_failing_as_torch_save_fails_on_a_full_disk_names_the_file_and_the_intact_one(tmp_path,
                                                                                                    monkeypatch):
    """torch.save on a full disk raises RuntimeError("... unexpected pos ..."), not OSError."""
    real, saves = torch.save, []

    def save(obj, path):  # the second checkpoint: part of the file, then torch's error
        saves.append(path)
        if len(saves) == 1:
            return real(obj, path)
        Path(path).write_bytes(b"partial")
        raise RuntimeError(TORCH_FULL_DISK)

    monkeypatch.setattr(common.torch, "save", save)
    sched = Schedule(steps=4, batch_size=2, warmup=1, save_every=2, sample_every=100, log_every=100)
    with pytest.raises(CheckpointWriteFailed) as e:
        fit(tiny_trainer(), sched, tmp_path, DistInfo(), batch)
    assert str(e.value).startswith(f"cannot write {tmp_path / 'checkpoint.pt'}: unexpected pos 576 vs 534, ")
    assert str(e.value).endswith("free on its disk (the checkpoint of step 4); the checkpoint of step 2 is intact")
    assert leftover_temporaries(tmp_path) == [] and load_checkpoint_file(tmp_path / "checkpoint.pt")["step"] == 2


def test_steps_below_the_checkpoints_step_are_refused_naming_both(tmp_path):
    """A run at step 4 re-run with --steps 2 cannot give the 2-step model it asks for; it must not end
    silently as if it had (its exported model is the 4-step one). --steps equal to it is a finished run."""
    sched = dict(batch_size=2, warmup=1, save_every=100, sample_every=100, log_every=100)
    fit(tiny_trainer(), Schedule(steps=4, **sched), tmp_path, DistInfo(), batch)
    fit(tiny_trainer(), Schedule(steps=4, **sched), tmp_path, DistInfo(), batch)  # re-running a finished run
    with pytest.raises(ValueError, match=r"checkpoint.pt is at step 4, past --steps 2"):
        fit(tiny_trainer(), Schedule(steps=2, **sched), tmp_path, DistInfo(), batch)


def test_a_resume_logs_each_step_once_and_drops_a_line_cut_by_the_kill(tmp_path):
    """Steps logged after the last checkpoint run again on resume: kept, they showed twice in metrics.jsonl
    (a curve that turns back in `var plot`), and a line cut short by the kill made the file unreadable."""
    from var.training.plot import read_metrics

    sched = dict(batch_size=2, warmup=1, save_every=2, sample_every=100, log_every=1)
    fit(tiny_trainer(), Schedule(steps=2, **sched), tmp_path, DistInfo(), batch)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # steps 3 and 4 were logged, then the kill (no checkpoint)
        f.write('{"step": 3, "loss": 1.0}\n{"step": 4, "loss": 1.0}\n{"step": 5, "lo')
    fit(tiny_trainer(), Schedule(steps=4, **sched), tmp_path, DistInfo(), batch)
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == [1, 2, 3, 4]


def test_a_resume_that_sees_fewer_gpus_restores_the_states_of_those_it_sees(monkeypatch):
    """A checkpoint of a process that saw 2 GPUs, resumed where 1 is visible: setting the second's state
    failed ('invalid device ordinal'); the GPUs both runs see get theirs."""
    from var.training.common import set_rng_state

    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(device))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.extend(range(len(states))))
    set_rng_state(state)
    assert calls == [0]


def test_lin0_starts_at_0_005x_holds_the_peak_then_falls_linearly_to_wpe():
    """221 steps, 20 of warm-up: the decay phase runs over steps 20..220 (200 intervals); its first 5% (steps
    20..29) holds the peak; step 125 is halfway down from 1 (at 5%) to wpe (at the last step)."""
    s = Schedule(steps=221, warmup=20, lr=2.0, lr_schedule="lin0", min_lr_ratio=0.01)
    expected = {0: 0.005, 10: 0.005 + 0.995 * 0.5, 19: 0.005 + 0.995 * 19 / 20, 20: 1.0, 25: 1.0, 29: 1.0,
                30: 1.0, 31: 0.01 + 0.99 * 0.945 / 0.95, 125: 0.01 + 0.99 * 0.5, 220: 0.01}
    for step, multiplier in expected.items():
        assert s.lr_at(step) == pytest.approx(2.0 * multiplier, rel=1e-12), step
    assert all(s.lr_at(t) > s.lr_at(t + 1) for t in range(30, 220))   # strictly falling after the hold
    assert Schedule(steps=10, warmup=0, lr=1.0, lr_schedule="lin0").lr_at(0) == 1.0


def test_the_cosine_schedule_is_unchanged():
    """The bundled recipe's curve: (step + 1) / warmup, then cosine to min_lr_ratio at step `steps`."""
    s = Schedule(steps=1000, warmup=100, lr=1.0, min_lr_ratio=0.1)
    assert s.lr_at(0) == pytest.approx(0.01) and s.lr_at(99) == pytest.approx(1.0)
    assert s.lr_at(550) == pytest.approx(0.55) and s.lr_at(1000) == pytest.approx(0.1)


def test_weight_decay_anneals_by_a_half_cosine_to_its_final_value():
    s = Schedule(steps=221, weight_decay=0.05, final_weight_decay=0.08)
    assert s.weight_decay_at(0) == 0.05 and s.weight_decay_at(110) == pytest.approx(0.065)
    assert s.weight_decay_at(220) == pytest.approx(0.08)
    assert all(Schedule(steps=221).weight_decay_at(t) == 0.05 for t in (0, 110, 220))
    with pytest.raises(ValueError, match="lr_schedule='lin'"):
        Schedule(lr_schedule="lin")
    with pytest.raises(ValueError, match="weight_decay 0"):
        Schedule(weight_decay=0.0, final_weight_decay=0.08)


@pytest.mark.parametrize("kind", ["vqvae", "var"])
def test_interrupted_and_resumed_run_ends_with_identical_weights(folder, vae_run, tmp_path, kind):
    from var.training.runs import load_vqvae, make_optimizer, VAR_BETAS, VQVAE_BETAS
    from var.training.trainers import VARTrainer, VQVAETrainer
    from var import VAR, VARConfig

    ds = image_folder_dataset(folder, 16)
    vqvae, _ = load_vqvae(vae_run)

    def make_trainer():
        torch.manual_seed(0)
        if kind == "vqvae":
            m = VQVAE(TINY_VAE)
            return VQVAETrainer(m, make_optimizer(m, small_schedule(), VQVAE_BETAS), reinit_every=2, ema_decay=0.9)
        m = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=2, depth=1, embed_dim=32, num_heads=2,
                          patch_nums=(1, 2, 4, 8)))
        return VARTrainer(m, vqvae, make_optimizer(m, small_schedule(), VAR_BETAS), ema_decay=0.9)

    def get_batch(step):
        from var.training.common import batch_indices
        x, y = ds.batch(batch_indices(step, len(ds), 8, 0))
        return x if kind == "vqvae" else (x, y)

    t_full = make_trainer()
    fit(t_full, small_schedule(), tmp_path / "full", DistInfo(), get_batch)
    t_a = make_trainer()
    with pytest.raises(Interrupted) as stopped:
        fit(t_a, small_schedule(), tmp_path / "resumed", DistInfo(), interrupt_at(2, get_batch))
    assert stopped.value.exit_code == 128 + signal.SIGINT
    assert t_a.step == 3  # stopped after finishing step index 2
    t_b = make_trainer()  # a fresh process: same command again
    fit(t_b, small_schedule(), tmp_path / "resumed", DistInfo(), get_batch)
    assert t_b.step == 6
    for name in t_full.modules:
        full, resumed = t_full.modules[name].state_dict(), t_b.modules[name].state_dict()
        for k in full:
            assert torch.equal(full[k], resumed[k]), f"{name}.{k} differs after resume"


def test_nan_loss_stops_and_keeps_the_last_checkpoint(folder, tmp_path):
    from var.training.runs import make_optimizer, VQVAE_BETAS
    from var.training.trainers import VQVAETrainer
    ds = image_folder_dataset(folder, 16)
    torch.manual_seed(0)
    m = VQVAE(TINY_VAE)
    trainer = VQVAETrainer(m, make_optimizer(m, small_schedule(), VQVAE_BETAS))
    sched = Schedule(steps=6, batch_size=8, lr=1e-3, warmup=1, save_every=2, sample_every=100, log_every=1)

    def get_batch(step):
        x, _ = ds.batch(np.arange(8))
        return x * float("nan") if step == 3 else x

    with pytest.raises(NonFiniteLoss, match="step 3"):
        fit(trainer, sched, tmp_path, DistInfo(), get_batch)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["models"]["vqvae"].values() if v.is_floating_point())
