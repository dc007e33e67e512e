"""Training runs (var.training.runs): resume, run locks, run.json, storage faults, crops, optimizers, token caches."""
import errno
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from var import VAR, VARConfig, VARPipeline, VQVAE, VQVAEConfig
from var.cli import main as cli
from var.data import image_folder_dataset
from var.files import FolderLock, leftover_temporaries
from var.training import common
from var.training.common import DistInfo, load_checkpoint_file
from conftest import (TINY_VAE, VAE_ARGS, VAR_ARGS, error_lines, full_disk_after, hold_lock, make_folder,
                      other_tokenizer, small_schedule)


def _sharp_folder(root, side: int = 40, n: int = 4):
    """Images with one-pixel detail: random black and white pixels (the hardest case for any resize)."""
    rng = np.random.default_rng(0)
    d = root / "a"
    d.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(((rng.random((side, side, 3)) > 0.5) * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def _detail(x: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels: what blurring takes away."""
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def _idx_folder(root, images: np.ndarray):
    """A Fashion-MNIST-style folder of IDX files holding ``images`` (N, h, w) for both splits."""
    root.mkdir()
    labels = np.arange(len(images), dtype=np.uint8) % 2
    for split, (img_name, lbl_name) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        head = bytes([0, 0, 8, 3]) + np.array(images.shape, ">u4").tobytes()
        (root / (img_name + ".gz")).write_bytes(gzip.compress(head + images.tobytes()))
        (root / (lbl_name + ".gz")).write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + np.array([len(labels)], ">u4")
                                                              .tobytes() + labels.tobytes()))
    return root


_ONE_BY_ONE_CONV_UNDER_DDP = """
import copy, os, socket, sys, torch
import torch.distributed as dist
from var.training.common import DistInfo
from var.training.runs import _wrap
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
dist.init_process_group("gloo", rank=0, world_size=1)
torch.manual_seed(0)
conv = torch.nn.Conv2d(64, 32, 1)
plain = copy.deepcopy(conv)
ddp = _wrap(conv, DistInfo(world=2)) if sys.argv[1] == "wrap" else torch.nn.parallel.DistributedDataParallel(conv)
x = torch.randn(32, 64, 28, 28).contiguous(memory_format=torch.channels_last)  # as the decoder's activations
ddp(x).sum().backward()
plain(x).sum().backward()
assert torch.equal(conv.weight.grad, plain.weight.grad)
dist.destroy_process_group()
"""


TRAIN_VAE = [*VAE_ARGS, "--batch-size", "4", "--warmup", "1", "--adv-weight", "0", "--sample-every", "100"]


def test_weight_decay_spares_positions_levels_and_temperatures():
    from var.training.runs import make_optimizer, VAR_BETAS, VQVAE_BETAS
    from var.training.common import Schedule
    var = VAR(VARConfig(vocab_size=48, latent_channels=8, num_classes=5, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=(1, 2, 3), shared_aln=True))
    opt = make_optimizer(var, Schedule(weight_decay=0.05), VAR_BETAS)
    names = {id(p): n for n, p in var.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    spared = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0
    assert {"pos_start", "pos_1LC", "lvl_embed.weight", "blocks.0.attn.scale_mul_1H11", "blocks.1.ada_gss",
            "blocks.0.attn.q_bias"} <= spared
    assert {"class_emb.weight", "blocks.0.attn.mat_qkv.weight", "head.weight", "shared_ada_lin.1.weight"} <= decayed
    assert decayed.isdisjoint(spared) and len(decayed) + len(spared) == len(names)
    vae = VQVAE(VQVAEConfig(in_channels=1, ch=32, ch_mult=(1, 2), z_channels=8, vocab_size=48, patch_nums=(1, 2, 4)))
    opt = make_optimizer(vae, Schedule(), VQVAE_BETAS)
    vae_names = {id(p): n for n, p in vae.named_parameters()}
    assert "quantize.embedding.weight" in {vae_names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_cli_training_on_a_full_disk_exits_non_zero_with_one_line(tmp_path, monkeypatch, caplog):
    full_disk_after(0, monkeypatch)
    data = make_folder(tmp_path / "data", n_per_class=4)
    rc = cli(["train-vae", "--data", str(data), "--out", str(tmp_path / "run"), *VAE_ARGS, "--steps", "2",
              "--batch-size", "4", "--warmup", "1", "--sample-every", "100"])
    assert rc == 1
    assert "No space left on device" in caplog.text and "no checkpoint exists yet" in caplog.text
    assert "Traceback" not in caplog.text and not list((tmp_path / "run").glob("*.tmp"))


def test_sigterm_saves_and_exits_143(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", n_per_class=4)
    real, sent = common.append_metrics, []

    def metrics_then_sigterm(out, record):  # the first logged step: as if a scheduler stopped the job
        real(out, record)
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(common, "append_metrics", metrics_then_sigterm)
    rc = cli(["train-vae", "--data", str(data), "--out", str(tmp_path / "run"), *VAE_ARGS, "--steps", "20",
              "--batch-size", "4", "--warmup", "1", "--log-every", "1", "--sample-every", "100"])
    assert rc == 128 + signal.SIGTERM
    assert load_checkpoint_file(tmp_path / "run" / "checkpoint.pt")["step"] == 1


def test_cli_training_whose_export_hits_a_full_disk_exits_with_one_line(tmp_path, monkeypatch, caplog):
    def no_space(tensors, filename, *args, **kwargs):  # what safetensors raises on a full disk
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    data, out = make_folder(tmp_path / "data", n_per_class=4), tmp_path / "run"
    assert cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", "2",
                "--sample-every", "2"]) == 1
    [line] = error_lines(caplog)
    assert line.startswith(f"cannot write {out / 'vqvae.safetensors'}: Error while serializing: I/O error: No space "
                           "left on device (os error 28), ")
    assert line.endswith("free on its disk (the snapshot of step 2); no checkpoint exists yet")
    assert leftover_temporaries(out) == [] and not (out / "run.lock").exists()


def test_cli_training_that_cannot_write_run_json_exits_with_one_line(tmp_path, small_disk, monkeypatch, caplog):
    data = make_folder(tmp_path / "data", n_per_class=4)
    disk = small_disk("4k")  # one page: the lock file takes it
    if disk is None:
        disk, real = tmp_path, Path.write_text

        def no_space(path, text, *args, **kwargs):
            if not path.name.startswith("run.json"):
                return real(path, text, *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(Path, "write_text", no_space)
    out = disk / "run"
    assert cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", "2"]) == 1
    [line] = error_lines(caplog)
    assert line.startswith(f"cannot write {out / 'run.json'}: No space left on device, ")
    assert line.endswith(" free on its disk (the run's configuration); no checkpoint exists yet")
    assert sorted(os.listdir(out)) == []  # no temporary file, and the lock released


@pytest.mark.parametrize("text, reason", [
    ('{"kind": "vqvae", ', "is not valid JSON (Expecting property name"),
    ("[1, 2]", "holds a JSON list, expected an object"),
    ('{"kind": "var", "data": "x", "vae": "v", "var": {}}', "is not the configuration of a var train-vae run"),
    ('{"kind": "vqvae", "data": "x"}', "lacks vqvae")])
def test_an_invalid_run_json_is_named_with_the_reason(tmp_path, caplog, text, reason):
    data, out = make_folder(tmp_path / "data", n_per_class=4), tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(text)
    assert cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", "2"]) == 2
    [line] = error_lines(caplog)
    assert line.startswith(f"error: {out / 'run.json'} {reason}"), line


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


def test_crops_of_an_image_folder_are_the_sources_lanczos_resize_then_crop(tmp_path):
    """What --crop trains on equals Pillow's Lanczos resize of each file to 18 px (1.125 x 16) cut at the
    step's offsets: as sharp as the reference's crops, sharper than enlarging a 16 px decode."""
    from var.data import enlarge_for_crop, image_folder_dataset
    from var.training.runs import _transformer_images, random_crops
    folder = _sharp_folder(tmp_path / "sharp")
    ds = _transformer_images(str(folder), TINY_VAE, crop=True)
    offsets = torch.tensor([[0, 2], [1, 0], [2, 2], [1, 1]])
    got = random_crops(ds, 16)(np.arange(4), None, offsets)
    files = sorted((folder / "a").iterdir())
    want = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((18, 18), Image.LANCZOS)
                                                    .crop((j, i, j + 16, i + 16)), np.float32) / 255).permute(2, 0, 1)
                        for f, (i, j) in zip(files, offsets.tolist())])
    assert torch.equal(got, want)
    upsampled = enlarge_for_crop(image_folder_dataset(folder, 16).images, 18)   # a 16 px decode, enlarged
    soft = torch.from_numpy(upsampled[:, :16, :16]).permute(0, 3, 1, 2).float() / 255
    assert _detail(got) > 1.3 * _detail(soft)


def test_a_source_smaller_than_the_crops_is_enlarged_with_lanczos_and_a_warning_names_the_sizes(tmp_path, caplog):
    """Fashion-MNIST holds its images at the model's size (here 16 px for a 16 px model): nothing larger
    exists, so each is enlarged to 18 px with the crops' Lanczos filter, as the reference enlarges small
    images, and a warning names the images' size and the crops' (not refused: the reference trains so)."""
    import dataclasses

    from var.training.runs import _transformer_images, random_crops
    rng = np.random.default_rng(1)
    images = ((rng.random((4, 16, 16)) > 0.5) * 255).astype(np.uint8)
    folder = _idx_folder(tmp_path / "fmnist", images)
    gray = dataclasses.replace(TINY_VAE, in_channels=1)
    ds = _transformer_images(str(folder), gray, crop=True)
    assert ds.images.shape[1:] == (16, 16, 1)
    with caplog.at_level(logging.WARNING):
        crops = random_crops(ds, 16, str(folder))
    assert "16x16 images, smaller than the 18x18 that random 16x16 crops are cut from" in caplog.text
    assert str(folder) in caplog.text
    got = crops(np.arange(2), torch.tensor([True, False]), torch.tensor([[2, 1], [0, 0]]))
    want = [np.asarray(Image.fromarray(img).resize((18, 18), Image.LANCZOS), np.float32) / 255 for img in images[:2]]
    assert torch.equal(got[0, 0], torch.from_numpy(want[0][2:18, 1:17]).flip(-1))
    assert torch.equal(got[1, 0], torch.from_numpy(want[1][0:16, 0:16]))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        random_crops(_transformer_images(str(_sharp_folder(tmp_path / "large")), TINY_VAE, crop=True), 16)
    assert "smaller than" not in caplog.text   # decoded from larger files: no warning


@pytest.mark.parametrize("wrapper", ["wrap", "bare"])
def test_ddp_gets_a_1x1_convs_gradient_in_its_own_layout(wrapper):
    """A 1x1 conv on channels-last activations (the tokenizer's decoder on CPU) makes its weight's gradient
    channels-last: the same memory, but DDP warns that the strides differ (spuriously). The training runs'
    wrapper hands DDP the gradient with the parameter's strides; bare DDP shows the warning it avoids."""
    proc = subprocess.run([sys.executable, "-c", _ONE_BY_ONE_CONV_UNDER_DDP, wrapper], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("Grad strides do not match" in proc.stderr) == (wrapper == "bare")


def test_random_crops_are_windows_of_the_enlarged_image_and_repeat_per_step(folder, vae_run, tmp_path, caplog):
    from var.data import enlarge_for_crop
    from var.training.runs import _batch_getter, crop_batch
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    got = crop_batch(x, torch.tensor([[0, 2], [1, 0]]), 4)
    assert torch.equal(got[0], x[0, :, 0:4, 2:6]) and torch.equal(got[1], x[1, :, 1:5, 0:4])
    flat = np.full((3, 8, 8, 1), 77, np.uint8)
    assert (enlarge_for_crop(flat, 9) == 77).all() and enlarge_for_crop(flat, 9).shape == (3, 9, 9, 1)
    get = _batch_getter(lambda idx, flips, offsets: (idx, flips, offsets), 24, small_schedule(), DistInfo(), True, 2)
    a, b, c = get(5), get(5), get(6)
    assert all(torch.equal(torch.as_tensor(u), torch.as_tensor(v)) for u, v in zip(a, b))
    assert a[2].shape == (8, 2) and 0 <= int(a[2].min()) and int(a[2].max()) <= 2
    assert not torch.equal(a[2], c[2])
    out = tmp_path / "crop"
    caplog.set_level("INFO")
    assert cli(["train", "--data", str(folder), "--vae", str(vae_run), "--out", str(out), *VAR_ARGS, "--steps", "2",
                "--batch-size", "8", "--warmup", "1", "--sample-every", "2", "--crop"]) == 0
    assert "random 16px crops of 18px images" in caplog.text
    assert json.loads((out / "run.json").read_text())["crop"] is True
    assert VARPipeline.from_pretrained(out)(class_labels=[0], seed=0).images.shape == (1, 3, 16, 16)


def test_adamw_is_fused_where_it_can_be_and_steps_like_the_default():
    from var.training.runs import adamw
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3)]
    grads = [torch.randn(5, 3), torch.randn(3)]
    results = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = adamw(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05) if fused else \
            torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05)
        assert opt.defaults["fused"] is (True if fused else None)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        results[fused] = params
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # a parameter without fused kernels (complex) makes the whole optimizer the default one, which steps
    z = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    opt = adamw([{"params": [torch.nn.Parameter(torch.zeros(2))]}, {"params": [z]}], lr=1e-2)
    assert not opt.defaults["fused"]
    z.grad = torch.ones(2, dtype=torch.complex64)
    opt.step()
    assert torch.isfinite(torch.view_as_real(z)).all() and z.abs().sum() > 0


def test_a_resumed_decoder_finetune_keeps_the_tokenizer_its_run_names(folder, vae_run, tmp_path, caplog):
    """A decoder fine-tuning run stopped before its first checkpoint, re-run with another tokenizer: it
    resumes with the one its run.json names, as the log says, not the command's."""
    from var.training.runs import load_vqvae

    source = load_vqvae(vae_run)[0]
    other_tokenizer(vae_run, folder, tmp_path / "other")
    out = tmp_path / "dec"

    def finetune(src):
        return cli(["train-vae", "--data", str(folder), "--out", str(out), "--finetune-decoder", str(src),
                    "--steps", "2", "--batch-size", "8", "--warmup", "1", "--sample-every", "100"])

    assert finetune(vae_run) == 0
    (out / "checkpoint.pt").unlink()  # as if stopped before its first save
    caplog.set_level(logging.INFO)
    assert finetune(tmp_path / "other") == 0
    assert "ignored" in caplog.text
    assert load_vqvae(out)[0].token_side_difference(source) is None


def test_a_resume_keeps_what_the_run_trains_on(folder, vae_run, tmp_path, caplog):
    """Re-running a command resumes its run: the model options of run.json are kept (with a warning naming
    what the command changed), also the image size its data is read at; other data, another tokenizer for a
    transformer, or turning EMA on or off are refused with the reason instead of training on something else."""
    from var.training.runs import load_vqvae

    def train_vae(out, *extra, steps="2"):
        return cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", steps,
                    "--batch-size", "8", "--warmup", "1", "--sample-every", "100", *extra])

    out = tmp_path / "vae"
    assert train_vae(out) == 0
    assert train_vae(out, "--image-size", "32", "--patch-nums", "1,2,4,8,16", steps="3") == 0
    assert "resuming with its configuration (the command's vqvae ignored)" in caplog.text
    assert load_vqvae(out)[0].config.image_hw == (16, 16)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert train_vae(out, "--ema", "0", steps="4") == 2
    assert "holds the models ['disc', 'ema', 'vqvae'], but this run trains ['disc', 'vqvae']" in caplog.text
    other_data = make_folder(tmp_path / "other", n_per_class=6)
    assert cli(["train-vae", "--data", str(other_data), "--out", str(out), *VAE_ARGS, "--steps", "4",
                "--batch-size", "8"]) == 2
    assert f"this run trains with data {str(folder)!r}, the command gives {str(other_data)!r}" in caplog.text

    def train_var(vae, steps):
        return cli(["train", "--data", str(folder), "--vae", str(vae), "--out", str(tmp_path / "var"), *VAR_ARGS,
                    "--steps", steps, "--batch-size", "8", "--warmup", "1", "--sample-every", "100",
                    "--cache-dir", str(tmp_path / "cache")])

    assert train_var(vae_run, "2") == 0
    moved = tmp_path / "same-tokenizer"
    moved.mkdir()
    for f in vae_run.glob("vqvae.*"):
        (moved / f.name).write_bytes(f.read_bytes())
    assert train_var(moved, "3") == 0  # the same tokenizer from another folder
    assert train_var(out, "4") == 2
    assert f"the tokenizer {out} is not the one {tmp_path / 'var'} trains on (encoder." in caplog.text


