"""Whole training runs as the ``var train-vae`` and ``var train`` commands perform them.

A run folder holds ``run.json`` (the model configuration and data set, fixed at the first start),
``checkpoint.pt`` (written atomically; re-running the same command resumes from it),
``metrics.jsonl``, PNG snapshots under ``samples/`` and the exported weights:
``vqvae.json`` + ``vqvae.safetensors`` for a tokenizer run, a ``VARPipeline`` folder for a VAR run.
While a run trains, ``run.lock`` names its process: a second run started in the same folder is refused.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..checkpoints import export_vqvae, load_vqvae
from ..cpu import accelerate
from ..data import CROP_RATIO, ImageArrayDataset, build_dataset, crop_source_side, enlarge_for_crop, split_holdout
from ..files import FolderLock, WriteFailed, check_free_space, leftover_temporaries, write_atomically
from ..images import grid
from ..transformer import VAR, VARConfig
from ..vqvae import VQVAE, VQVAEConfig
from .budget import schedule_for_minutes
from .common import (CHECKPOINT, SHARDED_CHECKPOINT, CheckpointWriteFailed, DistInfo, Prefetcher, Schedule,
                     _on_main_process, append_metrics, batch_indices, fit, load_checkpoint_file, local_batch_size,
                     setup_distributed)
from .fsdp import DTYPES, MMAP_THRESHOLD, free_gathers_at_once, process_group_of_one, shard_transformer
from .trainers import NO_COMPILE_WITH_FSDP, PatchDiscriminator, VARTrainer, VQVAETrainer

log = logging.getLogger(__name__)
RUN_JSON, RUN_LOCK = "run.json", "run.lock"
# The entries of run.json that each kind of run reads back (the others may be absent from older runs).
RUN_KEYS = {"vqvae": ("data", "vqvae"), "var": ("data", "vae", "var")}


# ------------------------------------------------------------------------------- artifacts
def _fixed_run_config(out: Path, config: dict, info: DistInfo, must_match: tuple[str, ...] = (),
                      checked_by_caller: tuple[str, ...] = ()) -> dict:
    """The run's configuration: written at the first start, read back (and kept) when resuming. A resume whose
    command differs in a ``must_match`` entry (what the run trains on) is refused with ValueError; other
    differences (model options) are named in a warning and the saved values kept, except in the entries the
    caller compares by content (a tokenizer given by another path). ValueError names a run.json that is not
    JSON, or not of a run of ``config["kind"]``."""
    path = out / RUN_JSON
    config = json.loads(json.dumps(config))  # as run.json holds it (tuples are lists), so that equal is equal

    def write_if_new() -> None:  # atomically: the other processes, not waiting, may read it while it is written
        if path.is_file():
            return
        try:
            write_atomically(path, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
        except WriteFailed as e:
            kept = f"{out / CHECKPOINT} is as it was" if (out / CHECKPOINT).is_file() else "no checkpoint exists yet"
            raise CheckpointWriteFailed(f"{e} (the run's configuration); {kept}") from e

    _on_main_process(write_if_new, info)  # every process takes part: a failure stops them all
    if not path.is_file():  # a process that does not see the main one's file yet
        return config
    saved = _read_run_config(path, config["kind"])
    differ = [k for k in config if saved.get(k) != config[k] and k not in checked_by_caller]
    for k in differ:
        if k in must_match:
            raise ValueError(f"{path}: this run trains with {k} {saved.get(k)!r}, the command gives {config[k]!r}; "
                             f"resume with the run's {k} (edit run.json if the same data only moved), or "
                             "start a new --out")
    if differ and info.is_main:
        log.warning("%s exists: resuming with its configuration (the command's %s ignored)", path,
                    ", ".join(differ))
    return saved


def _read_run_config(path: Path, kind: str) -> dict:
    """run.json of a run of ``kind``; ValueError naming the file when it is not JSON, not a JSON object, of
    another kind of run, or lacks an entry the run reads."""
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): repair it, or start a new --out") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} holds a JSON {type(saved).__name__}, expected an object (the run's configuration): "
                         "repair it, or start a new --out")
    command = {"vqvae": "var train-vae", "var": "var train"}
    if saved.get("kind") != kind:
        raise ValueError(f"{path} is not the configuration of a {command[kind]} run (its kind is "
                         f"{saved.get('kind')!r}, expected {kind!r}): start a new --out")
    missing = [k for k in RUN_KEYS[kind] if k not in saved]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: repair it, or start a new --out")
    return saved


@contextmanager
def _run_lock(out: Path, info: DistInfo):
    """Hold ``out``'s lock (``run.lock``, taken by the main process: the others share the folder) while the
    block runs. FolderInUse (a ValueError) names a live process that holds it; a lock left by a process that
    died is taken over, with the temporary files that process left (it was killed while writing them)."""
    lock = FolderLock(out / RUN_LOCK)

    def take() -> None:
        out.mkdir(parents=True, exist_ok=True)
        previous = lock.acquire()
        if previous is not None:
            left = [p for folder in (out, out / "samples") if folder.is_dir() for p in leftover_temporaries(folder)]
            for p in left:
                p.unlink(missing_ok=True)
            log.warning("%s was left by process %s on %s, which is gone: taking the run over%s", lock.path,
                        previous.get("pid", "?"), previous.get("host", "?"),
                        f" (removed its {len(left)} unfinished temporary file(s))" if left else "")

    _on_main_process(take, info)
    try:
        yield
    finally:
        lock.release()


def _locked_run(train: Callable[..., dict]) -> Callable[..., dict]:
    """``train`` (a function with ``out`` and ``device`` parameters) holding the run folder's lock throughout;
    with ``fsdp=True`` in a process alone, in a one-process group (:func:`~var.training.fsdp.process_group_of_one`)."""
    signature = inspect.signature(train)

    @functools.wraps(train)
    def run(*args, **kwargs) -> dict:
        arguments = signature.bind(*args, **kwargs).arguments
        info = setup_distributed(arguments.get("device"))  # train's own call finds the process group made
        with _run_lock(Path(arguments["out"]), info), process_group_of_one(info, arguments.get("fsdp", False)):
            return train(*args, **kwargs)
    return run


def _save_png(image, path: Path) -> None:
    """A PIL image written atomically as PNG into ``path`` (its folder made); WriteFailed when it cannot be."""
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def _batch_getter(ds_batch, n: int, schedule: Schedule, info: DistInfo, flip: bool, crop_margin: int = 0):
    """get_batch(step) for :func:`fit`: deterministic indices, and flips (and crop offsets, when
    ``crop_margin`` > 0) drawn from (seed, step). ``ds_batch(idx, flips)`` or, with crops,
    ``ds_batch(idx, flips, offsets)`` with offsets (B, 2) in [0, crop_margin]."""
    local_batch_size(schedule.batch_size, info.world)  # every process must get an equal share
    def get(step: int):
        idx = batch_indices(step, n, schedule.batch_size, schedule.seed, info.rank, info.world)
        g = torch.Generator().manual_seed(schedule.seed * 1_000_003 + step)
        flips = (torch.rand(schedule.batch_size, generator=g) < 0.5)[info.rank::info.world] if flip else None
        if not crop_margin:
            return ds_batch(idx, flips)
        offsets = torch.randint(0, crop_margin + 1, (schedule.batch_size, 2), generator=g)[info.rank::info.world]
        return ds_batch(idx, flips, offsets)
    return get


def crop_batch(x_BCHW: torch.Tensor, offsets_B2: torch.Tensor, size: int) -> torch.Tensor:
    """A size x size window of each image, at its own (top, left) offset."""
    return torch.stack([x[:, i:i + size, j:j + size] for x, (i, j) in zip(x_BCHW, offsets_B2.tolist())])


def random_crops(ds: ImageArrayDataset, size: int, data: str = "", warn: bool = True
                 ) -> Callable[[np.ndarray, torch.Tensor | None, torch.Tensor], torch.Tensor]:
    """``crops(idx, flips, offsets)``: [0, 1] images (B, C, size, size), the windows at ``offsets`` (B, 2) of
    items ``idx`` of ``ds``, mirrored where ``flips`` (B,) says. ``ds`` holds the crops' sources at
    :func:`~var.data.crop_source_side` or, where the data has nothing larger, at ``size``: each batch is then
    enlarged to it (:func:`~var.data.enlarge_for_crop`, batch by batch: memory stays flat), and when ``warn``, a
    warning naming ``data``, the images' size and the crops' says that these crops are upsampled."""
    enlarged = crop_source_side(size)
    small = ds.images.shape[1] < enlarged
    if small and warn:
        log.warning("--crop: %s holds %dx%d images, smaller than the %dx%d that random %dx%d crops are cut from "
                    "(%gx): each is enlarged to %dx%d (Lanczos, as the reference enlarges small images) every batch, "
                    "so the crops are upsampled, softer than the images%s", data or ds.name, *ds.images.shape[1:3],
                    enlarged, enlarged, size, size, CROP_RATIO, enlarged, enlarged,
                    "" if ds.fingerprint is None else
                    "; var prepare-data --crop decodes the source files at that size instead")

    def crops(idx: np.ndarray, flips: torch.Tensor | None, offsets: torch.Tensor) -> torch.Tensor:
        big = ds.images[ds.image_rows(np.asarray(idx))]
        big = enlarge_for_crop(big, enlarged) if small else big
        x = crop_batch(torch.from_numpy(np.ascontiguousarray(big)).permute(0, 3, 1, 2).float().div_(255), offsets,
                       size)
        return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x) if flips is not None else x
    return crops


# Adam moments: the reference's for the transformer and the tokenizer; VQGAN's for the discriminator. VQGAN
# also trains its autoencoder with (0.5, 0.9): without the GAN loss that reconstructed worse here
# (docs/training-defaults.md); `var train-vae --betas 0.5,0.9` selects it.
VAR_BETAS, VQVAE_BETAS, DISC_BETAS = (0.9, 0.95), (0.9, 0.95), (0.5, 0.9)


FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # PyTorch's fused AdamW kernels (CPU since 2.4)


def make_optimizer(model: torch.nn.Module, schedule: Schedule, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over the trainable parameters in two groups: weight decay on the weight matrices and kernels,
    none on biases, norms and the parameters whose names contain an entry of the model's ``NO_WEIGHT_DECAY``."""
    skip = getattr(model, "NO_WEIGHT_DECAY", ())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or any(k in name for k in skip) else decay).append(p)
    return adamw([{"params": decay, "weight_decay": schedule.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}], lr=schedule.lr, betas=betas)


