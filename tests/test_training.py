"""Training: exact resume, two processes training one model, dead-code recovery, bad data, NaN stop."""
import json
import logging
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from var import VARPipeline, VQVAE
from var.cli import main as cli
from var.data import image_folder_dataset
from var.training.common import Interrupted, NonFiniteLoss, Schedule, fit, DistInfo
from conftest import TINY_VAE, VAE_ARGS, VAR_ARGS, interrupt_at, make_folder, other_tokenizer, small_schedule


def test_image_folder_end_to_end_gives_a_loadable_pipeline(folder, vae_run, tmp_path):
    rows = [json.loads(l) for l in (vae_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["heldout_psnr"] > 0 and "usage_s0" in rows[0] and (vae_run / "samples").is_dir()
    out = tmp_path / "var"
    assert cli(["train", "--data", str(folder), "--vae", str(vae_run), "--out", str(out), *VAR_ARGS,
                "--steps", "4", "--batch-size", "8", "--warmup", "2", "--log-every", "2", "--sample-every", "4",
                "--cache-dir", str(tmp_path / "cache"), "--ema", "0.9", "--flip"]) == 0
    assert len(list((tmp_path / "cache").glob("tokens_*.npy"))) == 1
    pipe = VARPipeline.from_pretrained(out)
    assert pipe.class_names == ["circles", "squares"]
    images = pipe(class_labels=[0, 1], seed=0).images
    assert images.shape == (2, 3, 16, 16)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "acc", "loss_s0", "acc_s3", "lr", "images_per_s"} <= set(rows[-1])
    assert cli(["plot", str(out)]) == 0 and (out / "loss.png").stat().st_size > 1000


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


def test_two_processes_train_one_model(folder, vae_run, tmp_path):
    """torchrun with 2 CPU processes (gloo): the run checks that the ranks hold the same weights, and the
    result equals one process on the same global batch."""
    # No label dropout: it is drawn per process, so only then is one process on the global batch the same.
    common = ["--data", str(folder), "--vae", str(vae_run), *VAR_ARGS, "--steps", "3", "--batch-size", "8", "--cond-drop", "0",
              "--warmup", "1", "--sample-every", "1000", "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: torchrun picks a free port itself (no window for another process to take it).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "var", "train", "--out", str(tmp_path / "ddp"), *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    assert cli(["train", "--out", str(tmp_path / "single"), *common]) == 0
    two = VARPipeline.from_pretrained(tmp_path / "ddp").var.state_dict()
    one = VARPipeline.from_pretrained(tmp_path / "single").var.state_dict()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4, msg=k)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it steps on."""

    def step(self, closure=None):
        self.seen = [p.grad.clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def test_discriminator_steps_on_its_own_loss_alone():
    """The generator's GAN loss must not leak into the discriminator's gradient."""
    import copy
    import torch.nn.functional as F
    from var.training.trainers import PatchDiscriminator, VQVAETrainer
    torch.manual_seed(0)
    vqvae, disc = VQVAE(TINY_VAE), PatchDiscriminator(3, width=16)
    disc_opt = RecordingSGD(disc.parameters(), lr=0.1)
    trainer = VQVAETrainer(vqvae, torch.optim.SGD(vqvae.parameters(), lr=0.1), disc=disc, disc_optimizer=disc_opt,
                           adv_weight=0.5, reinit_every=0, grad_clip=0)
    images = torch.rand(4, 3, 16, 16)
    vqvae_before, disc_before = copy.deepcopy(vqvae).train(), copy.deepcopy(disc)
    trainer.train_step(images)
    x = images * 2 - 1
    with torch.no_grad():
        rec = vqvae_before(x)[0].float()
    d_loss = F.relu(1 - disc_before(x)).mean() + F.relu(1 + disc_before(rec)).mean()
    expected = torch.autograd.grad(d_loss, list(disc_before.parameters()))
    for got, want in zip(disc_opt.seen, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_two_processes_train_a_tokenizer_with_its_discriminator(folder, tmp_path):
    """torchrun, 2 processes, GAN loss on, EMA weights, dead-code restarts: the discriminator is synchronised
    too, and every process restarts the same codes (so their Adam moments stay equal), so the replica check
    at every checkpoint passes and the run finishes. Three scales leave one of the 4 shared phi convs unused
    (no gradient), which DDP must not wait for."""
    out = tmp_path / "gan"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "var",
           "train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--patch-nums", "1,4,8",
           "--steps", "6", "--batch-size", "8",
           "--warmup", "1", "--adv-weight", "0.1", "--disc-start", "1", "--ema", "0.9", "--reinit-every", "2",
           "--save-every", "2", "--sample-every", "1000"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("d_loss" in r for r in rows)
    from var.training.runs import load_vqvae
    assert len(load_vqvae(out)[0].quantize.quant_resi.unused()) == 1


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


@pytest.mark.parametrize("wrapper", ["wrap", "bare"])
def test_ddp_gets_a_1x1_convs_gradient_in_its_own_layout(wrapper):
    """A 1x1 conv on channels-last activations (the tokenizer's decoder on CPU) makes its weight's gradient
    channels-last: the same memory, but DDP warns that the strides differ (spuriously). The training runs'
    wrapper hands DDP the gradient with the parameter's strides; bare DDP shows the warning it avoids."""
    proc = subprocess.run([sys.executable, "-c", _ONE_BY_ONE_CONV_UNDER_DDP, wrapper], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("Grad strides do not match" in proc.stderr) == (wrapper == "bare")


def test_dead_codes_are_recovered():
    torch.manual_seed(0)
    vqvae = VQVAE(TINY_VAE)
    q = vqvae.quantize
    with torch.no_grad():
        q.embedding.weight[16:] += 1000.0  # half the codebook far away: never the nearest code
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    vqvae.train()
    for _ in range(3):
        vqvae(x)
    used_before = torch.cat(vqvae.img_to_indices(x), 1).unique()
    assert used_before.max() < 16
    unused = (q.ema_vocab_hit_SV.max(0).values < 1e-6).nonzero().flatten().tolist()
    assert set(range(16, 32)) <= set(unused)
    f = vqvae.encode_latent(x).detach()
    reset = q.reinit_dead_codes(f.permute(0, 2, 3, 1).reshape(-1, 8))
    assert set(range(16, 32)) <= set(reset.tolist())
    used_after = torch.cat(vqvae.img_to_indices(x), 1).unique()
    assert (used_after >= 16).any(), "re-initialised codes are used again"


def test_bad_data_is_reported(tmp_path, caplog):
    root = make_folder(tmp_path / "d", n_per_class=2, corrupt=True)
    with caplog.at_level("WARNING"):
        ds = image_folder_dataset(root, 16)
    assert len(ds) == 4 and ds.skipped == [str(root / "circles" / "broken.png")]
    assert "broken.png" in caplog.text and "skipped 1 file" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_folder_dataset(tmp_path / "empty", 16)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"xx")
    with pytest.raises(ValueError, match="could be decoded"):
        image_folder_dataset(tmp_path / "junk", 16)
    assert cli(["train-vae", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *VAE_ARGS]) == 2


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


def test_transformer_loss_is_plain_cross_entropy_by_default(vae_run):
    """No label smoothing unless asked (the reference's default): the smoothing floor survived top-k and
    top-p and put a few noise tokens in every sampled image."""
    import torch.nn.functional as F
    from var import VAR, VARConfig
    from var.cli import build_parser
    from var.training.runs import load_vqvae
    from var.training.trainers import VARTrainer
    assert build_parser().parse_args(["train"]).label_smoothing == 0.0
    vqvae, _ = load_vqvae(vae_run)
    torch.manual_seed(0)
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=2, depth=1, embed_dim=32, num_heads=2,
                        patch_nums=(1, 2, 4, 8), cond_drop_rate=0.0, drop_path_rate=0.0))
    trainer = VARTrainer(var, vqvae, torch.optim.SGD(var.parameters(), lr=0.0))
    tokens = [torch.randint(0, 32, (3, p * p), generator=torch.Generator().manual_seed(p)) for p in (1, 2, 4, 8)]
    labels = torch.tensor([0, 1, 0])
    loss = trainer.train_step((tokens, labels))["loss"]
    with torch.no_grad():
        logits = var.train()(labels, vqvae.quantize.teacher_forcing_input(tokens))
    assert loss == pytest.approx(F.cross_entropy(logits.flatten(0, 1), torch.cat(tokens, 1).flatten()).item(), rel=1e-5)


