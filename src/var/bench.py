"""Performance measurements behind ``var bench``.

What it measures on one device: the dense matmul ceiling (GFLOP/s), generation speed split between the
transformer (all scales, sampling included) and the tokenizer's decoder, the achieved GFLOP/s of
generation as a share of that ceiling, a training step (tokens/s, images/s) and peak memory.

FLOPs are the model's nominal multiply-adds (x2) of its matmuls, convolutions and attention, counted
analytically from the configs; element-wise work is left out. Implementation shortcuts (on CPU the
transposed-conv upsampling and the Winograd convolutions of the decoder) do not lower the count, so they
show as higher achieved GFLOP/s: the decoder's share of the ceiling can pass 100%.
"""
from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .cpu.streams import split_batch
from .pipeline import VARPipeline
from .precision import autocast, default_device, dtype_name
from .sampling import generate
from .training.runs import adamw
from .recipes import model_configs
from .transformer import VAR, VARConfig
from .vqvae import VQVAE, VQVAEConfig

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------------------------- models
def build_pipeline(name: str, device: str | torch.device, seed: int = 0) -> VARPipeline:
    """The bundled model for ``fashion-mnist`` when it is installed, otherwise random weights of the shape."""
    if name == "fashion-mnist":
        try:
            return VARPipeline.from_pretrained("fashion-mnist", device=device)
        except FileNotFoundError:
            log.info("no bundled fashion-mnist model: timing random weights of the same geometry")
    vae_cfg, var_cfg = model_configs(name)
    device = torch.device(device)
    on_device = [] if device.type == "cpu" else [device.index or 0]  # the CPU's state is always forked
    with torch.random.fork_rng(devices=on_device, device_type=device.type), device:
        torch.manual_seed(seed)  # random weights of a seed, the caller's random state left as it was
        return VARPipeline(VQVAE(vae_cfg), VAR(var_cfg), info={"source": "random"})


# -------------------------------------------------------------------------------------------- FLOPs
def _conv(k: int, c_in: int, c_out: int, n: int) -> int:
    """A k x k convolution over ``n`` output pixels."""
    return 2 * k * k * c_in * c_out * n


def _resnet_block(c_in: int, c_out: int, n: int) -> int:
    shortcut = _conv(1, c_in, c_out, n) if c_in != c_out else 0
    return _conv(3, c_in, c_out, n) + _conv(3, c_out, c_out, n) + shortcut


def _attn_block(c: int, n: int) -> int:
    return _conv(1, c, 3 * c, n) + _conv(1, c, c, n) + 2 * (2 * n * n * c)


def decoder_flops(cfg: VQVAEConfig, batch: int) -> int:
    """FLOPs of decoding ``batch`` latents to images: post-quant conv and the decoder."""
    (h, w), levels = cfg.scales[-1], len(cfg.ch_mult)
    n = h * w  # pixels at the current resolution: x4 at each 2x upsampling
    c = cfg.ch * cfg.ch_mult[-1]
    total = _conv(3, cfg.z_channels, cfg.z_channels, n) + _conv(3, cfg.z_channels, c, n)
    total += 2 * _resnet_block(c, c, n) + (_attn_block(c, n) if cfg.using_mid_sa else 0)
    for i in reversed(range(levels)):
        c_out = cfg.ch * cfg.ch_mult[i]
        for _ in range(cfg.num_res_blocks + 1):
            total += _resnet_block(c, c_out, n)
            c = c_out
            if cfg.using_sa and i == levels - 1:
                total += _attn_block(c, n)
        if i != 0:
            n *= 4
            total += _conv(3, c, c, n)  # nearest 2x upsampling, then a 3x3 conv
    return batch * (total + _conv(3, c, cfg.in_channels, n))


def transformer_flops(cfg: VARConfig, batch: int, guided: bool = True) -> int:
    """FLOPs of the next-scale loop for ``batch`` images: AdaLN, blocks with KV-cached attention, head,
    word embedding and the tokenizer's per-scale phi conv. Guidance doubles the transformer's batch."""
    n = 2 * batch if guided else batch
    C, D, V, Cv = cfg.embed_dim, round(cfg.embed_dim * cfg.mlp_ratio), cfg.vocab_size, cfg.latent_channels
    latent_pixels = cfg.scales[-1][0] * cfg.scales[-1][1]
    total = 2 * n * C * 6 * C * (1 if cfg.shared_aln else cfg.depth)  # AdaLN modulations, once per call
    seen = 0
    for k, (h, w) in enumerate(cfg.scales):
        l = h * w
        seen += l
        linear = 2 * n * l * (C * 3 * C + C * C + C * D + D * C)
        attention = 2 * (2 * n * l * seen * C)  # scores and weighted values over the cached prefix
        total += cfg.depth * (linear + attention)
        total += 2 * n * C * 2 * C + 2 * n * l * C * V  # head AdaLN and head
        total += 2 * batch * l * Cv * C if k else 0  # word embedding of the scale's input
        total += batch * _conv(3, Cv, Cv, latent_pixels)  # phi conv on the full-size latent
    return total