def adamw(params, **options) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) where PyTorch has fused kernels for every parameter:
    floating point, on CPU or CUDA; else the default implementation. Same update to float rounding."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fused, **options)


def _wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module | None:
    if info.world == 1:
        return None
    for param in model.parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(_match_param_strides)
    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def _match_param_strides(param: torch.Tensor) -> None:
    """Give a gradient its parameter's strides where they differ only in size-1 dimensions (the same memory).

    A 1x1 convolution on channels-last activations returns its weight's gradient with channels-last strides;
    DDP compares them with its bucket's and warns "Grad strides do not match bucket view strides", a warning
    PyTorch's maintainers call spurious for this case (pytorch/pytorch#47163). The view costs nothing; any
    other difference of layout is left for DDP to copy (and to warn about)."""
    grad = param.grad
    if grad is None or grad.stride() == param.stride():
        return
    if all(a == b for n, a, b in zip(param.shape, grad.stride(), param.stride()) if n != 1):
        param.grad = grad.as_strided(param.shape, param.stride())


# ------------------------------------------------------------------------------- tokenizer
def _training_and_heldout(data: str, cfg: VQVAEConfig):
    """The training images for a tokenizer of ``cfg`` and 1,000 held out: the data's test split, or else
    images set aside from the training ones."""
    ds = build_dataset(data, cfg.image_hw, cfg.in_channels, "train")
    try:
        heldout = build_dataset(data, cfg.image_hw, cfg.in_channels, "test")
    except (ValueError, FileNotFoundError):
        ds, heldout = split_holdout(ds)
    _check_geometry(ds, cfg.image_hw, cfg.in_channels)
    return ds, heldout


