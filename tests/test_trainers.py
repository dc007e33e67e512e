"""The trainers (var.training.trainers): losses, EMA, dead-code restarts, schedules, checkpoints and samples."""
import math

import pytest
import torch

from var import VAR, VARConfig, VQVAE
from var.training.common import rng_state
from conftest import TINY_VAE, small_schedule, tiny_trainer


def _usage_after_steps(rank: int, world: int, init_file: str, results: dict) -> None:
    """Three tokenizer steps on this process's share of one fixed global batch of 8 images (all of it
    when ``world`` is 1); records the codebook-usage statistic. lr = 0 keeps the weights, so the tokens
    and hence the statistic are the same whatever the process count, up to how it is gathered."""
    import torch.distributed as dist
    from var.training.common import DistInfo
    from var.training.runs import _wrap
    from var.training.trainers import VQVAETrainer
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        m = VQVAE(TINY_VAE)
        trainer = VQVAETrainer(m, torch.optim.SGD(m.parameters(), lr=0.0), reinit_every=0, grad_clip=0,
                               ddp_model=_wrap(m, DistInfo(rank, world)))
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            trainer.train_step(x[rank::world])
        results[rank] = m.quantize.ema_vocab_hit_SV.clone()
    finally:
        if world > 1:
            dist.destroy_process_group()


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it steps on."""

    def step(self, closure=None):
        self.seen = [p.grad.clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


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


def test_codebook_usage_under_torchrun_counts_every_process_batches(tmp_path):
    """The usage statistic that decides which codes are dead must count the codes every process hit, as one
    process on the global batch does. DDP broadcasts rank 0's buffers at each forward, so a statistic
    updated from each process's own half of the batch held rank 0's hits alone."""
    import torch.multiprocessing as mp
    single: dict = {}
    _usage_after_steps(0, 1, "", single)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_usage_after_steps, args=(2, str(tmp_path / "init"), results), nprocs=2)
        per_rank = [results[0], results[1]]
    for rank, usage in enumerate(per_rank):
        torch.testing.assert_close(usage, single[0], atol=1e-6, rtol=0, msg=f"rank {rank}")


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


def test_trainers_step_under_their_schedule_decaying_only_the_decayed_groups():
    """VQVAETrainer / VARTrainer take ``schedule=``: each step sets the optimizer's learning rate and, on the
    groups made with weight decay, the weight decay of its step; biases and norms stay undecayed."""
    from var.training.runs import VAR_BETAS, make_optimizer
    from var.training.trainers import VARTrainer
    torch.manual_seed(0)
    vqvae = VQVAE(TINY_VAE).eval()
    var = VAR(VARConfig(vocab_size=TINY_VAE.vocab_size, latent_channels=TINY_VAE.z_channels, num_classes=2, depth=1,
                        embed_dim=32, num_heads=2, patch_nums=TINY_VAE.patch_nums))
    sched = small_schedule(steps=5, lr_schedule="lin0", min_lr_ratio=0.1, final_weight_decay=0.08)  # warm-up 2
    trainer = VARTrainer(var, vqvae, make_optimizer(var, sched, VAR_BETAS), schedule=sched)
    batch = (torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    decayed, undecayed = trainer.optimizers["var"].param_groups
    for step in range(3):
        trainer.train_step(batch)
        decayed, undecayed = trainer.optimizers["var"].param_groups
        assert decayed["lr"] == undecayed["lr"] == pytest.approx(sched.lr_at(step))
        assert decayed["weight_decay"] == pytest.approx(sched.weight_decay_at(step)) and undecayed["weight_decay"] == 0
    assert decayed["lr"] == pytest.approx(1e-3) and sched.lr_at(0) == pytest.approx(5e-6)


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


def test_processes_restart_the_same_dead_codes(tmp_path):
    """Under torchrun each process sees half the batches, so its usage statistic differs; the restart must
    still be decided alike everywhere, or each clears other codes' Adam moments and the replicas drift."""
    import torch.multiprocessing as mp
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_restart_dead_codes_on_rank, args=(str(tmp_path / "init"), results), nprocs=2)
        r0, r1 = results[0], results[1]
    assert r0 == r1, (r0, r1)


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
