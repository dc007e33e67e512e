"""``var train-vae``, ``var train`` and ``var plot``: training runs and their loss curves."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

from ..recipes import (CUSTOM_VAE_MODEL, DECODER_FINETUNE, PRESET_VAE_OVERRIDES, QUICK_PATCH_NUMS, QUICK_VAE_MODEL,
                       QUICK_VAR, REFERENCE_PRESETS, REFERENCE_WARMUP_SHARE, VAE_RECIPES, VAR_RECIPES,
                       fashion_mnist_configs, preset_config, reference_recipe)
from ..data import DataSummary, describe_data, holdout_size
from ..schedule import as_hw, parse_patch_nums, parse_size
from ..training.common import LR_SCHEDULES
from .common import add_command, add_device_arg, argument_type, check_output_files, positive_int

log = logging.getLogger("var")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.replace(",", " ").split())


# How the help names a default that the reference presets derive (None in their recipe).
_DERIVED = {"warmup": "2%% of --steps (the reference's)",
            "min_lr_ratio": "the reference's --wpe for the depth: 0.1 up to depth 23, 0.01 from 24"}
_REFERENCE_TWDE = "; with --preset small, medium or large the reference's --twde for the depth: 0.08 from depth 30"


def _by_preset(recipes: dict[str, dict], key: str) -> str:
    """Help text of a preset-dependent default: each value with the presets that take it, e.g.
    "(default: 2500 with --preset fashion-mnist; 6000 with large, medium, small; 8000 with quick)"."""
    presets_of: dict[str, list[str]] = {}
    for name, recipe in recipes.items():
        value = str(recipe[key]) if recipe[key] is not None else _DERIVED[key]
        presets_of.setdefault(value, []).append(name)
    if len(presets_of) == 1:
        return f"(default: {next(iter(presets_of))})"
    parts = [f"{value} with {'--preset ' if i == 0 else ''}{', '.join(sorted(names))}"
             for i, (value, names) in enumerate(presets_of.items())]
    return f"(default: {'; '.join(parts)})"


def _flags(names) -> str:
    """Option names as typed on the command line: ``--max-scale, --no-attn``."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


def _model_options_given(a: argparse.Namespace, allowed: tuple[str, ...] = ()) -> list[str]:
    """The tokenizer model options set on the command line, besides ``allowed``."""
    names = (*CUSTOM_VAE_MODEL, "patch_nums", "max_scale", "no_attn", "cosine_lookup")
    return [name for name in names if name not in allowed and getattr(a, name) is not None
            and getattr(a, name) is not False]