def test_tokenizer_betas_default_and_option(folder, vae_run, tmp_path):
    """The tokenizer's Adam uses (0.9, 0.95) unless --betas says otherwise (VQGAN's 0.5,0.9 reconstructed
    worse without a GAN loss); the discriminator keeps VQGAN's."""
    from var.training.common import load_checkpoint_file

    def betas(run):
        return tuple(load_checkpoint_file(run / "checkpoint.pt")["optimizers"]["vqvae"]["param_groups"][0]["betas"])

    assert betas(vae_run) == (0.9, 0.95)
    out = tmp_path / "vae"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", "1", "--batch-size", "8",
                "--warmup", "1", "--betas", "0.5,0.9", "--adv-weight", "0.1"]) == 0
    ckpt = load_checkpoint_file(out / "checkpoint.pt")
    assert betas(out) == (0.5, 0.9) and tuple(ckpt["optimizers"]["disc"]["param_groups"][0]["betas"]) == (0.5, 0.9)


def test_tokenizer_ema_weights_are_the_ones_evaluated_and_exported(folder, tmp_path):
    """--ema keeps an average that differs from the trained weights; the export and the held-out PSNR
    are the average's, and a dead-code restart moves the EMA's code too."""
    from safetensors.torch import load_file
    from var.training.common import load_checkpoint_file
    out = tmp_path / "ema"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", "6", "--batch-size", "8",
                "--warmup", "1", "--ema", "0.9", "--reinit-every", "3", "--save-every", "6",
                "--sample-every", "6"]) == 0
    ckpt = load_checkpoint_file(out / "checkpoint.pt")
    exported = load_file(out / "vqvae.safetensors")
    trained, ema = ckpt["models"]["vqvae"], ckpt["models"]["ema"]
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert not torch.equal(trained["decoder.conv_out.weight"], ema["decoder.conv_out.weight"])
    assert (out / "samples" / "recon_0000006.png").is_file()