def generation_flops(vae_cfg: VQVAEConfig, var_cfg: VARConfig, batch: int, guided: bool = True) -> dict[str, int]:
    """Nominal FLOPs of generating ``batch`` images, per part."""
    t, d = transformer_flops(var_cfg, batch, guided), decoder_flops(vae_cfg, batch)
    return {"transformer": t, "decoder": d, "total": t + d}


# ------------------------------------------------------------------------------------------- timing
def machine_info() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if hasattr(os, "getloadavg"):  # other work on the machine skews every timing: record it
        info["load_average"] = list(os.getloadavg())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, device: torch.device):
    """``fn()`` and its wall time in seconds, with the device synchronised on both sides."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def matmul_ceiling(device: str | torch.device, dtype: torch.dtype = torch.float32, size: int = 2048,
                   repeats: int = 5) -> float:
    """Best GFLOP/s of a dense ``size`` x ``size`` matmul: the machine's practical ceiling."""
    device = torch.device(device)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b, device)[1] for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA max allocated, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@dataclass
class GenerationSettings:
    """What a generation benchmark runs: batch, guidance, sampling and the autocast dtype."""

    batch_size: int = 2
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    dtype: torch.dtype = torch.float32
    streams: int | None = None  # batch streams (var.cpu.streams); None: the default for the device
    fast: bool = False          # the int8 transformer of ``fast`` calls (VARPipeline.fast_transformer)


def time_generation(pipe: VARPipeline, s: GenerationSettings, repeats: int) -> dict:
    """Median seconds of generating ``s.batch_size`` images: transformer loop and decoder timed apart."""
    device = pipe.device
    labels = torch.arange(s.batch_size, device=device) % pipe.num_classes
    gen = torch.Generator(device=device).manual_seed(0)
    model = pipe.fast_transformer() if s.fast else pipe.var

    def transformer():
        return generate(model, pipe.vqvae, labels, cfg=s.cfg, top_k=s.top_k, top_p=s.top_p, generator=gen,
                        streams=s.streams)[0]

    runs = []
    _reset_peak(device)
    with autocast(device, s.dtype), torch.inference_mode():
        for i in range(repeats + 1):  # the first run warms up (and compiles, with --compile)
            f_hat, t_transformer = _timed(transformer, device)
            _, t_decoder = _timed(lambda: split_batch(pipe.vqvae.decode_latent, f_hat, s.streams), device)
            if i:
                runs.append({"transformer": t_transformer, "decoder": t_decoder})
            log.debug("generation run %d: transformer %.3f s, decoder %.3f s", i, t_transformer, t_decoder)
    med = {part: statistics.median(r[part] for r in runs) for part in ("transformer", "decoder")}
    med["total"] = med["transformer"] + med["decoder"]
    return {"seconds": med, "images_per_s": s.batch_size / med["total"], "runs": runs,
            "peak_memory_bytes": peak_memory_bytes(device)}


def time_training_step(pipe: VARPipeline, batch_size: int, repeats: int, dtype: torch.dtype = torch.float32) -> dict:
    """Median seconds of one training step of the transformer on random images: tokenize with the frozen
    tokenizer, teacher-forced forward, cross-entropy, backward and an AdamW update. The transformer's weights
    are put back afterwards (a copy is kept on the CPU meanwhile): timing does not change the model."""
    device, var, vqvae = pipe.device, pipe.var, pipe.vqvae
    weights = {k: v.detach().to("cpu", copy=True) for k, v in var.state_dict().items()}
    (H, W), L = vqvae.config.image_hw, var.config.seq_len
    images = torch.rand(batch_size, vqvae.config.in_channels, H, W, device=device) * 2 - 1
    labels = torch.arange(batch_size, device=device) % var.num_classes
    opt = adamw(var.parameters(), lr=1e-4)  # as var train's optimizer: fused where it can be

    def tokenize():
        with torch.no_grad():
            tokens = vqvae.img_to_indices(images)
            return tokens, vqvae.quantize.teacher_forcing_input(tokens)

    def step(tokens, x):
        with autocast(device, dtype):
            logits = var(labels, x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), torch.cat(tokens, dim=1).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    runs = []
    _reset_peak(device)
    var.train()
    try:
        for i in range(repeats + 1):
            (tokens, x), t_tok = _timed(tokenize, device)
            _, t_step = _timed(lambda: step(tokens, x), device)
            if i:
                runs.append({"tokenize": t_tok, "step": t_step})
    finally:
        var.eval()
        opt.zero_grad(set_to_none=True)
        var.load_state_dict(weights)
    med = {part: statistics.median(r[part] for r in runs) for part in ("tokenize", "step")}
    med["total"] = med["tokenize"] + med["step"]
    return {"seconds": med, "tokens_per_s": batch_size * L / med["total"], "images_per_s": batch_size / med["total"],
            "transformer_tokens_per_s": batch_size * L / med["step"], "runs": runs,
            "peak_memory_bytes": peak_memory_bytes(device)}


def compile_pipeline(pipe: VARPipeline) -> None:
    """``torch.compile`` the tokenizer's decoder (fixed shapes: one compilation). The transformer stays
    eager: its per-scale shapes and KV-cache state would recompile it at every scale."""
    pipe.vqvae.decoder.compile()


