"""Side-by-side comparison with the reference implementation (FoundationVision/VAR): end-to-end generation,
or with ``--train`` one training step of the transformer.

The reference is imported at run time from a checkout given by ``--ref`` (it is never part of this
repository). Both get the SAME weights: random ones of a d{depth} shape, built by the reference's
``build_vae_var`` and loaded into ours through ``VARPipeline.from_official``, or (``--train --pipeline``)
one of our saved or bundled pipelines, loaded into the reference's classes. Each mode first checks that the
two compute the same thing (generation: identical greedy tokens at every scale; training: first-step losses
within 1e-5 relative), then alternates timed runs of the two in one process so that machine noise hits both
alike; the report gives medians and ratios.

    PYTHONPATH=src python benchmarks/compare_reference.py --ref /path/to/VAR --ref-deps /path/to/site
    PYTHONPATH=src python benchmarks/compare_reference.py --ref /path/to/VAR --ref-deps /path/to/site --train

``--ref-deps`` names an extra folder appended to ``sys.path`` for the reference's own imports
(``huggingface_hub``), for when they are not installed in this environment.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from var import VAR, VARPipeline, generate
from var.bench import machine_info
from var.cpu import plain
from var.cpu.streams import split_batch
from var.training import Schedule, VARTrainer
from var.training.runs import VAR_BETAS, make_optimizer

log = logging.getLogger("compare_reference")

LOSS_RTOL = 1e-5  # first-step losses of the two training steps must agree to this relative difference

# The reference's parameters trained without weight decay, besides 1-D ones and biases: the `nowd_keys` its
# train.py gives `utils.lr_control.filter_params` (which cannot be called here: it prints with the `force`
# keyword of the print that the reference's distributed setup installs).
REFERENCE_NO_DECAY_KEYS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC",
                           "pos_start", "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")

Runner = Callable[[], dict[str, float]]  # one timed run: seconds per part, "total" included


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ref", required=True, type=Path, help="checkout of github.com/FoundationVision/VAR")
    p.add_argument("--ref-deps", type=Path, help="extra folder for the reference's imports (appended to sys.path)")
    p.add_argument("--train", action="store_true",
                   help="compare one training step of the transformer (fp32 forward, cross-entropy, backward, "
                        "AdamW) instead of generation")
    p.add_argument("--depth", type=int, help="transformer depth of the released shape (d8, d16, ...); "
                                             "default 16, or 8 with --train")
    p.add_argument("--pipeline", help="with --train: a saved pipeline folder or bundled model (e.g. fashion-mnist) "
                                      "whose weights and shape both train, instead of random d{depth} weights")
    p.add_argument("--batch-size", type=int, help="default 2, or 4 with --train")
    p.add_argument("--cfg", type=float, default=1.5, help="generation only")
    p.add_argument("--top-k", type=int, default=900, help="generation only")
    p.add_argument("--top-p", type=float, default=0.96, help="generation only")
    p.add_argument("--fast", action="store_true",
                   help="generation only: also time ours with fast=True (int8 linear layers)")
    p.add_argument("--prune", type=lambda t: tuple(float(f) for f in t.split(",")),
                   help="generation only: also time ours with these --prune fractions (with --fast: and int8)")
    p.add_argument("--cfg-scales", type=int, help="generation only: also time ours guiding only the first N scales "
                                                  "(with --fast: and int8)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded rounds of both before the timed ones")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--streams", type=int, help="generation only: our batch streams (var.cpu.streams; default: one per "
                                               "thread, 1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON report (default: bench_out/compare_reference.json, or "
                                            "bench_out/compare_reference_train.json with --train)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if not (args.ref / "models" / "__init__.py").is_file():
        p.error(f"--ref {args.ref} is not a VAR checkout (no models/__init__.py)")
    if args.pipeline is not None and (not args.train or args.depth is not None):
        p.error("--pipeline goes with --train and without --depth (generation needs the reference's tokenizer, "
                "whose encoder and decoder have a fixed layout)")
    args.depth = args.depth or (8 if args.train else 16)
    args.batch_size = args.batch_size or (4 if args.train else 2)
    args.out = args.out or Path("bench_out/compare_reference_train.json" if args.train
                                else "bench_out/compare_reference.json")
    return args


def import_reference(ref: Path, deps: Path | None) -> ModuleType:
    """The reference's ``models`` package (``build_vae_var``, ``VQVAE``, ``VAR``), imported from the checkout
    ``ref``, which stays on ``sys.path`` for its other packages."""
    sys.path.insert(0, str(ref.resolve()))
    if deps is not None:
        sys.path.append(str(deps.resolve()))
    try:
        import models
    except ImportError as e:
        raise SystemExit(f"cannot import the reference from {ref}: {e} (install its dependencies into a "
                         f"separate folder, e.g. `pip install --target DIR huggingface_hub`, and pass --ref-deps DIR)")
    return models


@torch.no_grad()
def randomize_convs(vae: torch.nn.Module, seed: int) -> None:
    """Give the tokenizer's convs fan-in scaled random weights.

    The reference's builder switches off the default init of convs (it expects to load a checkpoint),
    which would leave uninitialised memory: possibly denormals or NaNs that distort timings.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in vae.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * fan_in ** -0.5)
            if m.bias is not None:
                m.bias.zero_()