def with_defaults(a: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """New options: ``a`` with those left unset (None) taken from ``defaults``; ``a`` is not changed."""
    return argparse.Namespace(**{**vars(a), **{k: v for k, v in defaults.items() if getattr(a, k) is None}})


def resolve_preset_defaults(a: argparse.Namespace, recipes: dict[str, dict],
                            summary: DataSummary | None = None) -> argparse.Namespace:
    """The options with those left unset (None) taken from the preset's recipe; a ``--preset`` left unset
    is chosen for the data (:func:`_choose_preset`; ``summary``: the data's, else read here)."""
    if a.preset is None:
        a = _choose_preset(a, summary if summary is not None else describe_data(a.data))
    return with_defaults(a, recipes[a.preset])


def _betas(text: str) -> tuple[float, float]:
    """Adam's two betas from "B1,B2", each in [0, 1)."""
    try:
        b1, b2 = (float(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"expected two numbers B1,B2 such as 0.9,0.95, got {text!r}") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"Adam's betas must be in [0, 1), got {text!r}")
    return b1, b2


def _schedule_args(p: argparse.ArgumentParser, recipes: dict[str, dict]) -> None:
    g = p.add_argument_group("schedule")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimizer steps " + _by_preset(recipes, "steps"))
    length.add_argument("--minutes", type=float, default=None,
                        help="train for about this many minutes instead: a few steps are timed first and the steps "
                             "that fit are kept in the run folder's budget.json (a resume keeps them); the run then "
                             "writes 6 snapshots and checkpoints, and a warm-up of at most a tenth of it. One "
                             "process only (under torchrun give --steps)")
    g.add_argument("--batch-size", type=positive_int,
                   help="global batch (split over torchrun processes); one left unset is at most the training "
                        "images " + _by_preset(recipes, "batch_size"))
    g.add_argument("--lr", type=float, help="peak learning rate " + _by_preset(recipes, "lr"))
    g.add_argument("--warmup", type=int, help="linear warm-up steps " + _by_preset(recipes, "warmup"))
    g.add_argument("--schedule", choices=LR_SCHEDULES,
                   help="learning-rate curve: cos, warm-up then cosine decay to lr x --min-lr-ratio; lin0, the "
                        "reference's: warm-up from lr x 0.005, the peak held for 5%% of the rest, then linear to lr "
                        "x --min-lr-ratio at the last step " + _by_preset(recipes, "schedule"))
    g.add_argument("--min-lr-ratio", type=float,
                   help="the decay ends at lr x this " + _by_preset(recipes, "min_lr_ratio"))
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay of the weight matrices")
    g.add_argument("--final-weight-decay", type=float, default=None,
                   help="anneal the weight decay to this at the last step, by a half cosine (the reference's "
                        "--twde) (default: constant" + (_REFERENCE_TWDE if recipes is VAR_RECIPES else "") + ")")
    g.add_argument("--grad-clip", type=float, default=2.0, help="gradient norm clipping (0: off)")
    g.add_argument("--seed", type=int, default=0, help="random seed: initial weights and the batch of every step")
    g.add_argument("--save-every", type=positive_int,
                   help="checkpoint and export every N steps " + _by_preset(recipes, "save_every"))
    g.add_argument("--sample-every", type=positive_int,
                   help="write samples (or reconstructions) every N steps " + _by_preset(recipes, "sample_every"))
    g.add_argument("--log-every", type=positive_int, default=20, help="log and append to metrics.jsonl every N steps")
    add_device_arg(g)
    g.add_argument("--amp", action="store_true",
                   help="bf16 autocast (mixed precision; the quantizer stays float32): faster on GPUs with bf16 and "
                        "on CPUs with AMX or AVX512-BF16; a CPU without them emulates bf16 and trains slower than "
                        "without --amp (a note at the start says so)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step's forward and backward passes (the first step compiles, "
                        "its time is logged; inductor needs a C++ compiler on the CPU); not with --fsdp "
                        "(docs/performance.md)")
    g.add_argument("--flip", action="store_true", help="random horizontal flips")


def _schedule(a: argparse.Namespace):
    """The run's Schedule from the resolved options, logged in a line."""
    from ..training.common import Schedule
    length = f"about {a.minutes:g} minutes of steps" if a.minutes is not None else f"{a.steps} steps"
    log.info("schedule: %s, batch %d, learning rate %g (%s, %d warm-up steps)", length, a.batch_size, a.lr,
             a.schedule, a.warmup)
    return Schedule(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, min_lr_ratio=a.min_lr_ratio,
                    weight_decay=a.weight_decay, grad_clip=a.grad_clip, seed=a.seed, save_every=a.save_every,
                    sample_every=a.sample_every, log_every=a.log_every, lr_schedule=a.schedule,
                    final_weight_decay=a.final_weight_decay)


def _resolve_reference_recipe(a: argparse.Namespace, depth: int) -> argparse.Namespace:
    """The options with what a reference preset derives taken where the command left it unset: the warm-up
    from --steps, and the final learning-rate fraction and weight decay from the transformer's ``depth``."""
    recipe = reference_recipe(depth)
    return with_defaults(a, dict(warmup=max(1, round(a.steps * REFERENCE_WARMUP_SHARE)),
                                 min_lr_ratio=recipe.final_lr_ratio, final_weight_decay=recipe.final_weight_decay))


def register(sub) -> None:
    p = add_command(sub, "train-vae", "train the multi-scale VQ-VAE tokenizer")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, a folder of its IDX files, a var prepare-data folder (memory-mapped), or an "
                        "image folder (decoded into memory); 5%% of the last two held out")
    p.add_argument("--out", type=Path, default=Path("runs/vae"), help="run folder: checkpoint, metrics, weights")
    p.add_argument("--preset", choices=sorted(VAE_RECIPES), default=None,
                   help="fashion-mnist: the bundled model's tokenizer and recipe; quick: a small tokenizer for "
                        "small folders and short runs (--minutes), at the data's channels; custom: the model "
                        "options below (default: fashion-mnist for Fashion-MNIST data, else quick)")
    p.add_argument("--finetune-decoder", metavar="TOKENIZER", default=None,
                   help="start from this trained tokenizer (a train-vae run folder, a pipeline folder or a bundled "
                        "model's name) and train its decoder alone: the encoder and codebook stay frozen, so every "
                        "image's tokens, and a transformer trained on them, stay valid. The model is the source's "
                        "(no model options); unset schedule options take %s" % ", ".join(
                            f"{k.replace('_', '-')} {v}" for k, v in DECODER_FINETUNE.items()))
    g = p.add_argument_group("model (--preset custom and quick; the fashion-mnist preset takes --ch, "
                             "--num-res-blocks, --z-channels and --vocab-size as overrides)")
    g.add_argument("--image-size", type=argument_type(parse_size), default=None,
                   help="image side, or HxW (height x width) such as 32x64, in pixels: images are resized to cover "
                        "it and centre-cropped (default: 32)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grayscale) or 3 (RGB) (default: 3; the data's with --preset quick)")
    g.add_argument("--ch", type=positive_int, default=None,
                   help="base channel width of the encoder and decoder (default: 32 with --preset fashion-mnist "
                        "and quick, else 64)")
    g.add_argument("--ch-mult", type=_ints, default=None,
                   help="channel multiplier per level; N levels down-sample 2^(N-1)x, e.g. 1,2,2 is 4x "
                        "(default: 1,2,2)")
    g.add_argument("--num-res-blocks", type=int, default=None, help="residual blocks per level (default: 1)")
    g.add_argument("--z-channels", type=positive_int, default=None, help="latent (and codebook) width (default: 16)")
    g.add_argument("--vocab-size", type=positive_int, default=None,
                   help="codebook size (default: 512 with --preset quick, else 4096, the released tokenizer's)")
    g.add_argument("--patch-nums", type=argument_type(parse_patch_nums), default=None,
                   help="scale schedule, e.g. 1,2,3,4,6,8, or height x width per scale, e.g. 1x2,2x4,4x8,8x16 "
                        "(default: from --max-scale)")
    g.add_argument("--max-scale", type=argument_type(parse_size), default=None,
                   help="schedule 1,2,...,N, or HxW: the short side steps 1,2,... at the image's aspect ratio "
                        "(default: the image size / down-sampling)")
    g.add_argument("--no-attn", action="store_true", help="no attention blocks")
    g.add_argument("--cosine-lookup", action="store_true",
                   help="nearest code by cosine similarity instead of L2 distance")
    l = p.add_argument_group("losses")
    l.add_argument("--l1", type=float, default=1.0, help="L1 reconstruction loss weight")
    l.add_argument("--l2", type=float, default=1.0, help="L2 reconstruction loss weight")
    l.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    l.add_argument("--adv-weight", type=float, help="patch-GAN loss weight, times VQGAN's adaptive weight (0: off) "
                   + _by_preset(VAE_RECIPES, "adv_weight"))
    l.add_argument("--disc-start", type=int,
                   help="step at which the patch-GAN loss starts (default: a quarter of --steps)")
    l.add_argument("--reinit-every", type=int, default=None,
                   help="re-initialise dead codes every N steps (0: never) (default: 200; 0 with --finetune-decoder)")
    l.add_argument("--betas", type=argument_type(_betas), default=(0.9, 0.95), metavar="B1,B2",
                   help="the tokenizer's Adam betas (VQGAN's 0.5,0.9 reconstructed worse without the GAN loss: "
                        "docs/training-defaults.md)")
    l.add_argument("--ema", type=float,
                   help="decay of the weights' exponential moving average, which is what is evaluated and exported "
                        "(0: none) " + _by_preset(VAE_RECIPES, "ema"))
    _schedule_args(p, VAE_RECIPES)
    p.set_defaults(run=run_train_vae)

    p = add_command(sub, "train", "train the VAR transformer on a trained tokenizer's tokens")
    p.add_argument("--data", default="fashion-mnist",
                   help="the tokenizer's data: fashion-mnist, a folder of its IDX files, a var prepare-data folder, "
                        "or an image folder")
    p.add_argument("--vae", type=Path, default=Path("runs/vae"), help="a train-vae run folder")
    p.add_argument("--out", type=Path, default=Path("runs/var"),
                   help="run folder; it becomes a VARPipeline.from_pretrained folder")
    p.add_argument("--preset", choices=sorted(VAR_RECIPES), default=None,
                   help="transformer size and recipe: fashion-mnist is the bundled model's (depth 8, width 224, 7 "
                        "heads); quick (depth %d, width %d, %d heads) is for small folders and short runs (--minutes); "
                        "small, medium, large are var.recipes.preset_config's (default: fashion-mnist for "
                        "Fashion-MNIST data, else quick)" % (QUICK_VAR["depth"], QUICK_VAR["embed_dim"],
                                                             QUICK_VAR["num_heads"]))
    p.add_argument("--depth", type=int, help="override the preset's number of blocks")
    p.add_argument("--embed-dim", type=int, help="override the preset's width")
    p.add_argument("--num-heads", type=int, help="override the preset's attention heads")
    p.add_argument("--cond-drop", type=float, default=0.1, help="label dropout for classifier-free guidance")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="cross-entropy label smoothing (the reference trains without)")
    p.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth rate of the last block (default: the reference's 0.1 x depth / 24)")
    p.add_argument("--init-adaln-gamma", type=float, default=None,
                   help="initial scale of the AdaLN gates (default: the reference's --alng for the depth: 1e-3 up "
                        "to depth 23, 1e-4 for 24-29, 1e-5 for 30-35, 5e-6 from 36)")
    p.add_argument("--ema", type=float, default=None,
                   help="keep EMA weights with this decay for sampling and export; 0 turns EMA off "
                        + _by_preset(VAR_RECIPES, "ema"))
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="token cache (default: %s)" % "$XDG_CACHE_HOME/var/tokens, else ~/.cache/var/tokens")
    p.add_argument("--crop", action="store_true",
                   help="random-crop augmentation (the reference's): images resized to 1.125x, a random window "
                        "cut every step and tokenized on the fly instead of read from the token cache")
    p.add_argument("--fsdp", action="store_true",
                   help="shard the transformer, its gradients, AdamW's moments and the EMA weights over the torchrun "
                        "processes (PyTorch's FSDP2): each process holds 1/N of them, so models too large for one "
                        "device train; checkpoints are sharded too (docs/training.md)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="with --fsdp: the dtype the blocks compute in; bf16 gathers bf16 weights and computes under "
                        "bf16 autocast, while the shards, the gradients' reduction and AdamW stay float32")
    _schedule_args(p, VAR_RECIPES)
    p.set_defaults(run=run_train_var)

    p = add_command(sub, "plot", "draw a run's loss curves to a PNG")
    p.add_argument("run_dir", type=Path, help="a var train or var train-vae run folder (it holds metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/loss.png)")
    p.set_defaults(run=run_plot)


