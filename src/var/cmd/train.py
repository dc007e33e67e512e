"""``var train-vae``, ``var train`` and ``var plot``: training runs and their loss curves."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("var")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.replace(",", " ").split())


def _schedule_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float) -> None:
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, default=steps)
    g.add_argument("--batch-size", type=int, default=batch, help="global batch (split over torchrun processes)")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--warmup", type=int, default=200)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--grad-clip", type=float, default=2.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--save-every", type=int, default=500)
    g.add_argument("--sample-every", type=int, default=1000)
    g.add_argument("--log-every", type=int, default=20)
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast")
    g.add_argument("--flip", action="store_true", help="random horizontal flips")


def _schedule(a: argparse.Namespace):
    from ..training.common import Schedule
    return Schedule(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, min_lr_ratio=a.min_lr_ratio,
                    weight_decay=a.weight_decay, grad_clip=a.grad_clip, seed=a.seed, save_every=a.save_every,
                    sample_every=a.sample_every, log_every=a.log_every)


def register(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train-vae", help="train the multi-scale VQ-VAE tokenizer", formatter_class=fmt)
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, a folder of its IDX files, or an image folder")
    p.add_argument("--out", type=Path, default=Path("runs/vae"))
    p.add_argument("--preset", choices=["fashion-mnist", "custom"], default="fashion-mnist",
                   help="fashion-mnist: the bundled model's tokenizer; custom: the options below")
    g = p.add_argument_group("model (--preset custom)")
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--channels", type=int, default=3)
    g.add_argument("--ch", type=int, default=64)
    g.add_argument("--ch-mult", type=_ints, default=(1, 2, 2), help="e.g. 1,2,2 (4x down-sampling)")
    g.add_argument("--num-res-blocks", type=int, default=1)
    g.add_argument("--z-channels", type=int, default=16)
    g.add_argument("--vocab-size", type=int, default=512)
    g.add_argument("--patch-nums", type=_ints, default=None, help="scale schedule, e.g. 1,2,3,4,6,8")
    g.add_argument("--max-scale", type=int, default=None, help="schedule 1,2,...,N")
    g.add_argument("--no-attn", action="store_true", help="no attention blocks")
    l = p.add_argument_group("losses")
    l.add_argument("--l1", type=float, default=1.0)
    l.add_argument("--l2", type=float, default=1.0)
    l.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    l.add_argument("--adv-weight", type=float, default=0.0, help="patch-GAN loss weight (0: off)")
    l.add_argument("--disc-start", type=int, default=0)
    l.add_argument("--reinit-every", type=int, default=200, help="re-initialise dead codes every N steps (0: never)")
    _schedule_args(p, steps=3000, batch=64, lr=2e-4)
    p.set_defaults(run=run_train_vae)

    p = sub.add_parser("train", help="train the VAR transformer on a trained tokenizer's tokens", formatter_class=fmt)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--vae", type=Path, default=Path("runs/vae"), help="a train-vae run folder")
    p.add_argument("--out", type=Path, default=Path("runs/var"))
    p.add_argument("--preset", choices=["fashion-mnist", "small", "medium", "large"], default="fashion-mnist")
    p.add_argument("--depth", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--cond-drop", type=float, default=0.1, help="label dropout for classifier-free guidance")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="cross-entropy label smoothing (the reference trains without)")
    p.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth rate of the last block (default: the reference's 0.1 x depth / 24)")
    p.add_argument("--init-adaln-gamma", type=float, default=None,
                   help="initial scale of the AdaLN gates (default: the reference's 1e-3 up to depth 20, 1e-4 deeper)")
    p.add_argument("--ema", type=float, default=None, help="keep EMA weights with this decay, e.g. 0.999")
    p.add_argument("--cache-dir", type=Path, default=None, help="token cache (default ~/.cache/var/tokens)")
    p.add_argument("--crop", action="store_true",
                   help="random-crop augmentation (the reference's): images resized to 1.125x, a random window "
                        "cut every step and tokenized on the fly instead of read from the token cache")
    _schedule_args(p, steps=6000, batch=64, lr=4e-4)
    p.set_defaults(run=run_train_var)

    p = sub.add_parser("plot", help="draw a run's loss curves to a PNG")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default RUN/loss.png")
    p.set_defaults(run=run_plot)


def run_train_vae(a: argparse.Namespace) -> int:
    from ..aliases import patch_nums_from_max_scale
    from ..recipes import fashion_mnist_configs
    from ..training.runs import train_vqvae
    from ..vqvae import VQVAEConfig

    if a.preset == "fashion-mnist":
        cfg = fashion_mnist_configs()[0]
    else:
        patch_nums = a.patch_nums or patch_nums_from_max_scale(a.max_scale or a.image_size // 2 ** (len(a.ch_mult) - 1))
        cfg = VQVAEConfig(in_channels=a.channels, ch=a.ch, ch_mult=a.ch_mult, num_res_blocks=a.num_res_blocks,
                          z_channels=a.z_channels, vocab_size=a.vocab_size, patch_nums=patch_nums,
                          using_sa=not a.no_attn, using_mid_sa=not a.no_attn, norm_groups=min(32, a.ch))
        if cfg.image_size != a.image_size:
            raise ValueError(f"--image-size {a.image_size} does not match the schedule: last scale "
                             f"{patch_nums[-1]} x {cfg.downsample} = {cfg.image_size}")
    cfg.beta = a.beta
    result = train_vqvae(a.data, a.out, cfg, _schedule(a), l1=a.l1, l2=a.l2, adv_weight=a.adv_weight,
                         disc_start=a.disc_start, reinit_every=a.reinit_every, flip=a.flip, amp=a.amp, device=a.device)
    if "heldout_psnr" in result:
        log.info("tokenizer saved in %s; held-out PSNR %.2f dB", a.out, result["heldout_psnr"])
    return 0


def run_train_var(a: argparse.Namespace) -> int:
    from ..recipes import fashion_mnist_configs
    from ..training.runs import train_var
    from ..transformer import VARConfig

    cfg = fashion_mnist_configs()[1] if a.preset == "fashion-mnist" else VARConfig.from_preset(a.preset)
    for name in ("depth", "embed_dim", "num_heads"):
        if getattr(a, name) is not None:
            setattr(cfg, name, getattr(a, name))
    cfg.cond_drop_rate = a.cond_drop
    cfg.drop_path_rate = a.drop_path
    cfg = VARConfig(**cfg.to_dict())  # re-validate after the overrides
    train_var(a.data, a.vae, a.out, cfg, _schedule(a), label_smoothing=a.label_smoothing, ema=a.ema, flip=a.flip,
              amp=a.amp, cache_dir=a.cache_dir, device=a.device, init_adaln_gamma=a.init_adaln_gamma,
              crop=a.crop)
    log.info("pipeline saved in %s (load it with VARPipeline.from_pretrained)", a.out)
    return 0


def run_plot(a: argparse.Namespace) -> int:
    from ..training.plot import plot_run
    path = plot_run(a.run_dir, a.out)
    log.info("wrote %s", path)
    return 0