def build_pair(models: ModuleType, depth: int, seed: int):
    """The reference d{depth} VQVAE + VAR at 256 px with random weights, and our pipeline on copies of them."""
    torch.manual_seed(seed)
    ref_vae, ref_var = models.build_vae_var(device="cpu", depth=depth, flash_if_available=False,
                                            fused_if_available=False)
    randomize_convs(ref_vae, seed)
    ref_vae.eval()
    ref_var.eval()
    pipe = VARPipeline.from_official(_copy(ref_vae.state_dict()), _copy(ref_var.state_dict()), device="cpu")
    return ref_vae, ref_var, pipe


def reference_from_pipeline(models: ModuleType, pipe: VARPipeline):
    """The reference's VQVAE and VAR classes with the sizes and weights of our ``pipe``.

    Only the tokenizer's quantizer takes our weights (its codebook and phi convs make the transformer's
    teacher-forcing input): the reference's encoder and decoder have a fixed layout (3 channels, 5 levels)
    that ours need not share (the bundled Fashion-MNIST tokenizer has 1 channel and 3 levels), and a training
    step of the transformer does not use them. They are built small (``ch=32``) and left as drawn.
    """
    vae_cfg, var_cfg = pipe.vqvae.config, pipe.var.config
    if not all(isinstance(p, int) for p in var_cfg.patch_nums):
        raise SystemExit(f"the reference takes square scales only; {pipe.info} has {var_cfg.patch_nums}")
    ref_vae = models.VQVAE(vocab_size=vae_cfg.vocab_size, z_channels=vae_cfg.z_channels, ch=32,
                           share_quant_resi=vae_cfg.share_quant_resi, v_patch_nums=tuple(var_cfg.patch_nums),
                           test_mode=True)
    ref_vae.quantize.load_state_dict({k.removeprefix("quantize."): v for k, v in _copy(pipe.vqvae.state_dict()).items()
                                      if k.startswith("quantize.")})
    ref_var = models.VAR(ref_vae, num_classes=var_cfg.num_classes, depth=var_cfg.depth, embed_dim=var_cfg.embed_dim,
                         num_heads=var_cfg.num_heads, mlp_ratio=var_cfg.mlp_ratio, norm_eps=var_cfg.norm_eps,
                         shared_aln=var_cfg.shared_aln, attn_l2_norm=var_cfg.attn_l2_norm,
                         patch_nums=tuple(var_cfg.patch_nums), flash_if_available=False, fused_if_available=False)
    ref_var.load_state_dict(_copy(pipe.var.state_dict()))
    return ref_vae, ref_var