def test_ema_decay_ramps_up_from_the_first_step():
    """Step 0 averages with weight 0.9 on the new weights ((1 + 0) / (10 + 0) = 0.1 decay), not 0.001."""
    from var.training.trainers import VQVAETrainer
    torch.manual_seed(0)
    m = VQVAE(TINY_VAE)
    t = VQVAETrainer(m, torch.optim.SGD(m.parameters(), lr=0.5), reinit_every=0, ema_decay=0.999, grad_clip=0)
    before = t.ema.decoder.conv_out.weight.clone()
    t.train_step(torch.rand(4, 3, 16, 16))
    expected = before.lerp(m.decoder.conv_out.weight, 0.9)
    torch.testing.assert_close(t.ema.decoder.conv_out.weight, expected)


def test_tokenizer_recipe_defaults_gan_from_a_quarter_of_the_steps_and_ema(folder, tmp_path):
    """With no loss options, var train-vae trains the GAN loss from steps // 4 on and keeps EMA weights."""
    from var.training.common import load_checkpoint_file
    out = tmp_path / "defaults"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", "8", "--batch-size", "8",
                "--warmup", "1", "--log-every", "1", "--save-every", "8", "--sample-every", "8"]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    with_gan = sorted(r["step"] for r in rows if "d_loss" in r)
    without = sorted(r["step"] for r in rows if "rec_loss" in r and "d_loss" not in r)
    assert without and with_gan and max(without) < min(with_gan), (without, with_gan)
    assert min(with_gan) - min(without) == 2  # steps 0, 1 without; from step 2 (= 8 // 4) with
    assert "ema" in load_checkpoint_file(out / "checkpoint.pt")["models"]