def run_benchmark(config: str = "d16", device: str | None = None, settings: GenerationSettings | None = None,
                  repeats: int = 3, train_batch_size: int | None = None, compile: bool = False) -> dict:
    """All measurements for a named config (see :data:`var.recipes.CONFIGS`) on ``device`` (default: CUDA if
    present)."""
    device = torch.device(device or default_device())
    pipe = build_pipeline(config, device)
    if compile:
        compile_pipeline(pipe)
    return benchmark_pipeline(pipe, config, settings, repeats, train_batch_size, compile)


def benchmark_pipeline(pipe: VARPipeline, name: str, settings: GenerationSettings | None = None, repeats: int = 3,
                       train_batch_size: int | None = None, compiled: bool = False) -> dict:
    """All measurements for ``pipe``: ceiling, generation, FLOPs and, unless ``train_batch_size`` is 0, a
    training step (default: the generation batch size)."""
    s = settings or GenerationSettings()
    if s.batch_size < 1 or repeats < 1:
        raise ValueError(f"batch size and repeats must be >= 1, got {s.batch_size} and {repeats}")
    device = pipe.device
    vae_cfg, var_cfg = pipe.vqvae.config, pipe.var.config
    ceiling = matmul_ceiling(device, s.dtype)  # in the dtype the matmuls run in
    gen = time_generation(pipe, s, repeats)
    flops = generation_flops(vae_cfg, var_cfg, s.batch_size, guided=s.cfg != 0)
    achieved = {part: flops[part] / gen["seconds"][part] / 1e9 for part in flops}
    report = {
        "config": name, "device": str(device), "machine": machine_info(),
        "model": {"image_size": "x".join(map(str, vae_cfg.image_hw)), "patch_nums": list(var_cfg.patch_nums), "depth": var_cfg.depth,
                  "embed_dim": var_cfg.embed_dim, "vocab_size": var_cfg.vocab_size,
                  "transformer_params": sum(p.numel() for p in pipe.var.parameters()),
                  "tokenizer_params": sum(p.numel() for p in pipe.vqvae.parameters()),
                  "weights": pipe.info.get("source", "pretrained")},
        "settings": {"batch_size": s.batch_size, "cfg": s.cfg, "top_k": s.top_k, "top_p": s.top_p,
                     "dtype": dtype_name(s.dtype), "streams": s.streams, "repeats": repeats, "compile": compiled,
                     "fast": s.fast},
        "matmul_ceiling_gflops": ceiling,
        "generation": {**gen, "flops": flops, "achieved_gflops": achieved,
                       "share_of_ceiling": {part: g / ceiling for part, g in achieved.items()}},
    }
    train_bs = s.batch_size if train_batch_size is None else train_batch_size
    if train_bs:
        report["training"] = time_training_step(pipe, train_bs, repeats, s.dtype)
    return report


def format_table(report: dict) -> str:
    """The report as a plain-text table."""
    g, s, m = report["generation"], report["settings"], report["machine"]
    gb = 1024 ** 3
    rows = [
        ("config", f"{report['config']} ({report['model']['image_size']} px, {report['model']['weights']} weights)"),
        ("device", f"{report['device']}: {m.get('gpu', m['cpu'])}, {m['torch_threads']} threads, "
                   f"torch {m['torch']}" + (f", load average {m['load_average'][0]:.1f}" if "load_average" in m else "")),
        ("settings", f"B={s['batch_size']} cfg={s['cfg']} top_k={s['top_k']} top_p={s['top_p']} {s['dtype']}"
                     f"{' compiled' if s['compile'] else ''}{' fast (int8)' if s['fast'] else ''}, "
                     f"streams {s['streams'] or 'auto'}, "
                     f"median of {s['repeats']}"),
        ("matmul ceiling", f"{report['matmul_ceiling_gflops']:.1f} GFLOP/s"),
        ("generation", f"{g['images_per_s']:.3f} images/s ({g['seconds']['total']:.3f} s per batch)"),
    ]
    for part in ("transformer", "decoder", "total"):
        rows.append((f"  {part}", f"{g['seconds'][part]:.3f} s  {g['flops'][part] / 1e9:.1f} GFLOP  "
                                  f"{g['achieved_gflops'][part]:.1f} GFLOP/s  "
                                  f"{100 * g['share_of_ceiling'][part]:.1f}% of ceiling"))
    rows.append(("  peak memory", f"{g['peak_memory_bytes'] / gb:.2f} GiB"))
    rows.append(("  (FLOPs", "nominal, of direct matmuls/convs: Winograd and folded upsampling do fewer)"))
    if "training" in report:
        t = report["training"]
        rows.append(("training step", f"{t['tokens_per_s']:.0f} tokens/s, {t['images_per_s']:.3f} images/s "
                                      f"(tokenize {t['seconds']['tokenize']:.3f} s + step {t['seconds']['step']:.3f} s)"))
        rows.append(("  peak memory", f"{t['peak_memory_bytes'] / gb:.2f} GiB"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