def _copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors of our own: the two models share no memory (nor caches) during the timings."""
    return {k: v.detach().clone() for k, v in state_dict.items()}


class PartTimer:
    """Wraps a method of one object so that the seconds spent in it add up in ``seconds``."""

    def __init__(self, obj: object, name: str):
        inner = getattr(obj, name)
        self.seconds = 0.0

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(obj, name, timed)


# ------------------------------------------------------------------------------------------ generation
def run_reference(ref_var, timer: PartTimer, labels: torch.Tensor, args: argparse.Namespace,
                  top_k: int, top_p: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One reference generation, images in [0, 1], with its total and decoder seconds."""
    timer.seconds = 0.0
    t0 = time.perf_counter()
    images = ref_var.autoregressive_infer_cfg(B=labels.numel(), label_B=labels, g_seed=args.seed, cfg=args.cfg,
                                              top_k=top_k, top_p=top_p, more_smooth=False)
    total = time.perf_counter() - t0
    return images, {"total": total, "transformer": total - timer.seconds, "decoder": timer.seconds}


def run_ours(pipe: VARPipeline, labels: torch.Tensor, args: argparse.Namespace, top_k: int, top_p: float,
             fast: bool = False, **speed_ups):
    """One generation as ``VARPipeline.__call__`` runs it, with ``--streams`` (and, for the ``ours_fast``
    runner, ``fast``: the int8 transformer, and ``speed_ups``: ``prune``, ``cfg_scales``): images in [0, 1],
    tokens, and the total and decoder seconds."""
    generator = torch.Generator().manual_seed(args.seed)
    transformer = pipe.fast_transformer() if fast else pipe.var
    t0 = time.perf_counter()
    f_hat, tokens = generate(transformer, pipe.vqvae, labels, cfg=args.cfg, top_k=top_k, top_p=top_p,
                             generator=generator, streams=args.streams, **speed_ups)
    t1 = time.perf_counter()
    with torch.no_grad():
        images = (split_batch(pipe.vqvae.decode_latent, f_hat, args.streams) + 1) / 2
    t2 = time.perf_counter()
    return images, tokens, {"total": t2 - t0, "transformer": t1 - t0, "decoder": t2 - t1}


def greedy_check(ref_vae, ref_var, ref_timer, pipe, labels, args) -> dict:
    """Greedy (top_k=1) generation of both: identical tokens at every scale, and the image difference."""
    captured: list[torch.Tensor] = []
    hook = ref_vae.quantize.embedding.register_forward_hook(lambda m, inp, out: captured.append(inp[0].clone()))
    try:
        ref_images, _ = run_reference(ref_var, ref_timer, labels, args, top_k=1, top_p=0.0)
    finally:
        hook.remove()
    images, tokens, _ = run_ours(pipe, labels, args, top_k=1, top_p=0.0)
    same = [bool(torch.equal(a, b)) for a, b in zip(captured, tokens, strict=True)]
    return {"tokens_identical": all(same), "identical_per_scale": same,
            "max_abs_image_diff": float((ref_images - images).abs().max())}


def compare_generation(models: ModuleType, args: argparse.Namespace) -> tuple[dict, str, bool]:
    """Greedy check, then alternating timed generations: the report, its summary line and whether the check passed."""
    ref_vae, ref_var, pipe = build_pair(models, args.depth, args.seed)
    ref_timer = PartTimer(ref_vae, "fhat_to_img")
    labels = torch.arange(args.batch_size) % 1000
    greedy = greedy_check(ref_vae, ref_var, ref_timer, pipe, labels, args)
    log.info("greedy tokens identical: %s (max image diff %.2e)", greedy["tokens_identical"],
             greedy["max_abs_image_diff"])
    runners = {"reference": lambda: run_reference(ref_var, ref_timer, labels, args, args.top_k, args.top_p)[1],
               "ours": lambda: run_ours(pipe, labels, args, args.top_k, args.top_p)[2]}
    speed_ups = speed_up_options(args)
    if speed_ups:
        runners["ours_fast"] = lambda: run_ours(pipe, labels, args, args.top_k, args.top_p, **speed_ups)[2]
    report = {
        "setting": {"model": f"d{args.depth} (random weights)", "image_size": 256, "batch_size": args.batch_size,
                    "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "repeats": args.repeats,
                    "warmup": args.warmup, "threads": args.threads, "our_streams": args.streams or "auto",
                    "ours_fast": speed_ups or None},
        "greedy": greedy,
        **timed_report(runners, args),
    }
    return report, f"greedy tokens identical: {greedy['tokens_identical']}", greedy["tokens_identical"]


