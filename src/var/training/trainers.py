"""The two trainers: the multi-scale VQ-VAE tokenizer and the VAR transformer.

Each exposes ``train_step(batch) -> metrics``, ``save_checkpoint`` / ``load_checkpoint`` (model, optimizer,
EMA, step and every RNG state) so that :func:`common.fit` can run and resume them. Given a
:class:`common.Schedule` (``schedule=``, or by :func:`common.fit`), each step first takes the schedule's
learning rate and weight decay for its step number; without one the optimizer's stay as they are.
Under torchrun the model given as ``ddp_model`` is the DistributedDataParallel wrapper; the plain module
is kept for saving and sampling. A transformer sharded with :func:`var.training.fsdp.shard_transformer`
(``var train --fsdp``) is given as it is: the trainer then keeps its EMA weights sharded alike, checkpoints
with every process (:mod:`var.training.fsdp`) and samples from the weights gathered by :meth:`full_weights`.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..metrics import psnr
from ..cpu import plain
from ..pipeline import VAROutput, VARPipeline, check_compile_backend
from .. import quickstart
from ..precision import autocast, choose_dtype
from ..transformer import VAR
from ..vqvae import VQVAE
from . import fsdp
from .common import (CHECKPOINT, SHARDED_CHECKPOINT, DistInfo, NonFiniteLoss, Schedule, atomic_save,
                     load_checkpoint_file, rng_state, set_rng_state)

log = logging.getLogger(__name__)
# Why a sharded transformer is not compiled (VARTrainer.compile, and train_var before any work).
NO_COMPILE_WITH_FSDP = ("compiling a sharded transformer (--fsdp) is not supported: train it with --fsdp or with "
                        "--compile, not both")


class _Trainer:
    """Step counter, optimizers, clipping, non-finite check, checkpoints and the compiled forward pass shared by
    both trainers."""

    sharded = False  # True: the weights are sharded over the processes, every process takes part in checkpoints
    checkpoint_name = CHECKPOINT  # the checkpoint's file in a run folder

    def __init__(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 device: str | torch.device, grad_clip: float, amp: bool, schedule: Schedule | None):
        self.modules, self.optimizers, self.schedule = modules, optimizers, schedule
        self.device = torch.device(device)
        self.grad_clip = grad_clip
        # --amp is bf16 whatever the device: where bf16 is emulated it runs slower, and a note says so.
        self.amp_dtype = choose_dtype(torch.bfloat16, self.device, force=True) if amp else torch.float32
        self.step = 0
        self._compile_options: dict | None = None   # torch.compile's options, once :meth:`compile` is called
        self._compiled_model: nn.Module | None = None
        self._log_compile_time = False  # the next step compiles: its time is logged
        # The parameter groups made with weight decay (by index: loading a checkpoint replaces the group dicts);
        # the others (biases, norms, the discriminator) stay without.
        self.decayed_groups = {name: [i for i, group in enumerate(opt.param_groups) if group["weight_decay"] > 0]
                               for name, opt in optimizers.items()}

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def set_weight_decay(self, weight_decay: float) -> None:
        """Set the weight decay of the groups made with one (see :attr:`decayed_groups`)."""
        for name, opt in self.optimizers.items():
            for i in self.decayed_groups[name]:
                opt.param_groups[i]["weight_decay"] = weight_decay

    def _follow_schedule(self) -> None:
        """The learning rate and weight decay of step ``self.step`` under ``self.schedule``, if one is given."""
        if self.schedule is not None:
            self.set_lr(self.schedule.lr_at(self.step))
            self.set_weight_decay(self.schedule.weight_decay_at(self.step))

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def compile(self, backend: str = "inductor", mode: str | None = None) -> None:
        """Run the training steps' forward pass (and so its backward) through ``torch.compile`` of
        ``self.model`` (the DDP wrapper under torchrun), with its ``backend`` and ``mode``. It compiles at the first
        step (logged with that step's time), so that a copy of the trainer made before, such as the step timing
        of ``--minutes``, holds no compiled code. The models themselves are not changed: checkpoints, EMA
        weights and samples are those of the eager models. Losses equal the eager ones to float rounding
        where no random number is drawn inside the model; label dropout and stochastic depth then draw from
        inductor's own generator (same distribution, other draws). ValueError or RuntimeError from
        :func:`var.pipeline.check_compile_backend`."""
        check_compile_backend(backend, self.device)
        self._compile_options = {"backend": backend, "mode": mode}
        self._compiled_model, self._log_compile_time = None, True

    def _forward_model(self) -> nn.Module:
        """The module a training step calls: ``self.model``, or its compiled form after :meth:`compile`."""
        if self._compile_options is None:
            return self.model
        if self._compiled_model is None:
            self._compiled_model = torch.compile(self.model, **self._compile_options)
        return self._compiled_model

    def _log_first_compiled_step(self, began: float) -> None:
        """After a step that began at ``began`` (perf_counter): its time, if it was the one that compiled."""
        if self._log_compile_time:
            self._log_compile_time = False
            log.info("compiled training: the first step took %.1f s, compiling included", time.perf_counter() - began)

    def _check_finite(self, loss: torch.Tensor, what: str = "loss") -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(f"{what} is {loss.item()} at step {self.step}: stopping; the last checkpoint "
                                f"(before this step) is kept. Try a lower --lr or a larger --warmup.")

    def _update(self, loss: torch.Tensor, opt_name: str, params: Iterable[nn.Parameter]) -> float:
        """Clear, backward, clip, step, clear. Clearing first makes each optimizer step on its own loss's
        gradient alone. Returns the gradient norm before clipping."""
        opt = self.optimizers[opt_name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(params), self.grad_clip if self.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    @torch.no_grad()
    def _update_ema(self, model: nn.Module) -> None:
        """Move ``self.ema``'s parameters (if kept) toward ``model``'s and copy its buffers. The decay ramps up
        as (1 + step) / (10 + step) to ``self.ema_decay``, so early averages are not dominated by the initial
        weights."""
        if self.ema is None:
            return
        d = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.ema.buffers(), model.buffers()):
            e.copy_(b)

    def state(self, rng_per_rank: list[dict] | None = None) -> dict:
        """What a checkpoint holds: step, every model's and optimizer's state, the RNG states."""
        return {"step": self.step, "models": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "rng_per_rank": rng_per_rank or [rng_state()]}

    def save_checkpoint(self, path: str | Path, rng_per_rank: list[dict] | None = None) -> None:
        """Everything needed to continue bit for bit; under DDP, every process's RNG state. Sharded, every
        process calls it and writes its shards (:func:`var.training.fsdp.save_checkpoint`)."""
        if self.sharded:
            fsdp.save_checkpoint(Path(path), self.step, self.modules, self.optimizers, rng_per_rank or [rng_state()])
        else:
            atomic_save(self.state(rng_per_rank), Path(path))

    def load_checkpoint(self, path: str | Path, rank: int = 0) -> None:
        """Continue from a :meth:`save_checkpoint` file (sharded: every process calls it, on any number of
        processes); ValueError when it holds other parts than this run trains (a resume with ``--ema`` or
        ``--adv-weight`` turned on or off)."""
        ckpt = load_checkpoint_file(Path(path))
        for part, ours in (("models", sorted(self.modules)), ("optimizers", sorted(self.optimizers))):
            saved = sorted(ckpt[part])
            if saved != ours:
                raise ValueError(f"{path} holds the {part} {saved}, but this run trains {ours}: resume with the "
                                 "options the run started with (--ema, --adv-weight), or start a new --out")
        if self.sharded:
            fsdp.load_checkpoint(Path(path), ckpt, self.modules, self.optimizers)
        else:
            for k, m in self.modules.items():
                m.load_state_dict(ckpt["models"][k])
            for k, o in self.optimizers.items():
                o.load_state_dict(ckpt["optimizers"][k])
        self.step = ckpt["step"]
        states = ckpt["rng_per_rank"]
        if rank < len(states):
            set_rng_state(states[rank])
        else:  # a resume with more processes than the run had: each new one draws its own numbers (dropout)
            set_rng_state(states[0])
            torch.manual_seed(int(torch.randint(2 ** 62, ())) + rank)
            log.info("process %d: %s holds the RNG states of %d process(es); this one's is derived from the "
                     "first's", rank, path, len(states))

    def full_weights(self, info: DistInfo) -> contextlib.AbstractContextManager:
        """A ``with`` block in which the main process can sample from and export the model; every process
        enters it. Nothing to gather unless the weights are sharded (see :class:`VARTrainer`)."""
        return contextlib.nullcontext()


# ----------------------------------------------------------------------------------- tokenizer
class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided convs to a map of real/fake logits (GroupNorm keeps it DDP-friendly)."""

    def __init__(self, in_channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, layers):
            mods += [nn.Conv2d(c, c * 2, 4, 2 if i < layers - 1 else 1, 1), nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VQVAETrainer(_Trainer):
    """Reconstruction (L1 and/or L2) + multi-scale VQ loss, optional hinge-GAN loss with the adaptive
    weight of VQGAN, re-initialisation of dead codes every ``reinit_every`` steps, and optional EMA weights
    (``ema_decay``), which are then the ones evaluated and exported. Under torchrun ``ddp_disc`` is the
    discriminator's DistributedDataParallel wrapper, as ``ddp_model`` is the tokenizer's."""

    def __init__(self, vqvae: VQVAE, optimizer: torch.optim.Optimizer, device: str | torch.device = "cpu", *,
                 l1: float = 1.0, l2: float = 1.0, disc: PatchDiscriminator | None = None,
                 disc_optimizer: torch.optim.Optimizer | None = None, adv_weight: float = 0.0,
                 disc_start: int = 0, reinit_every: int = 200, dead_fraction: float = 0.03,
                 grad_clip: float = 2.0, amp: bool = False, ema_decay: float | None = None,
                 ddp_model: nn.Module | None = None, ddp_disc: nn.Module | None = None,
                 schedule: Schedule | None = None, compile: bool = False):
        self.ema = copy.deepcopy(vqvae).eval().requires_grad_(False) if ema_decay else None
        self.ema_decay = ema_decay
        modules, optimizers = {"vqvae": vqvae}, {"vqvae": optimizer}
        if self.ema is not None:
            modules["ema"] = self.ema
        if adv_weight > 0:
            if disc is None or disc_optimizer is None:
                raise ValueError(f"adv_weight={adv_weight} needs a discriminator and its optimizer (disc=, "
                                 "disc_optimizer=); adv_weight=0 trains without the GAN loss")
            modules["disc"], optimizers["disc"] = disc, disc_optimizer
        super().__init__(modules, optimizers, device, grad_clip, amp, schedule)
        self.vqvae, self.model, self.disc, self.disc_model = vqvae, ddp_model or vqvae, disc, ddp_disc or disc
        self.l1, self.l2, self.adv_weight, self.disc_start = l1, l2, adv_weight, disc_start
        self.reinit_every, self.dead_fraction = reinit_every, dead_fraction
        if compile:
            self.compile()

    def _adaptive_weight(self, rec_loss: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        """||grad rec|| / ||grad gan|| at the decoder's last layer: balances the two losses."""
        last = self.vqvae.decoder.conv_out.weight
        g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4).detach()

    def train_step(self, batch) -> dict:
        """One optimizer step on images in [0, 1] (or (images, labels)); returns the step's metrics."""
        began = time.perf_counter()
        images01 = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = images01.to(self.device) * 2 - 1
        self._follow_schedule()
        self.vqvae.train()
        with self.autocast():
            rec, vq_loss, _ = self._forward_model()(x)
        rec = rec.float()
        rec_loss = self.l1 * (rec - x).abs().mean() + self.l2 * (rec - x).pow(2).mean()
        loss = rec_loss + vq_loss
        metrics = {"rec_loss": rec_loss.item(), "vq_loss": vq_loss.item()}
        use_gan = self.adv_weight > 0 and self.step >= self.disc_start
        if use_gan:
            self.disc.requires_grad_(False)  # the generator's loss must not train the discriminator
            g_loss = -self.disc(rec).mean()
            self.disc.requires_grad_(True)
            w = self._adaptive_weight(rec_loss, g_loss)
            loss = loss + self.adv_weight * w * g_loss
            metrics.update(g_loss=g_loss.item(), adv_w=float(w))
        self._check_finite(loss)
        metrics["grad_norm"] = self._update(loss, "vqvae", self.vqvae.parameters())
        if use_gan:
            # Real and fake in one pass (GroupNorm is per image, so this equals two passes): DDP
            # synchronises gradients once per forward.
            real, fake = self.disc_model(torch.cat((x, rec.detach()))).split(x.shape[0])
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            self._check_finite(d_loss, "discriminator loss")
            self._update(d_loss, "disc", self.disc.parameters())
            metrics["d_loss"] = d_loss.item()
        self._update_ema(self.vqvae)
        self.step += 1
        if self.reinit_every and self.step % self.reinit_every == 0:
            metrics["codes_reset"] = self.reinit_dead_codes(x)
        usage = (self.vqvae.quantize.ema_vocab_hit_SV > 1e-4).float().mean(1)
        metrics.update({f"usage_s{k}": float(u) for k, u in enumerate(usage)})
        metrics["loss"] = loss.item()
        metrics["psnr"] = psnr((rec.detach().clamp(-1, 1) + 1) / 2, images01.to(self.device))
        self._log_first_compiled_step(began)
        return metrics

    @torch.no_grad()
    def reinit_dead_codes(self, x: torch.Tensor) -> int:
        """Codes hit less than ``dead_fraction / V`` of the time at every scale are moved onto latent
        vectors of the current batch; their optimizer moments are cleared. Returns how many moved."""
        q = self.vqvae.quantize
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            # Every process must restart the same codes (and clear the same Adam moments): decide on the
            # usage seen by all of them, not on each one's own half of the batches.
            torch.distributed.all_reduce(q.ema_vocab_hit_SV)
            q.ema_vocab_hit_SV /= torch.distributed.get_world_size()
        f = self.vqvae.encode_latent(x).float()
        reset = q.reinit_dead_codes(f.permute(0, 2, 3, 1).reshape(-1, q.channels), self.dead_fraction)
        if len(reset):
            if self.ema is not None:  # a moved code starts its average afresh
                self.ema.quantize.embedding.weight[reset] = q.embedding.weight[reset]
            state = self.optimizers["vqvae"].state.get(q.embedding.weight, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][reset] = 0
        if distributed:  # the moved codes take rank 0's candidates
            torch.distributed.broadcast(q.embedding.weight.data, 0)
            torch.distributed.broadcast(q.ema_vocab_hit_SV, 0)
            if self.ema is not None:
                torch.distributed.broadcast(self.ema.quantize.embedding.weight, 0)
        return len(reset)

    def eval_model(self) -> VQVAE:
        """The weights to evaluate and export: the EMA ones if kept."""
        return self.ema if self.ema is not None else self.vqvae

    @torch.no_grad()
    def evaluate(self, images01: torch.Tensor, batch_size: int | None = None) -> dict:
        """Reconstruction PSNR through the tokens (what the transformer will see), on held-out images, in
        batches of ``batch_size`` (default: 256 images of up to 32 x 32 pixels, fewer of larger ones, so
        that the activations of 256 px images do not take tens of GB)."""
        batch_size = batch_size or max(1, min(256, 256 * 32 * 32 // (images01.shape[-2] * images01.shape[-1])))
        model = self.eval_model()
        model.eval()
        scores = []
        for s in range(0, len(images01), batch_size):
            x = images01[s:s + batch_size].to(self.device)
            rec = model.indices_to_img(model.img_to_indices(x * 2 - 1))
            scores.append(psnr((rec + 1) / 2, x) * len(x))
        self.vqvae.train()
        return {"heldout_psnr": sum(scores) / len(images01)}


# --------------------------------------------------------------------------------- transformer
class VARTrainer(_Trainer):
    """Teacher-forced next-scale prediction with label-smoothed cross-entropy and optional EMA weights. ``var``
    may be sharded (:func:`var.training.fsdp.shard_transformer`, ``optimizer`` made over its sharded
    parameters); its EMA copy is then sharded alike."""

    def __init__(self, var: VAR, vqvae: VQVAE, optimizer: torch.optim.Optimizer, device: str | torch.device = "cpu",
                 *, label_smoothing: float = 0.0, grad_clip: float = 2.0, amp: bool = False,
                 ema_decay: float | None = None, ddp_model: nn.Module | None = None,
                 schedule: Schedule | None = None, compile: bool = False):
        quickstart.pair(var, vqvae)  # var.generate(...) finds it; before the copy, so the EMA model is paired too
        self.sharded = fsdp.is_sharded(var)
        if self.sharded and ddp_model is not None:
            raise ValueError("a sharded transformer (fully_shard) is trained as it is: ddp_model must be None")
        copy_of = fsdp.sharded_copy if self.sharded else copy.deepcopy
        self.ema = copy_of(var).eval().requires_grad_(False) if ema_decay else None
        modules = {"var": var} | ({"ema": self.ema} if self.ema is not None else {})
        super().__init__(modules, {"var": optimizer}, device, grad_clip, amp, schedule)
        self.var, self.model = var, ddp_model or var
        self.checkpoint_name = SHARDED_CHECKPOINT if self.sharded else CHECKPOINT
        self._gathered: VAR | None = None  # the plain model of full_weights, on the main process
        self.vqvae = vqvae.eval().requires_grad_(False)
        self.label_smoothing, self.ema_decay = label_smoothing, ema_decay
        if compile:
            self.compile()

    def compile(self, backend: str = "inductor", mode: str | None = None) -> None:
        """:meth:`_Trainer.compile`; ValueError for a sharded transformer (``--fsdp``), which is not compiled."""
        if self.sharded:
            raise ValueError(NO_COMPILE_WITH_FSDP)
        super().compile(backend, mode)

    def _split(self, tokens) -> list[torch.Tensor]:
        """Tokens as K maps from (B, L) or a list of maps."""
        if isinstance(tokens, torch.Tensor):
            return self.vqvae.quantize.split_sequence(tokens.long().to(self.device))
        return [t.long().to(self.device) for t in tokens]

    def train_step(self, batch) -> dict:
        """``batch`` is (tokens, labels) or (images in [0, 1], labels); images are tokenized on the fly."""
        began = time.perf_counter()
        x, labels = batch
        labels = labels.to(self.device)
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            with torch.no_grad():
                tokens = self.vqvae.img_to_indices(x.to(self.device) * 2 - 1)
        else:
            tokens = self._split(x)
        with torch.no_grad():
            x_in = self.vqvae.quantize.teacher_forcing_input(tokens)
        target_BL = torch.cat(tokens, dim=1)
        self._follow_schedule()
        self.var.train()
        with self.autocast(), fsdp.quiet_view_outputs() if self.sharded else contextlib.nullcontext():
            logits_BLV = self._forward_model()(labels, x_in)
        B, L, V = logits_BLV.shape
        loss_BL = F.cross_entropy(logits_BLV.float().view(-1, V), target_BL.view(-1),
                                  label_smoothing=self.label_smoothing, reduction="none").view(B, L)
        loss = loss_BL.mean()
        self._check_finite(loss)
        grad_norm = self._update(loss, "var", self.var.parameters())
        self._update_ema(self.var)
        self.step += 1
        with torch.no_grad():
            correct_BL = (logits_BLV.argmax(-1) == target_BL).float()
            metrics = {"loss": loss.item(), "acc": float(correct_BL.mean()), "grad_norm": grad_norm}
            sizes = [h * w for h, w in self.var.scales]
            for k, (l_part, c_part) in enumerate(zip(loss_BL.split(sizes, 1), correct_BL.split(sizes, 1))):
                metrics[f"loss_s{k}"], metrics[f"acc_s{k}"] = float(l_part.mean()), float(c_part.mean())
        self._log_first_compiled_step(began)
        return metrics

    def train_epoch(self, loader: Iterable) -> dict:
        """One pass over ``loader`` (batches of (tokens or images, labels)); returns mean metrics."""
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            for k, v in self.train_step(batch).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        if n == 0:
            raise ValueError("the loader yielded no batch")
        return {k: v / n for k, v in sums.items()} | {"steps": n}

    def sampling_model(self) -> VAR:
        """The weights samples are drawn with: the EMA copy when kept, else the trained model. Sharded, the
        plain model :meth:`full_weights` gathers on the main process (RuntimeError outside that block)."""
        if not self.sharded:
            return self.ema if self.ema is not None else self.var
        if self._gathered is None:
            raise RuntimeError("the transformer is sharded: sample or export inside trainer.full_weights(info), "
                               "on the main process, with every process in that block")
        return self._gathered

    @contextlib.contextmanager
    def full_weights(self, info: DistInfo) -> Iterator[None]:
        """Sharded, every process gathers the sampling weights (EMA if kept) into a plain model on the main
        process, which :meth:`sampling_model` and the pipelines use in the block; dropped after it."""
        if not self.sharded:
            yield
            return
        self._gathered = fsdp.full_model(self.ema if self.ema is not None else self.var, info)
        try:
            yield
        finally:
            self._gathered = None

    def pipeline(self, class_names: Sequence[str] | None = None, pad: int = 0, info: dict | None = None) -> VARPipeline:
        """A pipeline of the current (EMA, if kept) weights; shares tensors with the trainer. On CPU it
        swaps the CPU layers into those models (:func:`var.cpu.accelerate`: packed copies of the transformer's
        weights, their size again); a pipeline used only for a moment during training is better taken from
        :meth:`sampling_pipeline`."""
        return VARPipeline(self.vqvae, self.sampling_model(), class_names=class_names, pad=pad, info=info)

    @contextlib.contextmanager
    def sampling_pipeline(self, class_names: Sequence[str] | None = None, pad: int = 0,
                          info: dict | None = None) -> Iterator[VARPipeline]:
        """:meth:`pipeline` for the length of a ``with`` block. On leaving it, the transformer's plain layers
        are back (:func:`var.cpu.plain`: the packed copies of its weights would otherwise sit in memory, the
        model's size again, until the next snapshot) and the trained model is back in training mode."""
        try:
            yield self.pipeline(class_names, pad, info)
        finally:
            plain(self.sampling_model())
            self.var.train()

    def generate_samples(self, num_samples: int, class_labels: Sequence[int] | None = None, seed: int = 0,
                         **sampling) -> VAROutput:
        """Samples from the current weights (EMA if kept); classes cycle through all if not given."""
        labels = list(class_labels) if class_labels is not None else [i % self.var.num_classes for i in range(num_samples)]
        with self.sampling_pipeline() as pipe:
            return pipe(class_labels=labels, seed=seed, **sampling)
