"""Sharded training (var.training.fsdp, var train --fsdp): against DDP, resumes, resharding and the export."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from var import VARConfig, VARPipeline
from var.training.common import Schedule

TINY = VARConfig(depth=2, embed_dim=32, num_heads=2, drop_path_rate=0.1)  # label dropout 0.1 too
STEPS, STOP_AT = 4, 2


def _schedule() -> Schedule:  # a clip far below the gradients' norm: every step is clipped
    return Schedule(steps=STEPS, batch_size=8, lr=1e-3, warmup=1, grad_clip=0.05, save_every=2, sample_every=2,
                    log_every=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_in_process(rank: int, world: int, runs: list[tuple[int, dict, int | None]]) -> None:
    """Process ``rank`` of ``world`` trains each of ``runs`` (port, train_var's arguments, the step after which
    SIGTERM stops it, or None) in turn, as torchrun would start it."""
    import torch.distributed as dist
    from var.training import common
    from var.training.common import Interrupted
    from var.training.runs import train_var

    torch.set_num_threads(1)
    real_append = common.append_metrics
    for port, kwargs, stop_at in runs:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))

        def append_then_stop(out, record, stop_at=stop_at):  # as a scheduler's SIGTERM after that step
            real_append(out, record)
            if record["step"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
        common.append_metrics = append_then_stop
        try:
            train_var(**kwargs)
        except Interrupted as e:  # the other process stops with it (the signal reached one process alone)
            assert stop_at is not None and (rank > 0 or e.exit_code == 128 + signal.SIGTERM), e
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    common.append_metrics = real_append


def _spawn(world: int, runs: list, timeout: float = 180) -> None:
    """``runs`` in ``world`` processes; a process that fails or hangs fails the test."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_train_in_process, args=(world, runs), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the {world} training processes did not finish in {timeout} s")


@pytest.fixture(scope="module")
def runs(folder, vae_run, tmp_path_factory):
    """Five runs of 4 steps on 2 processes from one seed: DDP, FSDP, FSDP in bf16, FSDP stopped by SIGTERM
    after step 2 (its folder copied as it was then), and that run resumed."""
    root = tmp_path_factory.mktemp("fsdp")
    common = dict(data=str(folder), vae_dir=vae_run, var_cfg=TINY, schedule=_schedule(), ema=0.9,
                  cache_dir=root / "cache", samples_per_class=1)
    _spawn(2, [(_free_port(), common | dict(out=root / "ddp"), None),
               (_free_port(), common | dict(out=root / "fsdp", fsdp=True), None),
               (_free_port(), common | dict(out=root / "bf16", fsdp=True, dtype="bf16"), None),
               (_free_port(), common | dict(out=root / "stopped", fsdp=True), STOP_AT)])
    shutil.copytree(root / "stopped", root / "at_step_2")
    _spawn(2, [(_free_port(), common | dict(out=root / "stopped", fsdp=True), None)])
    return root, common


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _exported(out: Path) -> dict[str, torch.Tensor]:
    return {name: safetensors.torch.load_file(path) for name, path in
            ((p.name, p) for p in sorted(out.glob("*.safetensors")))}


def test_fsdp_trains_as_ddp_does(runs):
    root, _ = runs
    ddp, fsdp = _losses(root / "ddp"), _losses(root / "fsdp")
    assert sorted(ddp) == sorted(fsdp) == list(range(1, STEPS + 1))
    for step in ddp:
        assert abs(ddp[step] - fsdp[step]) < 1e-4, (step, ddp[step], fsdp[step])
    ddp_files, fsdp_files = _exported(root / "ddp"), _exported(root / "fsdp")
    assert sorted(ddp_files) == sorted(fsdp_files)  # the same folder: a user cannot tell how it was trained
    for name in ddp_files:
        assert ddp_files[name].keys() == fsdp_files[name].keys()
        for key, value in ddp_files[name].items():
            torch.testing.assert_close(fsdp_files[name][key], value, rtol=0, atol=1e-5, msg=f"{name} {key}")
    assert sorted(p.name for p in (root / "ddp").iterdir() if p.name != "checkpoint.pt") == \
        sorted(p.name for p in (root / "fsdp").iterdir() if not p.name.startswith("checkpoint"))


def test_bf16_computes_in_bf16_and_keeps_float32_weights(runs):
    root, _ = runs
    fp32, bf16 = _losses(root / "fsdp"), _losses(root / "bf16")
    assert fp32 != bf16  # another precision: not the same numbers
    for step in fp32:
        assert abs(fp32[step] - bf16[step]) < 0.05, (step, fp32[step], bf16[step])
    assert all(v.dtype == torch.float32 for v in _exported(root / "bf16")["var.safetensors"].values()
               if v.is_floating_point())