def _preset_vae_config(a: argparse.Namespace):
    """The fashion-mnist preset's tokenizer with the overrides given; ValueError names a model option
    that would change its geometry (those belong to ``--preset custom``)."""
    geometry = _model_options_given(a, allowed=PRESET_VAE_OVERRIDES)
    if geometry:
        raise ValueError(f"{_flags(geometry)}: only with --preset custom; the fashion-mnist preset's tokenizer takes "
                         f"{_flags(PRESET_VAE_OVERRIDES)} as overrides")
    cfg = fashion_mnist_configs()[0]
    given = {name: getattr(a, name) for name in PRESET_VAE_OVERRIDES if getattr(a, name) is not None}
    return dataclasses.replace(cfg, **given)  # the config's own checks run again on the new values


def _quick_vae_model(a: argparse.Namespace, summary: DataSummary) -> dict:
    """The quick preset's model options for this data: the data's channels, 16 px for images of 16 px or
    less, else 32 px (logged, with how to change them)."""
    side = 16 if min(summary.size_hw) <= 16 else 32
    if a.image_size is None or a.channels is None:
        log.info("the quick preset's tokenizer takes %s images%s (--image-size and --channels change that)",
                 "x".join(map(str, as_hw(a.image_size or side))),
                 "" if a.channels is not None else " in colour (RGB)" if summary.channels == 3 else " in greyscale")
    model = dict(QUICK_VAE_MODEL, channels=summary.channels, image_size=side)
    if a.image_size is None and a.patch_nums is None and a.max_scale is None:
        model["patch_nums"] = QUICK_PATCH_NUMS[side]
    return model