def _restart_dead_codes_on_rank(rank: int, init_file: str, results: dict) -> None:
    """One of two processes: codes 4r..4r+3 are dead in this process's own usage statistic only."""
    import torch.distributed as dist
    from var.training.trainers import VQVAETrainer
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        m = VQVAE(TINY_VAE)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        trainer = VQVAETrainer(m, opt, reinit_every=0, grad_clip=0)
        x = torch.rand(4, 3, 16, 16)
        trainer.train_step(x)  # Adam moments for every code
        q = m.quantize
        q.ema_vocab_hit_SV.fill_(1 / q.vocab_size)
        q.ema_vocab_hit_SV[:, 4 * rank:4 * rank + 4] = 0
        moved = trainer.reinit_dead_codes(x * 2 - 1)
        moments = opt.state[q.embedding.weight]["exp_avg"]
        results[rank] = (moved, moments.abs().sum().item(), q.embedding.weight.sum().item())
    finally:
        dist.destroy_process_group()


def test_processes_restart_the_same_dead_codes(tmp_path):
    """Under torchrun each process sees half the batches, so its usage statistic differs; the restart must
    still be decided alike everywhere, or each clears other codes' Adam moments and the replicas drift."""
    import torch.multiprocessing as mp
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_restart_dead_codes_on_rank, args=(str(tmp_path / "init"), results), nprocs=2)
        r0, r1 = results[0], results[1]
    assert r0 == r1, (r0, r1)


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


def test_decoder_finetune_keeps_the_tokens_and_plugs_into_a_pipeline(folder, vae_run, tmp_path, caplog):
    """`var train-vae --finetune-decoder` trains the decoder alone: the token side of the exported tokenizer
    is bit-identical to its source's, so it decodes a pipeline's tokens (VARPipeline.use_decoder); a
    tokenizer with another token side is refused, as are model options and dead-code restarts."""
    from var import VAR, VARConfig
    from var.training.common import load_checkpoint_file
    from var.training.runs import _continue_discriminator, load_vqvae
    from var.training.trainers import PatchDiscriminator

    caplog.set_level(logging.INFO)
    out = tmp_path / "dec"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), "--finetune-decoder", str(vae_run),
                "--steps", "4", "--batch-size", "8", "--warmup", "1", "--lr", "1e-3", "--sample-every", "4"]) == 0
    assert json.loads((out / "run.json").read_text())["finetune_decoder"] == str(vae_run)
    # the source run's discriminator is continued, not a fresh one
    assert f"discriminator continued from {vae_run / 'checkpoint.pt'}" in caplog.text
    disc = PatchDiscriminator(3)
    _continue_discriminator(disc, vae_run, DistInfo())
    source_disc = load_checkpoint_file(vae_run / "checkpoint.pt")["models"]["disc"]
    assert all(torch.equal(v, source_disc[k]) for k, v in disc.state_dict().items())
    source, _ = load_vqvae(vae_run)
    tuned, _ = load_vqvae(out)
    before, after = source.state_dict(), tuned.state_dict()
    assert set(VQVAE.TOKEN_SIDE + VQVAE.DECODER_SIDE) == {name for name, _ in source.named_children()}
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"decoder", "post_quant_conv", "quantize"}  # quantize: its usage statistics only
    assert all(torch.equal(before[k], after[k]) for k in before
               if k.startswith(("encoder.", "quant_conv.", "quantize.")) and k != "quantize.ema_vocab_hit_SV")

    torch.manual_seed(0)
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=2, depth=1, embed_dim=32, num_heads=2,
                        patch_nums=(1, 2, 4, 8)))
    pipe = VARPipeline(source, var)
    images = image_folder_dataset(folder, 16).batch(np.arange(4))[0]
    tokens = pipe.encode(images)
    old = pipe.decode(tokens)
    assert pipe.use_decoder(out) is pipe
    assert [torch.equal(a, b) for a, b in zip(pipe.encode(images), tokens)] == [True] * len(tokens)
    new = pipe.decode(tokens)
    expected = (tuned.eval().indices_to_img(tokens) + 1) / 2
    torch.testing.assert_close(new, expected, atol=1e-5, rtol=0)
    assert (new - old).abs().max() > 1e-3
    with torch.inference_mode():  # weights loaded into inference tensors move no version counter
        frozen = VARPipeline(load_vqvae(vae_run)[0], var)
        torch.testing.assert_close(frozen.decode(tokens), old, atol=1e-5, rtol=0)  # fills the kernel caches
        torch.testing.assert_close(frozen.use_decoder(out).decode(tokens), expected, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match="encoder"):
        pipe.use_decoder(VQVAE(TINY_VAE))
    assert cli(["train-vae", "--data", str(folder), "--out", str(tmp_path / "x"), "--finetune-decoder",
                str(vae_run), "--ch", "64"]) == 2
    assert "--ch: --finetune-decoder keeps the model" in caplog.text
    assert cli(["train-vae", "--data", str(folder), "--out", str(tmp_path / "y"), "--finetune-decoder",
                str(vae_run), "--reinit-every", "5", "--steps", "1", "--batch-size", "8"]) == 2
    assert "reinit_every=5" in caplog.text


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