# -------------------------------------------------------------------------------------------- training
def step_seconds(total: float, forward: float, optimizer: float) -> dict[str, float]:
    """A training step's seconds by part: the transformer's forward, the AdamW update, and the rest of the
    step as "backward" (the teacher-forcing input, cross-entropy, backward, gradient clipping, metrics)."""
    return {"total": total, "forward": forward, "backward": total - forward - optimizer, "optimizer": optimizer}


def disable_training_noise(ref_var: torch.nn.Module, var: VAR) -> None:
    """Label dropout and stochastic depth off in both transformers: each implementation would draw its own
    random masks, and their losses could not be compared."""
    ref_var.cond_drop_rate = 0.0
    for block in ref_var.blocks:
        block.drop_path = torch.nn.Identity()
    var.config.cond_drop_rate = 0.0
    for block in var.blocks:
        block.drop_path = 0.0


class OurTrainStep:
    """``VARTrainer.train_step`` (what ``var train`` runs on cached tokens) on fixed tokens and labels, with
    ``var train``'s optimizer (``make_optimizer``, ``VAR_BETAS``) at the schedule's peak learning rate."""

    def __init__(self, pipe: VARPipeline, tokens: list[torch.Tensor], labels: torch.Tensor, schedule: Schedule):
        plain(pipe.var)  # training does not use the packed inference copies: free them
        optimizer = make_optimizer(pipe.var, schedule, VAR_BETAS)
        self.trainer = VARTrainer(pipe.var, pipe.vqvae, optimizer, pipe.device, grad_clip=schedule.grad_clip)
        self.batch = (tokens, labels)
        self.forward, self.update = PartTimer(pipe.var, "forward"), PartTimer(optimizer, "step")
        self.losses: list[float] = []

    def decayed(self) -> set[str]:
        """Names of the parameters the optimizer decays."""
        names = {id(p): name for name, p in self.trainer.var.named_parameters()}
        return {names[id(p)] for g in self.trainer.optimizers["var"].param_groups if g["weight_decay"] > 0
                for p in g["params"]}

    def __call__(self) -> dict[str, float]:
        self.forward.seconds = self.update.seconds = 0.0
        t0 = time.perf_counter()
        self.losses.append(self.trainer.train_step(self.batch)["loss"])
        return step_seconds(time.perf_counter() - t0, self.forward.seconds, self.update.seconds)


def reference_decays(name: str, param: torch.nn.Parameter) -> bool:
    """Whether the reference's rule (``filter_params``) decays this parameter: not 1-D, not a bias, and no
    key of ``REFERENCE_NO_DECAY_KEYS`` in its name."""
    return not (param.ndim == 1 or name.endswith("bias") or any(k in name for k in REFERENCE_NO_DECAY_KEYS))


class ReferenceTrainStep:
    """The reference's training step (``VARTrainer.train_step`` of its trainer.py, fp32, no progressive
    training) on fixed tokens and labels: its teacher-forcing input, forward, cross-entropy per token weighted
    1/L, summed over tokens and averaged over the batch, its ``AmpOptimizer``'s backward, gradient clipping and
    AdamW step (fused, its default), and the predictions it takes every step. Left out: encoding images into
    tokens (the tokens are given) and the logging of some iterations. The AdamW has our hyper-parameters and decays the
    parameters the reference's rule picks (``REFERENCE_NO_DECAY_KEYS``)."""

    def __init__(self, ref_vae: torch.nn.Module, ref_var: torch.nn.Module, tokens: list[torch.Tensor],
                 labels: torch.Tensor, schedule: Schedule):
        from utils.amp_sc import AmpOptimizer  # the reference's, on sys.path since import_reference

        self.var, self.quantize = ref_var, ref_vae.quantize
        self.tokens, self.labels = tokens, labels
        names, params = zip(*ref_var.named_parameters())
        self.decayed_names = {n for n, p in zip(names, params) if reference_decays(n, p)}
        groups = [{"params": [p for n, p in zip(names, params) if (n in self.decayed_names) == decay],
                   "weight_decay": schedule.weight_decay if decay else 0.0} for decay in (True, False)]
        # fused: its train.py's default (afuse=True), which PyTorch also runs on CPUs
        optimizer = torch.optim.AdamW(groups, lr=schedule.lr, betas=VAR_BETAS, fused=True)
        self.optimizer = AmpOptimizer(mixed_precision=0, optimizer=optimizer, names=list(names), paras=list(params),
                                      grad_clip=schedule.grad_clip)
        self.cross_entropy = torch.nn.CrossEntropyLoss(label_smoothing=0.0, reduction="none")
        self.loss_weight_1L = torch.ones(1, ref_var.L, device=labels.device) / ref_var.L
        self.forward, self.update = PartTimer(ref_var, "forward"), PartTimer(optimizer, "step")
        self.losses: list[float] = []

    def __call__(self) -> dict[str, float]:
        self.forward.seconds = self.update.seconds = 0.0
        t0 = time.perf_counter()
        self.var.train()
        target_BL = torch.cat(self.tokens, dim=1)
        logits_BLV = self.var(self.labels, self.quantize.idxBl_to_var_input(self.tokens))
        B, V = logits_BLV.shape[0], logits_BLV.shape[-1]
        loss = self.cross_entropy(logits_BLV.view(-1, V), target_BL.view(-1)).view(B, -1)
        loss = loss.mul(self.loss_weight_1L).sum(dim=-1).mean()
        self.optimizer.backward_clip_step(stepping=True, loss=loss)
        logits_BLV.data.argmax(dim=-1)  # the predictions the reference's step takes every iteration for its metrics
        self.losses.append(loss.item())
        return step_seconds(time.perf_counter() - t0, self.forward.seconds, self.update.seconds)