def _checkpoint_tensors(out: Path, scratch: Path) -> dict:
    """Every tensor of a sharded run's checkpoint, whole (DCP's own conversion, no process group), and its index."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from var.training.common import load_checkpoint_file

    index = load_checkpoint_file(out / "checkpoint-sharded.pt")
    whole = scratch / f"{out.name}-{index['step']}.pt"
    dcp_to_torch_save(out / "checkpoint-shards" / index["shards"], whole)
    return torch.load(whole, weights_only=True) | {"index": index}


def _states(checkpoint: dict) -> dict:
    return {"models": checkpoint["models"], "optimizers": checkpoint["optimizers"]}


def _flat(tree, prefix=""):
    """(path, tensor) of every tensor in nested dicts, the path's parts joined by "/"."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}/")
        elif isinstance(v, torch.Tensor):
            yield prefix + str(k), v


def test_a_sharded_run_stopped_by_sigterm_resumes_bit_for_bit(runs, tmp_path):
    root, _ = runs
    stopped = _checkpoint_tensors(root / "at_step_2", tmp_path)
    assert stopped["index"]["step"] == STOP_AT and stopped["index"]["world"] == 2
    assert len(stopped["index"]["rng_per_rank"]) == 2
    assert len(list((root / "at_step_2" / "checkpoint-shards").iterdir())) == 1  # the older shards are gone
    assert _losses(root / "stopped") == _losses(root / "fsdp")
    resumed, straight = _checkpoint_tensors(root / "stopped", tmp_path), _checkpoint_tensors(root / "fsdp", tmp_path)
    a, b = dict(_flat(_states(resumed))), dict(_flat(_states(straight)))
    assert a.keys() == b.keys() and any(k.endswith("exp_avg_sq") for k in a) and any("/ema/" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_two_process_checkpoint_resumes_on_one_process(runs, tmp_path, caplog):
    from var.training.runs import train_var

    root, common = runs
    out = tmp_path / "one"
    shutil.copytree(root / "at_step_2", out)
    with caplog.at_level("INFO"):
        train_var(**common | dict(out=out, fsdp=True, schedule=_schedule()))
    assert "resuming" in caplog.text and "the shards of 2 process(es) resharded over 1" in caplog.text
    assert sorted(_losses(out)) == list(range(1, STEPS + 1))
    after = _checkpoint_tensors(out, tmp_path)
    assert after["index"]["world"] == 1 and after["index"]["step"] == STEPS
    assert _losses(out)[STEPS] == pytest.approx(_losses(root / "fsdp")[STEPS], abs=0.05)  # its own batches' split


def test_one_process_loads_the_weights_and_moments_two_wrote(runs, tmp_path):
    """Resharded by DCP, bit for bit: the model, EMA and AdamW state one process loads are those two saved."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    from var import VAR
    from var.training.common import DistInfo
    from var.training.fsdp import process_group_of_one, shard_transformer
    from var.training.runs import VAR_BETAS, load_vqvae, make_optimizer
    from var.training.trainers import VARTrainer

    root, common = runs
    saved = _checkpoint_tensors(root / "at_step_2", tmp_path)
    cfg = VARConfig(**json.loads((root / "at_step_2" / "run.json").read_text())["var"])
    with process_group_of_one(DistInfo(), True):
        var = shard_transformer(VAR(cfg))
        trainer = VARTrainer(var, load_vqvae(common["vae_dir"])[0], make_optimizer(var, _schedule(), VAR_BETAS),
                             ema_decay=0.9)
        trainer.load_checkpoint(root / "at_step_2" / "checkpoint-sharded.pt")
        whole = StateDictOptions(full_state_dict=True)
        loaded = {"models": {k: get_model_state_dict(m, options=whole) for k, m in trainer.modules.items()},
                  "optimizers": {"var": get_optimizer_state_dict(var, trainer.optimizers["var"], options=whole)["state"]}}
    a, b = dict(_flat(loaded)), dict(_flat(_states(saved)))
    assert a.keys() == b.keys() and trainer.step == STOP_AT
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_exported_folder_loads_and_generates(runs):
    root, _ = runs
    pipe = VARPipeline.from_pretrained(root / "fsdp")
    out = pipe(class_labels=[0, 1], seed=0)
    assert out.images.shape[0] == 2 and torch.isfinite(out.images).all()


def test_var_train_fsdp_on_one_process_writes_a_sharded_checkpoint(folder, vae_run, tmp_path):
    from conftest import VAR_ARGS
    from var.cli import main as cli

    out = tmp_path / "run"
    assert cli(["train", "--data", str(folder), "--vae", str(vae_run), "--out", str(out), *VAR_ARGS, "--steps", "2",
                "--batch-size", "4", "--warmup", "1", "--sample-every", "2", "--cache-dir", str(tmp_path / "cache"),
                "--fsdp", "--dtype", "bf16"]) == 0
    assert (out / "checkpoint-sharded.pt").is_file() and not (out / "checkpoint.pt").exists()
    VARPipeline.from_pretrained(out)
    # The same folder without --fsdp: refused, naming the way it resumes.
    with pytest.raises(ValueError, match="checkpoint-sharded.pt, the checkpoint of a run with --fsdp: resume it with"):
        from var.training.common import fit
        from conftest import tiny_trainer, batch
        from var.training.common import DistInfo
        fit(tiny_trainer(), _schedule(), out, DistInfo(), batch)


def test_the_dtypes_of_var_train_are_those_fsdp_knows():
    from conftest import subcommands
    from var.training.fsdp import DTYPES

    dtype = next(a for a in subcommands()["train"]._actions if a.dest == "dtype")
    assert tuple(dtype.choices) == tuple(DTYPES) and dtype.default == "fp32"


def test_bf16_without_fsdp_is_refused_naming_amp(folder, vae_run, tmp_path):
    from var.training.runs import train_var

    with pytest.raises(ValueError, match="--dtype bf16 .* takes --fsdp .*--amp"):
        train_var(str(folder), vae_run, tmp_path / "run", TINY, _schedule(), dtype="bf16")
    assert not (tmp_path / "run" / "run.json").exists()


def test_shard_metadata_that_would_run_code_is_refused(runs, tmp_path):
    import pickle
    from var.training.fsdp import check_shard_metadata

    root, _ = runs
    folder = tmp_path / "step_00000002"
    shutil.copytree(next((root / "fsdp" / "checkpoint-shards").iterdir()), folder)
    check_shard_metadata(folder)  # as written: accepted
    (folder / ".metadata").write_bytes(pickle.dumps(os.system))  # a callable: what a planted pickle calls
    with pytest.raises(ValueError, match="posix.system.*refused"):
        check_shard_metadata(folder)


def test_a_sharded_save_that_fails_names_the_folder_and_keeps_the_last_checkpoint(vae_run, tmp_path, monkeypatch):
    import dataclasses
    import errno
    import torch.distributed.checkpoint.filesystem as dcp_files
    from var import VAR
    from var.training.common import CheckpointWriteFailed, DistInfo, fit, load_checkpoint_file
    from var.training.fsdp import process_group_of_one, shard_transformer
    from var.training.runs import VAR_BETAS, load_vqvae, make_optimizer
    from var.training.trainers import VARTrainer

    vqvae = load_vqvae(vae_run)[0]
    cfg = dataclasses.replace(TINY, vocab_size=vqvae.config.vocab_size, latent_channels=vqvae.config.z_channels,
                              patch_nums=vqvae.config.patch_nums, num_classes=2)

    def trainer() -> VARTrainer:
        torch.manual_seed(0)
        var = shard_transformer(VAR(cfg))
        return VARTrainer(var, vqvae, make_optimizer(var, _schedule(), VAR_BETAS), ema_decay=0.9)

    def batch(step: int):
        g = torch.Generator().manual_seed(step)
        return torch.randint(0, cfg.vocab_size, (4, cfg.seq_len), generator=g), torch.randint(0, 2, (4,), generator=g)

    def schedule(steps: int) -> Schedule:
        return Schedule(steps=steps, batch_size=4, warmup=1, save_every=2, sample_every=100, log_every=100)

    def no_space(*args, **kwargs):  # what a write into a full disk raises
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    with process_group_of_one(DistInfo(), True):
        fit(trainer(), schedule(2), out, DistInfo(), batch)
        monkeypatch.setattr(dcp_files, "_write_item", no_space)
        with pytest.raises(CheckpointWriteFailed, match=r"step_00000004: No space left on device.*\(process 0\) "
                                                        r"\(the checkpoint of step 4\); the checkpoint of step 2 is "
                                                        "intact"):
            fit(trainer(), schedule(4), out, DistInfo(), batch)
        assert load_checkpoint_file(out / "checkpoint-sharded.pt")["step"] == 2
        monkeypatch.undo()
        resumed = trainer()
        fit(resumed, schedule(4), out, DistInfo(), batch)  # from step 2; the unfinished step-4 folder replaced
    assert resumed.step == 4 and load_checkpoint_file(out / "checkpoint-sharded.pt")["step"] == 4
    assert [p.name for p in (out / "checkpoint-shards").iterdir()] == ["step_00000004"]


def test_minutes_with_fsdp_is_refused_naming_steps(folder, vae_run, tmp_path):
    from var.training.runs import train_var

    with pytest.raises(ValueError, match="--minutes 1 .* cannot be copied: with --fsdp give --steps"):
        train_var(str(folder), vae_run, tmp_path / "run", TINY, _schedule(), fsdp=True, minutes=1)
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_gathers_go_back_unless_the_user_set_the_threshold():
    """free_gathers_at_once sets glibc's mmap threshold (process-wide), and leaves a MALLOC_MMAP_THRESHOLD_
    the user gave alone; checked in fresh processes."""
    code = "from var.training.fsdp import free_gathers_at_once; print(free_gathers_at_once())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    ran = [subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout
           for e in (env, {**env, "MALLOC_MMAP_THRESHOLD_": "131072"})]
    assert [r.strip() for r in ran] == ["True", "False"]