def test_train_epoch_steps_once_per_batch_and_averages_the_metrics(vae_run):
    """The request's API: VARTrainer.train_epoch(loader) over batches of (images, labels) or (tokens, labels)."""
    from var import VAR, VARConfig
    from var.training.runs import VAR_BETAS, load_vqvae, make_optimizer
    from var.training.trainers import VARTrainer

    vqvae, _ = load_vqvae(vae_run)
    torch.manual_seed(0)
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=2, depth=1, embed_dim=32, num_heads=2,
                        patch_nums=(1, 2, 4, 8)))
    trainer = VARTrainer(var, vqvae, make_optimizer(var, small_schedule(), VAR_BETAS))
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    tokens = torch.cat(vqvae.img_to_indices(images[4:] * 2 - 1), dim=1)
    before = [p.clone() for p in var.parameters()]
    metrics = trainer.train_epoch([(images[:4], labels[:4]), (tokens, labels[4:])])
    assert metrics["steps"] == 2 and trainer.step == 2 and math.isfinite(metrics["loss"]) and 0 <= metrics["acc"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, var.parameters()))
    with pytest.raises(ValueError, match="the loader yielded no batch"):
        trainer.train_epoch([])


@pytest.mark.parametrize("ema", [None, 0.9])
def test_samples_during_training_leave_no_packed_weights_behind(vae_run, ema):
    """A snapshot's pipeline packs the sampled weights for fast CPU inference; the copy (the model's size
    again) must go when the snapshot is done, and the trained model must be back in training mode."""
    from var import VAR, VARConfig
    from var.cpu.packed_linear import PackedLinear, packing_available
    from var.training.runs import VAR_BETAS, load_vqvae, make_optimizer
    from var.training.trainers import VARTrainer

    if not packing_available():
        pytest.skip("this PyTorch build has no oneDNN packed linear layers")
    vqvae, _ = load_vqvae(vae_run)
    torch.manual_seed(0)
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=2, depth=1, embed_dim=32, num_heads=2,
                        patch_nums=(1, 2, 4, 8)))
    trainer = VARTrainer(var, vqvae, make_optimizer(var, small_schedule(), VAR_BETAS), ema_decay=ema)
    sampled = trainer.sampling_model()

    def packed_layers() -> int:
        return sum(isinstance(m, PackedLinear) for m in sampled.modules())

    with trainer.sampling_pipeline() as pipe:
        assert packed_layers() > 0  # the pipeline's CPU preparation swapped in the packed layers
        images = pipe(class_labels=[0, 1], seed=0).images
    assert packed_layers() == 0 and var.training
    # generate_samples goes through the same block, and gives the same images
    assert torch.equal(trainer.generate_samples(2, seed=0).images, images)
    assert packed_layers() == 0 and var.training


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