def test_token_cache_key_follows_the_tokenizer_configuration_and_the_pixels(vae_run, folder):
    """The same weights with cosine lookup make other tokens, so they must not reuse a cache entry."""
    import dataclasses
    from var.training.runs import load_vqvae, token_cache_key

    vqvae, _ = load_vqvae(vae_run)
    ds = image_folder_dataset(folder, 16)
    key = token_cache_key(vqvae, ds, flip=False)
    assert token_cache_key(load_vqvae(vae_run)[0], ds, flip=False) == key
    cosine = VQVAE(dataclasses.replace(vqvae.config, cosine_lookup=True))
    cosine.load_state_dict(vqvae.state_dict())
    assert token_cache_key(cosine, ds, flip=False) != key
    ds.images[0, 0, 0, 0] ^= 1
    assert token_cache_key(vqvae, ds, flip=False) != key


def test_a_second_run_in_the_folder_is_refused_and_a_killed_ones_folder_resumes(tmp_path, caplog):
    data, out = make_folder(tmp_path / "data", n_per_class=4), tmp_path / "run"

    def train(steps: str) -> int:
        return cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", steps])

    assert train("1") == 0 and not (out / "run.lock").exists()
    metrics = (out / "metrics.jsonl").read_text()
    holder = hold_lock(out / "run.lock")  # a run in progress
    try:
        caplog.clear()
        assert train("2") == 2
        [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert line.startswith(f"error: {out} is in use by process {holder.pid} on ") and line.endswith(
            f"(its lock: {out / 'run.lock'}); wait for it to end or stop it, or choose another folder")
        assert (out / "metrics.jsonl").read_text() == metrics  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock file stays behind
        holder.wait()
    leftover = out / "checkpoint.pt.0123abcd.tmp"  # as a kill in the middle of a checkpoint leaves
    leftover.write_bytes(b"partial")
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert train("2") == 0
    assert f"{out / 'run.lock'} was left by process {holder.pid} on " in caplog.text
    assert "removed its 1 unfinished temporary file(s)" in caplog.text and not leftover.exists()
    assert f"resuming {out / 'checkpoint.pt'} from step 1" in caplog.text and not (out / "run.lock").exists()


def test_var_train_is_refused_in_a_folder_in_use_before_tokenizing(folder, vae_run, tmp_path, caplog):
    out = tmp_path / "var"
    out.mkdir()
    with FolderLock(out / "run.lock"):
        assert cli(["train", "--data", str(folder), "--vae", str(vae_run), "--out", str(out), *VAR_ARGS, "--steps", "1",
                    "--batch-size", "8", "--warmup", "1", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert f"{out} is in use by process {os.getpid()} on " in caplog.text
    assert not (tmp_path / "cache").exists() and os.listdir(out) == []