def compare_training(models: ModuleType, args: argparse.Namespace) -> tuple[dict, str, bool]:
    """One training step of each from the same weights and batch, their losses compared, then alternating
    timed steps (which go on training both on that batch): the report, its summary line and whether the
    first-step losses agree."""
    if args.pipeline is None:
        ref_vae, ref_var, pipe = build_pair(models, args.depth, args.seed)
        model = f"d{args.depth} (random weights)"
    else:
        pipe = VARPipeline.from_pretrained(args.pipeline, device="cpu")
        ref_vae, ref_var = reference_from_pipeline(models, pipe)
        model = args.pipeline
    disable_training_noise(ref_var, pipe.var)
    var_cfg = pipe.var.config
    gen = torch.Generator().manual_seed(args.seed)
    tokens = [torch.randint(var_cfg.vocab_size, (args.batch_size, h * w), generator=gen) for h, w in var_cfg.scales]
    labels = torch.arange(args.batch_size) % var_cfg.num_classes
    schedule = Schedule()
    runners = {"reference": ReferenceTrainStep(ref_vae, ref_var, tokens, labels, schedule),
               "ours": OurTrainStep(pipe, tokens, labels, schedule)}
    for who, step in runners.items():
        log.info("first step %-9s %s", who, _format_seconds(step()))
    ours, ref = runners["ours"].losses[0], runners["reference"].losses[0]
    rel_diff = abs(ours - ref) / abs(ref)
    agree = rel_diff <= LOSS_RTOL
    log.info("first-step loss: ours %.8f, reference %.8f, relative difference %.2e (tolerance %g)",
             ours, ref, rel_diff, LOSS_RTOL)
    same_decay = runners["ours"].decayed() == runners["reference"].decayed_names
    timed = timed_report(runners, args)
    later = max((abs(o - r) / abs(r) for o, r in zip(runners["ours"].losses[1:], runners["reference"].losses[1:])),
                default=0.0)
    report = {
        "setting": {"model": model, "tokens_per_image": var_cfg.seq_len, "batch_size": args.batch_size,
                    "dtype": "fp32", "lr": schedule.lr, "betas": VAR_BETAS, "weight_decay": schedule.weight_decay,
                    "grad_clip": schedule.grad_clip, "label_smoothing": 0.0, "cond_drop_rate": 0.0,
                    "drop_path_rate": 0.0, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads},
        "first_step_loss": {"ours": ours, "reference": ref, "relative_difference": rel_diff,
                            "tolerance": LOSS_RTOL, "agree": agree},
        "max_relative_loss_difference_later_steps": later,
        "weight_decay_groups_identical": same_decay,
        **timed,
        "tokens_per_second": {who: args.batch_size * var_cfg.seq_len / m["total"]
                              for who, m in timed["median_seconds"].items()},
        "losses": {who: step.losses for who, step in runners.items()},
    }
    line = (f"first-step loss relative difference {rel_diff:.2e} (tolerance {LOSS_RTOL:g}): "
            f"{'agree' if agree else 'DIFFER'}; later steps at most {later:.2e}; "
            f"weight-decay groups identical: {same_decay}")
    return report, line, agree