def _custom_vae_config(a: argparse.Namespace, defaults: dict):
    """The tokenizer of ``--preset custom`` or ``quick``, its model options left unset taken from ``defaults``;
    ValueError when the schedule does not make ``--image-size``."""
    from ..schedule import patch_nums_from_max_scale, schedule_for
    from ..vqvae import VQVAEConfig

    a = with_defaults(a, defaults)
    downsample = 2 ** (len(a.ch_mult) - 1)
    image_hw = as_hw(a.image_size)
    if a.patch_nums:
        patch_nums = a.patch_nums
    elif a.max_scale:
        patch_nums = patch_nums_from_max_scale(a.max_scale)
    else:
        patch_nums = schedule_for(image_hw, downsample)
    cfg = VQVAEConfig(in_channels=a.channels, ch=a.ch, ch_mult=a.ch_mult, num_res_blocks=a.num_res_blocks,
                      z_channels=a.z_channels, vocab_size=a.vocab_size, patch_nums=patch_nums,
                      using_sa=not a.no_attn, using_mid_sa=not a.no_attn, norm_groups=min(32, a.ch),
                      cosine_lookup=a.cosine_lookup)
    if cfg.image_hw != image_hw:
        (h, w), (H, W) = cfg.scales[-1], cfg.image_hw
        raise ValueError(f"--image-size {image_hw[0]}x{image_hw[1]} does not match the schedule: last scale "
                         f"{h}x{w} x {downsample} = {H}x{W} (height x width)")
    return cfg


