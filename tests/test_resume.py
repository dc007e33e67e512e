"""Resume and save edge cases: re-running the same command, a tokenizer swapped before the first snapshot,
a save killed part-way, --steps below the checkpoint's step, more processes than the checkpoint knew."""
import logging
import shutil

import pytest
import safetensors.torch
import torch

from var import VARPipeline
from var.cli import main as cli
from var.training.common import DistInfo, Schedule, fit, rng_state
from conftest import VAE_ARGS, VAR_ARGS, batch, other_tokenizer, small_pipe, tiny_trainer


class Killed(BaseException):
    """Stands for the process being killed in the middle of writing a file."""


def kill_mid_write(monkeypatch) -> None:
    """safetensors' save_file writes half of its file, then the process 'dies'."""
    real = safetensors.torch.save_file

    def half_then_die(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        with open(filename, "rb") as f:
            data = f.read()
        with open(filename, "wb") as f:
            f.write(data[:len(data) // 2])
        raise Killed

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_die)


def test_resuming_with_the_same_command_warns_of_nothing_and_reads_the_data_once(folder, tmp_path, caplog,
                                                                                  monkeypatch):
    """run.json holds the config as JSON (lists); the command's has tuples. The same command must not be
    told it changed the model, and the tokenizer run must not decode its image folder twice."""
    from var.training import runs

    calls = []
    real = runs._training_and_heldout
    monkeypatch.setattr(runs, "_training_and_heldout", lambda *a: calls.append(a) or real(*a))

    def train_vae(steps):
        return cli(["train-vae", "--data", str(folder), "--out", str(tmp_path / "vae"), *VAE_ARGS, "--steps", steps,
                    "--batch-size", "8", "--warmup", "1", "--sample-every", "100", "--adv-weight", "0"])

    assert train_vae("1") == 0
    calls.clear()
    caplog.set_level(logging.INFO)
    assert train_vae("2") == 0
    assert "ignored" not in caplog.text and len(calls) == 1


def test_a_resume_before_the_first_snapshot_still_refuses_another_tokenizer(folder, vae_run, tmp_path, caplog):
    """Until the first snapshot the run folder holds no tokenizer to compare with: the one run.json names is
    the reference then, and a tokenizer making other tokens is refused as it is later."""
    other_tokenizer(vae_run, folder, tmp_path / "other")
    out = tmp_path / "var"

    def train_var(vae, steps):
        return cli(["train", "--data", str(folder), "--vae", str(vae), "--out", str(out), *VAR_ARGS, "--steps", steps,
                    "--batch-size", "8", "--warmup", "1", "--sample-every", "100",
                    "--cache-dir", str(tmp_path / "cache")])

    assert train_var(vae_run, "1") == 0
    for name in ("config.json", "var.safetensors", "vqvae.safetensors"):  # as if stopped before its first snapshot
        (out / name).unlink()
    assert train_var(tmp_path / "other", "2") == 2
    assert f"the tokenizer {tmp_path / 'other'} is not the one {out} trains on (encoder." in caplog.text
    moved = tmp_path / "same-tokenizer"
    shutil.copytree(vae_run, moved)
    assert train_var(moved, "2") == 0  # the same tokenizer from another folder still resumes


def test_a_pipeline_save_killed_part_way_leaves_the_previous_weights_loadable(tmp_path, monkeypatch):
    """Training snapshots overwrite the run's pipeline; a kill during the write must not leave truncated
    weights (the exported model lost, and a VAR run unable to resume: it reads its saved tokenizer)."""
    pipe = small_pipe()
    folder = pipe.save_pretrained(tmp_path / "model")
    before = VARPipeline.from_pretrained(folder).var.state_dict()
    kill_mid_write(monkeypatch)
    with pytest.raises(Killed):
        pipe.save_pretrained(folder)
    after = VARPipeline.from_pretrained(folder).var.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_tokenizer_export_killed_part_way_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    from var.training.runs import export_vqvae, load_vqvae

    vqvae = small_pipe().vqvae
    export_vqvae(vqvae, tmp_path, None, "data")
    kill_mid_write(monkeypatch)
    with pytest.raises(Killed):
        export_vqvae(vqvae, tmp_path, None, "data")
    assert load_vqvae(tmp_path)[0].token_side_difference(vqvae) is None


def test_steps_below_the_checkpoints_step_are_refused_naming_both(tmp_path):
    """A run at step 4 re-run with --steps 2 cannot give the 2-step model it asks for; it must not end
    silently as if it had (its exported model is the 4-step one). --steps equal to it is a finished run."""
    sched = dict(batch_size=2, warmup=1, save_every=100, sample_every=100, log_every=100)
    fit(tiny_trainer(), Schedule(steps=4, **sched), tmp_path, DistInfo(), batch)
    fit(tiny_trainer(), Schedule(steps=4, **sched), tmp_path, DistInfo(), batch)  # re-running a finished run
    with pytest.raises(ValueError, match=r"checkpoint.pt is at step 4, past --steps 2"):
        fit(tiny_trainer(), Schedule(steps=2, **sched), tmp_path, DistInfo(), batch)


def test_processes_the_checkpoint_has_no_rng_state_for_draw_their_own_numbers(tmp_path):
    """Resuming a 1-process run with 2 processes: each process must still draw its own label dropout, not
    every one the main process's numbers; and the same on every resume."""
    trainer = tiny_trainer()
    torch.manual_seed(0)
    trainer.save_checkpoint(tmp_path / "ckpt.pt", [rng_state()])
    draws = []
    for rank in (0, 1, 1):
        trainer.load_checkpoint(tmp_path / "ckpt.pt", rank)
        draws.append(torch.rand(8))
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[1], draws[2])


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
