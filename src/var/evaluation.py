"""Evaluation with a small classifier trained by this project, and of models trained on any images.

A compact CNN classifies 28x28 Fashion-MNIST images; its penultimate features stand in for Inception's
in a Frechet distance that runs on a CPU in seconds. :func:`evaluate_pipeline` reports the share of
samples classified as the class they were asked for, the Frechet distance of samples, of real training
images (the floor) and of the tokenizer's reconstructions to the test set, and the tokenizer's PSNR.
:func:`evaluate_on_data` judges a model of any other images in its own tokenizer's features.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import ImageArrayDataset
from . import images as image_io
from .checkpoints import BUNDLED_DIR, CONFIG_NAME, FORMAT_VERSION, read_config
from .files import write_atomically
from .metrics import frechet_distance, psnr
from .sampling import check_batch_size
from .precision import dtype_name

if TYPE_CHECKING:
    from .pipeline import VARPipeline

log = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "var-classifier"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
BUNDLED_CLASSIFIER = BUNDLED_DIR / "fashion-mnist-classifier"


# ----------------------------------------------------------------------------------- classifier
@dataclass
class ClassifierConfig:
    """Sizes of :class:`Classifier`; ``widths`` are the channels of its conv blocks (each halves H, W)."""

    image_size: int = 28
    channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 128
    class_names: list[str] | None = None

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if self.image_size >> len(self.widths) < 1:
            raise ValueError(f"{len(self.widths)} conv blocks halve a {self.image_size}px image below one pixel")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


class Classifier(nn.Module):
    """Conv blocks (conv 3x3, batch norm, ReLU, 2x2 max-pool), a ``feature_dim`` layer and a linear head.

    Takes images in [0, 1] (B, channels, H, W); returns logits (B, num_classes) and the penultimate
    features (B, feature_dim) that the Frechet distance compares.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        blocks, c_in = [], config.channels
        for c_out in config.widths:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        side = config.image_size >> len(config.widths)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, config.feature_dim),
                                      nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats_BD = self.features(self.blocks(images * 2 - 1))
        return self.head(self.dropout(feats_BD)), feats_BD

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a ValueError naming the shape when ``images`` are not (B, channels, size, size)."""
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"the classifier takes images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")


@torch.no_grad()
def classify(classifier: Classifier, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, classes) and features (N, feature_dim) of [0, 1] images (N, C, H, W), in eval mode;
    both returned on the CPU."""
    classifier.check_images(images)
    classifier.eval()
    device = next(classifier.parameters()).device
    logits, feats = [], []
    for s in range(0, len(images), batch_size):
        lo, fe = classifier(images[s:s + batch_size].to(device, torch.float32))
        logits.append(lo.cpu())
        feats.append(fe.cpu())
    return torch.cat(logits), torch.cat(feats)