def _check_schedule_options(a: argparse.Namespace) -> None:
    """ValueError when both ``--patch-nums`` and ``--max-scale`` are given: each sets the scale schedule."""
    if a.patch_nums and a.max_scale:
        raise ValueError(f"--patch-nums {','.join(map(_size_text, a.patch_nums))} and --max-scale "
                         f"{_size_text(a.max_scale)} both set the scale schedule: give one, not both")


def _size_text(size) -> str:
    """A size or a schedule's scale as typed on the command line: 8, or 6x8 (height x width)."""
    return str(size) if isinstance(size, int) else "x".join(map(str, size))


def _check_warmup(a: argparse.Namespace, warmup_given: bool) -> None:
    """A ``--warmup`` given on the command line must fit in the run: past ``--steps`` the learning rate would
    never reach ``--lr`` nor decay. (A preset's warm-up longer than a short trial run is shortened by
    :func:`_fit_warmup`.)"""
    if warmup_given and a.steps is not None and a.warmup > a.steps:
        raise ValueError(f"--warmup {a.warmup} is longer than the run (--steps {a.steps}): the learning rate would "
                         f"never reach {'--lr %g' % a.lr if a.lr else 'the peak learning rate'} nor decay; expected a warm-up of at most {a.steps} steps")


def _choose_preset(a: argparse.Namespace, summary: DataSummary) -> argparse.Namespace:
    """The options with ``--preset`` (left unset) chosen for the data: fashion-mnist for Fashion-MNIST, quick
    for anything else; the choice and why are logged."""
    preset = "fashion-mnist" if summary.kind == "fashion-mnist" else "quick"
    why = ("the bundled model's recipe" if preset == "fashion-mnist" else
           "a small model and short schedules for a small data set (--minutes sets the run's length; --preset "
           "custom, or small/medium/large for var train, for larger models)")
    log.info("data: %s; --preset %s: %s", _describe(summary, a.data), preset, why)
    return argparse.Namespace(**{**vars(a), "preset": preset})