@_locked_run
def train_vqvae(data: str, out: Path, vqvae_cfg: VQVAEConfig | None, schedule: Schedule, *, l1: float = 1.0,
                l2: float = 1.0, adv_weight: float = 0.0, disc_start: int = 0, reinit_every: int = 200,
                flip: bool = False, amp: bool = False, device: str | None = None,
                betas: tuple[float, float] = VQVAE_BETAS, ema: float | None = None,
                finetune_decoder: str | os.PathLike | None = None, minutes: float | None = None,
                compile: bool = False) -> dict:
    """Train a tokenizer into ``out``; with ``finetune_decoder`` (a tokenizer's folder, see :func:`load_vqvae`)
    start from that tokenizer and train its decoder alone, its token side frozen (``vqvae_cfg`` is then
    ignored: the model is the source's), so that its tokens and a transformer trained on them stay valid.
    ``minutes``: train for about that long instead of ``schedule.steps`` (:func:`schedule_for_minutes`);
    ``compile``: the training steps run compiled (:meth:`VQVAETrainer.compile`)."""
    source = load_vqvae(finetune_decoder)[0] if finetune_decoder is not None else None
    vqvae_cfg = source.config if source is not None else vqvae_cfg
    if vqvae_cfg is None:
        raise ValueError("train_vqvae needs a VQVAEConfig, or a tokenizer to fine-tune (finetune_decoder)")
    info = setup_distributed(device)
    torch.manual_seed(schedule.seed)
    ds, heldout = _training_and_heldout(data, vqvae_cfg)
    run = {"kind": "vqvae", "data": data, "vqvae": vqvae_cfg.to_dict(), "class_names": ds.class_names}
    if source is not None:
        run["finetune_decoder"] = str(finetune_decoder)
    cfg = _fixed_run_config(out, run, info, must_match=("data",))
    if VQVAEConfig(**cfg["vqvae"]) != vqvae_cfg:  # a resumed run keeps its model, so its image size and channels
        vqvae_cfg = VQVAEConfig(**cfg["vqvae"])
        ds, heldout = _training_and_heldout(data, vqvae_cfg)
    vqvae = VQVAE(vqvae_cfg)
    if cfg.get("finetune_decoder"):  # a resumed run then loads its checkpoint over these weights
        if reinit_every:
            raise ValueError(f"reinit_every={reinit_every}: restarting dead codes would change the tokens of a "
                             "decoder fine-tuning run; it needs reinit_every=0")
        if source is None or cfg["finetune_decoder"] != str(finetune_decoder):  # a resume: the run's own source
            source = load_vqvae(cfg["finetune_decoder"])[0]
        vqvae.load_state_dict(source.state_dict())
        for name in VQVAE.TOKEN_SIDE:
            getattr(vqvae, name).requires_grad_(False)
    for phi in vqvae.quantize.quant_resi.unused():  # no gradient ever: under torchrun DDP would wait for one
        phi.requires_grad_(False)
    vqvae.to(info.device)
    if info.device.type == "cpu":  # the decoder's CPU layers: trained as the plain ones, evaluated faster
        accelerate(vqvae.decoder)
    disc = disc_opt = None
    if adv_weight > 0:
        disc = PatchDiscriminator(vqvae_cfg.in_channels).to(info.device)
        disc_opt = adamw(disc.parameters(), lr=schedule.lr, betas=DISC_BETAS, weight_decay=0.0)
        if cfg.get("finetune_decoder"):
            _continue_discriminator(disc, Path(cfg["finetune_decoder"]), info)
    trainer = VQVAETrainer(vqvae, make_optimizer(vqvae, schedule, betas), info.device, l1=l1, l2=l2,
                           disc=disc, disc_optimizer=disc_opt, adv_weight=adv_weight, disc_start=disc_start,
                           reinit_every=reinit_every, grad_clip=schedule.grad_clip, amp=amp, ema_decay=ema,
                           ddp_model=_wrap(vqvae, info), ddp_disc=_wrap(disc, info) if disc is not None else None,
                           compile=compile)
    held_x, _ = heldout.batch(np.arange(min(1000, len(heldout))))
    if info.is_main:
        log.info("tokenizer: %.2fM parameters (%.2fM trained), %d training images, held-out %d, %d process(es)",
                 sum(p.numel() for p in vqvae.parameters()) / 1e6,
                 sum(p.numel() for p in vqvae.parameters() if p.requires_grad) / 1e6, len(ds), len(held_x), info.world)

    def snapshot(step: int) -> None:
        if not info.is_main:
            return
        ev = trainer.evaluate(held_x)
        model = trainer.eval_model()
        with torch.no_grad():
            x = held_x[:8].to(info.device)
            model.eval()
            rec = (model.indices_to_img(model.img_to_indices(x * 2 - 1)) + 1) / 2
            vqvae.train()
        _save_png(grid(torch.cat([x, rec]).cpu(), nrow=8, scale=max(1, 64 // x.shape[-1]),
                       row_labels=["input", "recon"]), out / "samples" / f"recon_{step:07d}.png")
        append_metrics(out, {"step": step, **ev})
        log.info("step %d: held-out PSNR %.2f dB", step, ev["heldout_psnr"])
        export_vqvae(model, out, ds.class_names, data)

    get = _batch_getter(ds.batch, len(ds), schedule, info, flip)
    if minutes is not None:
        schedule = schedule_for_minutes(out, schedule, minutes, trainer, lambda s: get(s)[0], info)
    with Prefetcher(lambda s: get(s)[0], end=schedule.steps) as get_batch:
        last = fit(trainer, schedule, out, info, get_batch, on_snapshot=snapshot)
    result = dict(last)
    if info.is_main:
        result.update(trainer.evaluate(held_x))
    _finish(info)
    return result


def _continue_discriminator(disc: PatchDiscriminator, source: Path, info: DistInfo) -> None:
    """Start a decoder fine-tuning run's discriminator from the source run's, when the source is a train-vae
    run folder whose checkpoint holds one: a fresh discriminator first has to learn what the decoder gets
    wrong, and meanwhile its loss pushes the decoder about at random."""
    ckpt = source / "checkpoint.pt"
    state = load_checkpoint_file(ckpt)["models"].get("disc") if ckpt.is_file() else None
    if state is None:
        if info.is_main:
            log.info("%s holds no discriminator: the fine-tuning run trains a fresh one", source)
        return
    disc.load_state_dict(state)
    if info.is_main:
        log.info("discriminator continued from %s", ckpt)


# ---------------------------------------------------------------------------- transformer
def token_cache_key(vqvae: VQVAE, ds: ImageArrayDataset, flip: bool) -> str:
    """Hash of the tokenizer's configuration and weights and the data's pixels (a prepared data set's digest
    of them: no full read), rows and labels: a cache entry is reused only for exactly the same tokenizer and
    images. The configuration counts: the same weights with another code lookup make other tokens."""
    h = hashlib.sha1()
    h.update(json.dumps(vqvae.config.to_dict(), sort_keys=True).encode())
    for k, v in sorted(vqvae.state_dict().items()):
        if k != "quantize.ema_vocab_hit_SV":
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(ds.fingerprint.encode() if ds.fingerprint else np.ascontiguousarray(ds.images))  # hashed in place
    if ds.rows is not None:
        h.update(np.asarray(ds.rows, np.int64).tobytes())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    h.update(b"flip" if flip else b"")
    return h.hexdigest()[:20]


@torch.no_grad()
def tokenize_dataset(vqvae: VQVAE, ds: ImageArrayDataset, cache_dir: Path, info: DistInfo, flip: bool = False,
                     batch_size: int = 256) -> np.ndarray:
    """Token ids (N, L) of every image (and (2, N, L) with mirrored copies when ``flip``), cached on disk and
    returned memory-mapped (read-only); the log says whether the cache is used or the images are tokenized
    now. See :func:`_fill_token_cache` for how the cache is written."""
    path = cache_dir / f"tokens_{token_cache_key(vqvae, ds, flip)}.npy"
    images = f"{len(ds)} images" + (" and their mirrored copies" if flip else "")
    if path.is_file():
        if info.is_main:
            log.info("using the cached tokens of the %s (%s): the same tokenizer and images, nothing to tokenize",
                     images, path)
    else:
        if info.is_main:
            log.info("before its first step, var train tokenizes the %s, once: the tokens are cached in %s and "
                     "reused by every later run with the same tokenizer and images", images, cache_dir)
        _fill_token_cache(vqvae, ds, path, info, flip, batch_size)
    return np.load(path, mmap_mode="r")


def _fill_token_cache(vqvae: VQVAE, ds: ImageArrayDataset, path: Path, info: DistInfo, flip: bool,
                      batch_size: int) -> None:
    """Tokenize ``ds`` into ``path``: chunks of ``batch_size`` images written into a memory-mapped
    ``.partial.npy``, a ``.done.npy`` flag per chunk, the chunks split over the torchrun processes (the
    cache folder must be one they all see, as the run folder is). An interrupted run resumes from the
    chunks done; the finished file is renamed into place, so a cache entry is never half written. The disk
    must have room for the whole entry at the start (WriteFailed otherwise): a memory-mapped write past a
    full disk would kill the process."""
    from tqdm.auto import tqdm
    partial, done_path = path.with_suffix(".partial.npy"), path.with_suffix(".done.npy")
    variants, n_chunks = 2 if flip else 1, -(-len(ds) // batch_size)

    def create_if_new() -> None:
        if done_path.is_file():
            return
        dtype = np.dtype(np.int16 if vqvae.config.vocab_size <= 32767 else np.int32)
        shape = (variants, len(ds), sum(h * w for h, w in vqvae.config.scales))
        check_free_space(path, int(np.prod(shape)) * dtype.itemsize, f"the tokens of {len(ds)} images")
        path.parent.mkdir(parents=True, exist_ok=True)
        for name in (partial, done_path):  # whatever is there (a symlink too) is replaced, never written through
            name.unlink(missing_ok=True)
        np.lib.format.open_memmap(partial, "w+", dtype, shape if flip else shape[1:]).flush()
        np.lib.format.open_memmap(done_path, "w+", bool, (variants, n_chunks)).flush()  # last: marks both exist

    _on_main_process(create_if_new, info)  # every process waits for it; a failure stops them all
    tokens = np.load(partial, mmap_mode="r+").reshape(variants, len(ds), -1)
    done = np.load(done_path, mmap_mode="r+")
    todo = [(v, c) for v in range(variants) for c in range(n_chunks) if not done[v, c]]
    _barrier(info)  # every process has read the same list before any of them marks a chunk done
    mine = todo[info.rank::info.world]
    log.info("tokenizing %d of the %d chunk(s) left, %d images%s, in process %d of %d", len(mine), len(todo),
             sum(min(len(ds), (c + 1) * batch_size) - c * batch_size for _, c in mine),
             " (originals and mirrored copies)" if flip else "", info.rank + 1, info.world)
    vqvae.eval()
    for v, c in tqdm(mine, desc="tokenizing", unit="chunk", disable=not info.is_main):
        idx = np.arange(c * batch_size, min(len(ds), (c + 1) * batch_size))
        x, _ = ds.batch(idx, torch.full((len(idx),), bool(v)))
        tokens[v, idx] = torch.cat(vqvae.img_to_indices(x.to(info.device) * 2 - 1), 1).cpu().numpy()
        tokens.flush()
        done[v, c] = True
        done.flush()
    _barrier(info)
    if info.is_main:
        if not done.all():
            raise RuntimeError(f"{done_path}: chunks {np.argwhere(~done).tolist()[:5]} not tokenized: the "
                               f"processes do not share the cache folder {path.parent} (--cache-dir)")
        os.replace(partial, path)
        done_path.unlink()
        log.info("cached tokens of %d images in %s", len(ds), path)
    _barrier(info)


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "var" / "tokens"


def _transformer_images(data: str, vae_cfg: VQVAEConfig, crop: bool) -> ImageArrayDataset:
    """The images ``var train`` reads: at the tokenizer's size or, with ``crop``, the sources of the random
    crops: at ``CROP_RATIO`` x the size (an image folder decoded so from its files, a data set of ``var
    prepare-data --crop``), or at the tokenizer's size where the data holds nothing larger (Fashion-MNIST, a data
    set prepared at the model's size: each batch is then enlarged, see :func:`train_var`). ValueError names
    images of another size, and a non-square tokenizer with ``crop``."""
    (H, W), channels = vae_cfg.image_hw, vae_cfg.in_channels
    if crop and H != W:
        raise ValueError(f"random crops (--crop) take square models only; this tokenizer makes {H}x{W} images")
    ds = build_dataset(data, (H, W), channels, "train", for_crop=crop)
    enlarged = (crop_source_side(H),) * 2 if crop else None
    _check_geometry(ds, enlarged if ds.images.shape[1:3] == enlarged else (H, W), channels)
    return ds


@_locked_run
def train_var(data: str, vae_dir: Path, out: Path, var_cfg: VARConfig, schedule: Schedule, *,
              label_smoothing: float = 0.0, ema: float | None = None, flip: bool = False, amp: bool = False,
              cache_dir: Path | None = None, device: str | None = None, samples_per_class: int = 4,
              init_adaln_gamma: float | None = None, crop: bool = False, minutes: float | None = None,
              fsdp: bool = False, dtype: str = "fp32", compile: bool = False) -> dict:
    """Train the transformer on a tokenizer's tokens. Tokens are computed once and cached; with ``crop``
    (the reference's augmentation) a random window of the model's size is cut every step from each image at
    ``CROP_RATIO`` times that size, and the tokenizer encodes it on the fly. Those images are decoded at that
    size from the source files; data that holds nothing larger (Fashion-MNIST, a data set prepared at the
    model's size) is enlarged with the same Lanczos filter batch by batch, after a warning that its crops are
    softer than the source (the reference enlarges small images the same way). ``minutes``: train for about
    that long instead of ``schedule.steps`` (:func:`schedule_for_minutes`).

    With ``fsdp`` the transformer, its gradients, AdamW's moments and the EMA weights are sharded over the
    processes (:mod:`var.training.fsdp`) and ``dtype`` "bf16" computes with bf16 weights under bf16 autocast
    (the shards, the gradients' reduction and the optimizer stay float32); the exported folder is the same
    as without. ``compile``: the training steps run compiled (:meth:`VARTrainer.compile`), not with ``fsdp``.
    ValueError names ``dtype`` "bf16" without ``fsdp`` (there ``amp`` is bf16 autocast), an unknown one, or
    ``compile`` with ``fsdp``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "fp32" and not fsdp:
        raise ValueError(f"--dtype {dtype} sets the dtype of the weights FSDP gathers: it takes --fsdp (without "
                         "--fsdp, --amp trains with bf16 autocast)")
    if fsdp and minutes is not None:
        raise ValueError(f"--minutes {minutes} times its steps on a copy of the trainer, and a sharded (--fsdp) "
                         "transformer cannot be copied: with --fsdp give --steps")
    if compile and fsdp:
        raise ValueError(NO_COMPILE_WITH_FSDP)
    info = setup_distributed(device)
    torch.manual_seed(schedule.seed)
    vqvae, vae_meta = load_vqvae(vae_dir)
    vqvae = vqvae.to(info.device)
    H = vqvae.config.image_hw[0]
    ds = _transformer_images(data, vqvae.config, crop)
    var_cfg = dataclasses.replace(var_cfg, vocab_size=vqvae.config.vocab_size, latent_channels=vqvae.config.z_channels,
                                  patch_nums=vqvae.config.patch_nums, num_classes=ds.num_classes)
    cfg = _fixed_run_config(out, {"kind": "var", "data": data, "vae": str(vae_dir), "var": var_cfg.to_dict(),
                                  "class_names": ds.class_names, "crop": crop}, info, must_match=("data",),
                            checked_by_caller=("vae",))
    reference = _trained_on_tokenizer(out, cfg["vae"], vae_dir)
    if reference is not None:  # resuming: the tokens must be those the transformer trains on so far
        differs = reference.token_side_difference(vqvae)
        if differs:
            raise ValueError(f"the tokenizer {vae_dir} is not the one {out} trains on ({differs} differs from its "
                             f"saved tokenizer): resume with --vae {cfg['vae']}, or start a new --out")
    if cfg.get("crop", False) != crop:  # a resumed run keeps its augmentation, and reads its images
        crop = cfg.get("crop", False)
        try:
            ds = _transformer_images(data, vqvae.config, crop)
        except ValueError as e:
            raise ValueError(f"{out} trains {'with' if crop else 'without'} random crops (its run.json): {e}") from e
    var = VAR(VARConfig(**cfg["var"])).to(info.device)
    if init_adaln_gamma is not None:
        var.init_weights(init_adaln_gamma=init_adaln_gamma)
    torch.manual_seed(schedule.seed + info.rank)  # same initial weights, independent label dropout per process
    labels = torch.from_numpy(ds.labels)
    if crop:
        margin = crop_source_side(H) - H
        crops = random_crops(ds, H, data, warn=info.is_main)

        def get_batch(idx, flips, offsets):
            return crops(idx, flips, offsets), labels[torch.as_tensor(idx)]
    else:
        margin = 0
        tokens = tokenize_dataset(vqvae, ds, cache_dir or default_cache_dir(), info, flip)

        def get_batch(idx, flips):
            toks = tokens[flips.numpy().astype(np.intp), idx] if flips is not None else tokens[idx]
            return torch.from_numpy(np.ascontiguousarray(toks)), labels[torch.as_tensor(idx)]

    if fsdp:  # before the optimizer is made: it takes the sharded parameters
        shard_transformer(var, DTYPES[dtype])
        if info.device.type == "cpu" and free_gathers_at_once():
            log.debug("malloc serves buffers of %d MB and more by mmap: freed gathers go back at once",
                      MMAP_THRESHOLD // 2 ** 20)
    trainer = VARTrainer(var, vqvae, make_optimizer(var, schedule, VAR_BETAS), info.device,
                         label_smoothing=label_smoothing, grad_clip=schedule.grad_clip, amp=amp or dtype == "bf16",
                         ema_decay=ema, ddp_model=None if fsdp else _wrap(var, info), compile=compile)
    if info.is_main:
        log.info("transformer: %.2fM parameters, %d images x %d tokens%s, %d process(es)%s",
                 sum(p.numel() for p in var.parameters()) / 1e6, len(ds), var.config.seq_len,
                 f", random {H}px crops of {H + margin}px images" if crop else "", info.world,
                 f", sharded (FSDP, {dtype})" if fsdp else "")

    def snapshot(step: int) -> None:
        if not info.is_main:
            return
        labels = np.repeat(np.arange(ds.num_classes), samples_per_class).tolist()
        with trainer.sampling_pipeline(ds.class_names, info={"source": "var train", "data": data, "step": step}) as pipe:
            out_s = pipe(class_labels=labels, seed=0)
            pipe.save_pretrained(out)
        _save_png(grid(out_s.images.cpu(), nrow=samples_per_class, scale=max(1, 64 // out_s.images.shape[-1]),
                       row_labels=ds.class_names), out / "samples" / f"samples_{step:07d}.png")

    batch_of_step = _batch_getter(get_batch, len(ds), schedule, info, flip, margin)
    if minutes is not None:
        schedule = schedule_for_minutes(out, schedule, minutes, trainer, batch_of_step, info)
    with Prefetcher(batch_of_step, end=schedule.steps) as batches:
        last = fit(trainer, schedule, out, info, batches, on_snapshot=snapshot)
    _finish(info)
    return dict(last)


def _trained_on_tokenizer(out: Path, run_vae: str, vae_dir: str | os.PathLike) -> VQVAE | None:
    """The tokenizer whose tokens the transformer of ``out`` has trained on so far, to compare the command's
    with: the one its last snapshot saved; before the first snapshot, when a checkpoint exists, the one its
    run.json names (``run_vae``). None when nothing has been trained yet, or nothing else is named."""
    if (out / "config.json").is_file():
        return load_vqvae(out)[0]
    if not any((out / name).is_file() for name in (CHECKPOINT, SHARDED_CHECKPOINT)) or run_vae == str(vae_dir):
        return None
    try:
        return load_vqvae(run_vae)[0]
    except (FileNotFoundError, ValueError) as e:
        log.warning("cannot check that %s makes the tokens %s was trained on so far: its tokenizer %s does not "
                    "load (%s)", vae_dir, out, run_vae, e)
        return None


def _check_geometry(ds: ImageArrayDataset, image_hw: tuple[int, int], channels: int) -> None:
    h, w, c = ds.images.shape[1:]
    if (h, w) != tuple(image_hw) or c != channels:
        enlarged = (h, w) == tuple(round(s * CROP_RATIO) for s in image_hw)
        raise ValueError(f"data set images are {h}x{w}x{c} (height x width x channels), the tokenizer takes "
                         f"{image_hw[0]}x{image_hw[1]}x{channels}"
                         + (" (a data set of var prepare-data --crop serves var train --crop only)" if enlarged else ""))


def _finish(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