# ------------------------------------------------------------------------------------- timing, report
def alternate(runners: dict[str, Runner], repeats: int, warmup: int) -> dict[str, list[dict[str, float]]]:
    """``warmup`` unrecorded rounds, then ``repeats`` timed ones, each running every runner once, the order
    reversed every other round."""
    times: dict[str, list[dict[str, float]]] = {who: [] for who in runners}
    order = list(runners)
    for i in range(warmup + repeats):
        for who in order if i % 2 == 0 else order[::-1]:
            t = runners[who]()
            if i >= warmup:
                times[who].append(t)
            log.info("%s%-9s %s", "" if i >= warmup else "warm-up ", who, _format_seconds(t))
    return times


def _format_seconds(t: dict[str, float]) -> str:
    return ", ".join(f"{part} {s:.3f} s" for part, s in t.items())


def summarize(times: dict[str, list[dict[str, float]]]) -> dict:
    """Medians per implementation and part, their ratios, and the median of the per-round ratios (adjacent
    runs share the machine's load of the moment, so these cancel slow drifts); for ``ours`` and, where it was
    timed, ``ours_fast``."""
    parts = list(times["ours"][0])
    med = {who: {part: statistics.median(r[part] for r in runs) for part in parts} for who, runs in times.items()}
    summary = {"median_seconds": med}
    for who in times:
        if who == "reference":
            continue
        summary[f"speedup_{who}_vs_reference"] = {part: med["reference"][part] / med[who][part] for part in parts}
        summary[_paired_key(who)] = {
            part: statistics.median(r[part] / o[part] for r, o in zip(times["reference"], times[who]))
            for part in parts}
    return summary


def _paired_key(who: str) -> str:
    """The summary's key of a runner's median paired ratio (``ours`` keeps the name it had alone)."""
    return "speedup_median_of_paired_rounds" + ("" if who == "ours" else "_" + who.removeprefix("ours_"))


def speed_up_options(args: argparse.Namespace) -> dict:
    """The options of the ``ours_fast`` runner: --fast, --prune and --cfg-scales, those given."""
    given = {"fast": args.fast or None, "prune": args.prune, "cfg_scales": args.cfg_scales}
    return {name: value for name, value in given.items() if value is not None}


def timed_report(runners: dict[str, Runner], args: argparse.Namespace) -> dict:
    """Alternating timings of the runners (see :func:`alternate`), their summary, images per second, and the
    machine and reference they ran on."""
    machine = machine_info()  # load average before the timings
    times = alternate(runners, args.repeats, args.warmup)
    summary = summarize(times)
    return {
        "machine": machine,
        "load_average_after": list(os.getloadavg()),
        "reference_commit": _git_head(args.ref),
        "seconds": times,
        **summary,
        "images_per_second": {who: args.batch_size / m["total"] for who, m in summary["median_seconds"].items()},
    }


def print_table(summary: dict) -> None:
    med = summary["median_seconds"]
    for who in ("ours", "ours_fast"):
        if who not in med:
            continue
        ratio, paired = summary[f"speedup_{who}_vs_reference"], summary[_paired_key(who)]
        print(f"{'part':<12}{'reference s':>13}{who + ' s':>14}{'speed-up':>10}{'paired':>9}")
        for part in ratio:
            print(f"{part:<12}{med['reference'][part]:>13.3f}{med[who][part]:>14.3f}{ratio[part]:>9.2f}x"
                  f"{paired[part]:>8.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    models = import_reference(args.ref, args.ref_deps)
    report, line, ok = (compare_training if args.train else compare_generation)(models, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"{line}; wrote {args.out}")
    return 0 if ok else 1


def _git_head(ref: Path) -> str | None:
    """The reference checkout's commit, when it is a git work tree."""
    done = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