def _warn_conversion(a: argparse.Namespace, summary: DataSummary) -> None:
    """Warn when the fashion-mnist preset is given images it converts (colour, or of another size)."""
    if a.preset == "fashion-mnist" and (summary.channels, summary.size_hw) != (1, (28, 28)):
        log.warning("--preset fashion-mnist trains on 28x28 greyscale images: %s, converted to that "
                    "(--preset quick or custom keep its colour and size)", _describe(summary, a.data))


def _describe(summary: DataSummary, data: str) -> str:
    """The data as the log names it: 'shapes/: 200 images in 2 classes (discs, squares), colour, 32x32'."""
    classes = summary.class_names
    named = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return (f"{data}: {summary.count:,} images in {len(classes)} class(es) ({named}), "
            f"{'colour' if summary.channels == 3 else 'greyscale'}, {summary.size_hw[0]}x{summary.size_hw[1]}"
            + (" (median)" if summary.kind == "folder" else ""))


def _fit_batch(a: argparse.Namespace, training_images: int, batch_given: bool) -> argparse.Namespace:
    """The options with a batch left unset reduced to the training images when the preset's is larger (to a
    multiple of the torchrun processes), logged; a ``--batch-size`` given is kept (larger than the data, the
    run refuses it, naming both)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_given or a.batch_size <= training_images:
        return a
    batch = max(world, training_images // world * world)
    log.info("batch %d: the preset's %d is more than the %d training images", batch, a.batch_size, training_images)
    return argparse.Namespace(**{**vars(a), "batch_size": batch})


def _fit_warmup(a: argparse.Namespace, warmup_given: bool) -> argparse.Namespace:
    """The options with a preset's warm-up longer than a tenth of ``--steps`` shortened to that (logged): a
    short trial run should decay, not end in its warm-up. A ``--warmup`` given, and ``--minutes`` runs (which
    choose their own), are left alone."""
    if warmup_given or a.minutes is not None or a.warmup <= a.steps // 10:
        return a
    warmup = max(1, a.steps // 10)
    log.info("warm-up %d steps: a tenth of --steps %d (the preset's %d would last past it)", warmup, a.steps,
             a.warmup)
    return argparse.Namespace(**{**vars(a), "warmup": warmup})


def run_train_vae(a: argparse.Namespace) -> int:
    from ..training.runs import train_vqvae

    warmup_given, batch_given = a.warmup is not None, a.batch_size is not None
    _check_warmup(a, warmup_given)  # before the data is read, where --steps is given
    _check_schedule_options(a)
    if a.finetune_decoder is not None:
        given = _model_options_given(a)
        if given:
            raise ValueError(f"{_flags(given)}: --finetune-decoder keeps the model of {a.finetune_decoder}; leave "
                             "the model options out")
        a = with_defaults(a, DECODER_FINETUNE)
        cfg = None  # the source's
    else:
        summary = describe_data(a.data) if a.preset in (None, "quick") else None  # else: after the model's checks
        a = resolve_preset_defaults(a, VAE_RECIPES, summary)
        # The GAN starts once the reconstructions have taken shape (VQGAN-style delayed start).
        a = with_defaults(a, dict(disc_start=a.steps // 4))
        if a.preset == "fashion-mnist":
            cfg = _preset_vae_config(a)
        elif a.preset == "custom":
            cfg = _custom_vae_config(a, CUSTOM_VAE_MODEL)
        summary = summary or describe_data(a.data)
        if a.preset == "quick":
            cfg = _custom_vae_config(a, _quick_vae_model(a, summary))
        _warn_conversion(a, summary)
        cfg = dataclasses.replace(cfg, beta=a.beta)
        training = summary.count - (holdout_size(summary.count) if summary.kind != "fashion-mnist" else 0)
        a = _fit_batch(a, training, batch_given)
    a = _fit_warmup(a, warmup_given)
    _check_warmup(a, warmup_given)
    result = train_vqvae(a.data, a.out, cfg, _schedule(a), l1=a.l1, l2=a.l2, adv_weight=a.adv_weight,
                         disc_start=a.disc_start, reinit_every=a.reinit_every, flip=a.flip, amp=a.amp, device=a.device,
                         betas=a.betas, ema=a.ema or None, finetune_decoder=a.finetune_decoder, minutes=a.minutes,
                         compile=a.compile)
    if "heldout_psnr" in result:
        log.info("tokenizer saved in %s; held-out PSNR %.2f dB", a.out, result["heldout_psnr"])
    return 0


def run_train_var(a: argparse.Namespace) -> int:
    from ..training.runs import train_var

    warmup_given, batch_given = a.warmup is not None, a.batch_size is not None
    _check_warmup(a, warmup_given)  # before the data is read, where --steps is given
    a = resolve_preset_defaults(a, VAR_RECIPES)
    if a.preset == "fashion-mnist":
        cfg = fashion_mnist_configs()[1]
    else:  # the vocabulary and scales are replaced by the tokenizer's
        cfg = preset_config("small", **QUICK_VAR) if a.preset == "quick" else preset_config(a.preset)
    sizes = {name: getattr(a, name) for name in ("depth", "embed_dim", "num_heads") if getattr(a, name) is not None}
    # replace() validates the new config (drop_path_rate None: derived from the new depth).
    cfg = dataclasses.replace(cfg, **sizes, cond_drop_rate=a.cond_drop, drop_path_rate=a.drop_path)
    if a.preset in REFERENCE_PRESETS:
        a = _resolve_reference_recipe(a, cfg.depth)
    summary = describe_data(a.data)
    _warn_conversion(a, summary)
    a = _fit_warmup(_fit_batch(a, summary.count, batch_given), warmup_given)
    _check_warmup(a, warmup_given)
    train_var(a.data, a.vae, a.out, cfg, _schedule(a), label_smoothing=a.label_smoothing, ema=a.ema or None,
              flip=a.flip, amp=a.amp, cache_dir=a.cache_dir, device=a.device, init_adaln_gamma=a.init_adaln_gamma,
              crop=a.crop, minutes=a.minutes, fsdp=a.fsdp, dtype=a.dtype, compile=a.compile)
    log.info("pipeline saved in %s (load it with VARPipeline.from_pretrained)", a.out)
    return 0


def run_plot(a: argparse.Namespace) -> int:
    from ..training.plot import plot_run
    check_output_files(out=a.out)
    path = plot_run(a.run_dir, a.out)
    log.info("wrote %s", path)
    return 0