def dataset_images(ds: ImageArrayDataset, indices: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, C, H, W) in [0, 1] and labels (N,) of ``ds`` (all of it, or ``indices``)."""
    return ds.batch(np.arange(len(ds)) if indices is None else indices)


def accuracy(classifier: Classifier, ds: ImageArrayDataset, batch_size: int = 500) -> float:
    """Share of ``ds`` that ``classifier`` labels correctly."""
    images, labels = dataset_images(ds)
    logits, _ = classify(classifier, images, batch_size)
    return int((logits.argmax(-1) == labels).sum()) / len(labels)


def train_classifier(train: ImageArrayDataset, test: ImageArrayDataset | None = None, epochs: int = 3,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0, flip: bool = True,
                     config: ClassifierConfig | None = None) -> tuple[Classifier, dict]:
    """Train a :class:`Classifier` with Adam and a cosine learning-rate decay; random horizontal flips
    (``flip``) are the only augmentation. Deterministic for a given seed and thread count.

    Returns the model (eval mode) and a record: epochs, seed, wall time and the test accuracy when
    ``test`` is given. The initial weights and dropout draw from ``seed``; the caller's random state is left
    as it was.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    config = config or ClassifierConfig(image_size=train.images.shape[1], channels=train.channels,
                                        num_classes=train.num_classes, class_names=train.class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train_classifier(Classifier(config), train, test, epochs, batch_size, lr, seed, flip)


def _train_classifier(model: Classifier, train: ImageArrayDataset, test: ImageArrayDataset | None, epochs: int,
                      batch_size: int, lr: float, seed: int, flip: bool) -> tuple[Classifier, dict]:
    """The training loop of :func:`train_classifier`."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / (epochs * steps_per_epoch))))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(0, len(train), batch_size):
            idx = perm[s:s + batch_size]
            flips = torch.rand(len(idx), generator=gen) < 0.5 if flip else None
            x, y = train.batch(idx.numpy(), flips)
            logits, _ = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += int((logits.argmax(-1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        log.info("epoch %d/%d: loss %.4f, train accuracy %.4f (%.0f s)", epoch + 1, epochs, loss_sum / total,
                 correct / total, time.perf_counter() - start)
    model.eval()
    record = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "flip": flip,
              "train_images": len(train), "wall_time_s": round(time.perf_counter() - start, 1)}
    if test is not None:
        record["test_accuracy"] = accuracy(model, test)
        record["test_images"] = len(test)
        log.info("test accuracy %.4f on %d images", record["test_accuracy"], len(test))
    return model, record


def save_classifier(model: Classifier, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``config.json`` (format ``var-classifier``) and ``classifier.safetensors`` to the folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"format": CLASSIFIER_FORMAT, "version": FORMAT_VERSION, "config": model.config.to_dict(),
           "info": dict(info or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomically(path / CLASSIFIER_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    write_atomically(path / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(cfg, indent=2) + "\n"))
    return path


def load_classifier(path: str | os.PathLike | None = None) -> tuple[Classifier, dict]:
    """A classifier folder written by :func:`save_classifier` (default: the bundled Fashion-MNIST one),
    in eval mode, with the ``info`` record it was saved with."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else BUNDLED_CLASSIFIER
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no classifier in {path} (no {CONFIG_NAME})")
    cfg = read_config(path / CONFIG_NAME, CLASSIFIER_FORMAT)
    model = Classifier(ClassifierConfig(**cfg["config"]))
    model.load_state_dict(load_file(path / CLASSIFIER_WEIGHTS), strict=True)
    return model.eval(), cfg.get("info", {})


def balanced_indices(labels: np.ndarray, n_per_class: int, num_classes: int, seed: int) -> np.ndarray:
    """``n_per_class`` random indices of each class 0..num_classes-1, class by class (seeded)."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < n_per_class:
            raise ValueError(f"class {c} has {len(pool)} images, fewer than n_per_class={n_per_class}")
        picks.append(np.sort(rng.choice(pool, n_per_class, replace=False)))
    return np.concatenate(picks)


# --------------------------------------------------------------------------------- the pipeline
def _check_class_order(model_names: list[str] | None, classifier_names: list[str] | None) -> None:
    """Classes are matched by id. A name that both have at different ids (e.g. a model trained on class
    folders, which are sorted by name, even where a folder spells another class differently: "T-shirt/top"
    cannot be a folder's name) would judge that class's samples as another class: ValueError. Names only
    one of them has are logged, since a data set may spell the same classes differently."""
    if not model_names or not classifier_names:
        return
    ours, theirs = [n.lower() for n in model_names], [n.lower() for n in classifier_names]
    if ours == theirs:
        return
    moved = [f"{model_names[i]!r} is class {i} of the model but {theirs.index(n)} of the classifier"
             for i, n in enumerate(ours) if n in theirs and theirs.index(n) != i]
    if moved:
        raise ValueError(f"the model's classes {model_names} are the classifier's {classifier_names} in another "
                         f"order ({'; '.join(moved[:3])}): its samples of each class would be judged as another class")
    log.warning("the model's class names %s differ from the classifier's %s: classes are matched by id",
                model_names, classifier_names)


@torch.no_grad()
def reconstruct(pipe: VARPipeline, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """The tokenizer's round trip (encode to tokens, decode) of [0, 1] images, batch by batch."""
    out = [pipe.decode(pipe.encode(images[s:s + batch_size])).cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(out)


def _settings(pipe: VARPipeline, sampling: dict, seed: int, batch_size: int) -> dict:
    """The sampling settings a result was made with: every option as the pipeline resolved it, and ``fast``."""
    options = {**dict.fromkeys(("cfg", "top_k", "top_p", "temperature", "cfg_scales", "prune")), **sampling}
    fast = bool(options.pop("fast", False))
    resolved = pipe.sampling(**options)
    if resolved["prune"] is not None:
        resolved["prune"] = list(resolved["prune"])
    return {**resolved, "fast": fast, "seed": seed, "batch_size": batch_size, "dtype": dtype_name(pipe.compute_dtype)}


def evaluate_pipeline(pipe: VARPipeline, classifier: Classifier, test: ImageArrayDataset, train: ImageArrayDataset,
                      n_per_class: int = 100, seed: int = 0, batch_size: int = 100, progress: bool = False,
                      save_npz: str | os.PathLike | None = None, **sampling) -> dict:
    """Score a class-conditional :class:`~var.pipeline.VARPipeline` with ``classifier``.

    ``n_per_class`` samples of every class are generated (seeded); the reference features are those of
    the whole ``test`` split. Three equally large, class-balanced sets are compared with it, so their
    Frechet distances share the same small-sample bias: the samples, real ``train`` images (the floor),
    and the tokenizer's reconstructions of ``test`` images (the generator's ceiling; also their PSNR).
    ``save_npz`` also writes the samples as ``arr_0`` uint8 (N, H, W, 3) with ``labels``, for standard FID tools.
    ``sampling``: the pipeline call's sampling options (``cfg``, ``top_k``, ``top_p``, ``temperature``,
    ``cfg_scales``, ``prune``, ``fast``); those left out take the model's defaults (the settings used are in
    the result, with the pipeline's compute dtype, which the samples and the reconstructions are made in).
    """
    c = classifier.config
    if (pipe.channels, pipe.image_size, pipe.num_classes) != (c.channels, c.image_size, c.num_classes):
        raise ValueError(f"the classifier takes {c.image_size}x{c.image_size} images with {c.channels} channel(s) "
                         f"and {c.num_classes} classes; the model makes {pipe.image_size}x{pipe.image_size} images "
                         f"with {pipe.channels} channel(s) and {pipe.num_classes} classes")
    _check_class_order(pipe.class_names, c.class_names)
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    check_batch_size(batch_size)
    # The real images are drawn first: a split too small for n_per_class fails before any sampling.
    train_rows = balanced_indices(train.labels, n_per_class, c.num_classes, seed)
    test_rows = balanced_indices(test.labels, n_per_class, c.num_classes, seed)
    labels = torch.arange(c.num_classes).repeat_interleave(n_per_class)
    start = time.perf_counter()
    samples = pipe(class_labels=labels, seed=seed, batch_size=batch_size, progress=progress, **sampling).images.cpu()
    sample_time = time.perf_counter() - start
    log.info("generated %d samples in %.0f s", len(labels), sample_time)
    if save_npz is not None:
        # Through a temporary file: a full disk part way through leaves no truncated npz for FID tools to read.
        write_atomically(Path(save_npz), lambda tmp: image_io.save_npz(samples, labels, tmp))
        log.info("wrote %d samples to %s", len(labels), save_npz)
    logits, sample_feats = classify(classifier, samples)
    hits = logits.argmax(-1) == labels

    test_images, _ = dataset_images(test)
    _, test_feats = classify(classifier, test_images)
    train_images, _ = dataset_images(train, train_rows)
    _, train_feats = classify(classifier, train_images)
    originals, _ = dataset_images(test, test_rows)
    recons = reconstruct(pipe, originals, batch_size)
    log.info("reconstructed %d test images; features of %d test and %d train images", len(recons), len(test),
             len(train_images))
    _, recon_feats = classify(classifier, recons)

    names = c.class_names or [str(i) for i in range(c.num_classes)]
    result = {
        "n_per_class": n_per_class, "num_samples": len(labels),
        "settings": _settings(pipe, sampling, seed, batch_size),
        "class_accuracy": int(hits.sum()) / len(labels),
        "class_accuracy_per_class": {names[k]: int(hits[labels == k].sum()) / n_per_class
                                     for k in range(c.num_classes)},
        "frechet_samples": frechet_distance(sample_feats, test_feats),
        "frechet_real_train": frechet_distance(train_feats, test_feats),
        "frechet_reconstructions": frechet_distance(recon_feats, test_feats),
        "tokenizer_psnr": psnr(recons, originals),
        "reference_images": len(test),
        "sampling_time_s": round(sample_time, 1),
    }
    result["frechet_ratio_samples_to_reconstructions"] = (  # None, not inf, which JSON cannot hold
        result["frechet_samples"] / result["frechet_reconstructions"] if result["frechet_reconstructions"] > 0
        else None)
    return result


# ------------------------------------------------------------------------------ any image data
TOKENIZER_FEATURES = "the model's own tokenizer encoder (its latent averaged over 2x2 regions)"


@torch.no_grad()
def tokenizer_features(pipe: VARPipeline, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """Features (N, 4 x latent channels) of [0, 1] images (N, channels, H, W) in the pipeline's tokenizer: its
    encoder's latent before quantization, averaged over 2x2 regions of the image. Needs no classifier and no
    download, but is the model's own: compare the figures of runs that share a tokenizer only."""
    vqvae = pipe.vqvae
    dtype = next(vqvae.parameters()).dtype
    feats = []
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].to(pipe.device, dtype) * 2 - 1
        feats.append(F.adaptive_avg_pool2d(vqvae.encode_latent(x).float(), 2).flatten(1).cpu())
    return torch.cat(feats)


def _nearest(queries_ND: torch.Tensor, keys_MD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to, and index of, the nearest row of ``keys_MD`` for each row of ``queries_ND``."""
    dist_NM = torch.cdist(queries_ND.double(), keys_MD.double())
    return dist_NM.min(1)


def evaluate_on_data(pipe: VARPipeline, train: ImageArrayDataset, heldout: ImageArrayDataset, n_per_class: int = 100,
                     seed: int = 0, batch_size: int = 100, progress: bool = False, **sampling) -> dict:
    """Score a pipeline trained on any images, without a classifier of their classes: ``train`` the images it
    was trained on, ``heldout`` images it has not seen (those the tokenizer run held out).

    Reports the tokenizer's PSNR on ``heldout``; the Frechet distance in :func:`tokenizer_features` of
    ``n_per_class`` samples of every class to ``heldout`` and to ``train``, beside the floor (``train`` to
    ``heldout``); per class, how many samples have their nearest real image (in those features) in the class
    they were asked for; and ``copy_ratio``: the samples' median distance to their nearest training image over
    that of the held-out images (well below 1: the samples are near copies of training images). With a single
    held-out image the distances to ``heldout`` are None (a covariance needs two). ``sampling`` as in
    :func:`evaluate_pipeline`."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    check_batch_size(batch_size)
    if (pipe.channels, pipe.image_size) != (train.channels, train.images.shape[1]):
        raise ValueError(f"the data's images are {train.images.shape[1]}x{train.images.shape[2]} with "
                         f"{train.channels} channel(s); the model makes {pipe.image_size}x{pipe.image_size} with "
                         f"{pipe.channels}: give the data the model was trained on")
    num_classes = pipe.num_classes
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    start = time.perf_counter()
    samples = pipe(class_labels=labels, seed=seed, batch_size=batch_size, progress=progress, **sampling).images.cpu()
    sample_time = time.perf_counter() - start
    train_images, train_labels = dataset_images(train)
    held_images, held_labels = dataset_images(heldout)
    recons = reconstruct(pipe, held_images, batch_size)
    f_samples, f_train, f_held = (tokenizer_features(pipe, x, batch_size) for x in (samples, train_images, held_images))

    real_feats, real_labels = torch.cat([f_train, f_held]), torch.cat([train_labels, held_labels])
    _, nearest_real = _nearest(f_samples, real_feats)
    same_class = real_labels[nearest_real] == labels
    sample_to_train, _ = _nearest(f_samples, f_train)
    held_to_train, _ = _nearest(f_held, f_train)
    names = pipe.class_names or [str(i) for i in range(num_classes)]
    return {
        "n_per_class": n_per_class, "num_samples": len(labels),
        "settings": _settings(pipe, sampling, seed, batch_size),
        "features": TOKENIZER_FEATURES,
        "train_images": len(train), "heldout_images": len(heldout),
        "tokenizer_psnr_heldout": psnr(recons, held_images),
        "frechet_samples_heldout": frechet_distance(f_samples, f_held) if len(heldout) > 1 else None,
        "frechet_samples_train": frechet_distance(f_samples, f_train),
        "frechet_train_heldout": frechet_distance(f_train, f_held) if len(heldout) > 1 else None,
        "nearest_real_same_class": int(same_class.sum()) / len(labels),
        "nearest_real_same_class_per_class": {names[k]: int(same_class[labels == k].sum())
                                              for k in range(num_classes)},
        "copy_ratio": float(sample_to_train.median() / held_to_train.median().clamp_min(1e-12)),
        "sampling_time_s": round(sample_time, 1),
    }
