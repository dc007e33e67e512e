"""``var eval``: score a model with the project's classifier (and FID/IS of an npz when Inception
weights are on this machine); ``var train-classifier``: train that classifier."""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..data import ImageArrayDataset, build_dataset, describe_data, fashion_mnist_dataset, split_holdout
from ..evaluation import evaluate_on_data, evaluate_pipeline, load_classifier, save_classifier, train_classifier
from ..inception import InceptionUnavailable, inception_metrics, load_npz_images
from ..precision import default_device
from .common import (add_command, add_model_args, add_speed_args, check_output_files, load_pipeline,
                     positive_int, speed_kwargs)

log = logging.getLogger("var")



def register(sub) -> None:
    p = add_command(sub, "eval", "score a model: class accuracy and Frechet distances with the project's "
                    "classifier, tokenizer PSNR; FID/IS of an npz")
    add_model_args(p)
    p.add_argument("--per-class", type=int, default=100, help="samples per class (0: no model, only --npz)")
    p.add_argument("--cfg", type=float, default=None, help="guidance strength (default: the model's)")
    p.add_argument("--top-k", type=int, default=None, help="0 disables (default: the model's)")
    p.add_argument("--top-p", type=float, default=None, help="0 disables (default: the model's)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature (default: the model's)")
    add_speed_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples and of the real images drawn")
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="images generated per call, call i seeded from --seed and i as var sample does (the "
                        "samples of a seed depend on it)")
    p.add_argument("--classifier", metavar="PATH", default="bundled",
                   help="a folder written by var train-classifier, or 'bundled' for the shipped one")
    p.add_argument("--data", default=None,
                   help="fashion-mnist or a folder of its IDX files: judged by the classifier, the test split the "
                        "reference; an image folder or a var prepare-data folder (the model's own training data): "
                        "judged in the model's tokenizer features against the images the tokenizer held out "
                        "(default: the data the model was trained on, where its folder names one, else "
                        "fashion-mnist)")
    p.add_argument("--json", metavar="OUT", help="write the results to this JSON file")
    p.add_argument("--save-npz", metavar="OUT", help="write the samples as arr_0 uint8 (N, H, W, 3) for other FID tools")
    p.add_argument("--npz", metavar="FILE", help="FID/IS of arr_0 uint8 (N, H, W, 3) images in this npz file")
    p.add_argument("--npz-ref", metavar="FILE", help="reference npz for that FID (default: the test split of --data)")
    p.add_argument("--inception-weights", metavar="PATH", type=Path,
                   help="torch-fidelity's Inception weights file, weights-inception-2015-12-05-6726825d.pth "
                        "(default: that file in torch hub's checkpoints folder, ~/.cache/torch/hub/checkpoints unless "
                        "$TORCH_HOME says otherwise)")
    p.set_defaults(run=run)

    t = add_command(sub, "train-classifier", "train the small classifier that var eval uses")
    t.add_argument("--data", default="fashion-mnist", help="fashion-mnist or a folder holding its IDX files")
    t.add_argument("--epochs", type=int, default=4, help="passes over the training images")
    t.add_argument("--batch-size", type=int, default=128, help="images per step")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    t.add_argument("--seed", type=int, default=0, help="random seed of initialisation, order and flips; with the other options as they are and "
                   "OMP_NUM_THREADS=1 it reproduces the bundled classifier (92.21%%; other thread counts round "
                   "differently, e.g. 92.08%% on two)")
    t.add_argument("--no-flip", dest="flip", action="store_false",
                   help="train without random horizontal flips (they are on unless this is given)")
    t.add_argument("--out", default="runs/classifier", help="folder to write config.json + classifier.safetensors")
    t.set_defaults(run=run_train)


def _dataset(data: str, split: str) -> ImageArrayDataset:
    return fashion_mnist_dataset(None if data == "fashion-mnist" else data, split)


def run_train(args: argparse.Namespace) -> int:
    train, test = _dataset(args.data, "train"), _dataset(args.data, "test")
    model, record = train_classifier(train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                     seed=args.seed, flip=args.flip)
    record.update(data=args.data, torch=torch.__version__, threads=torch.get_num_threads())
    path = save_classifier(model, args.out, info=record)
    log.info("test accuracy %.2f%% (%d images); wrote %s in %.0f s", 100 * record["test_accuracy"],
             record["test_images"], path, record["wall_time_s"])
    return 0


def run(args: argparse.Namespace) -> int:
    if args.per_class < 0:
        raise ValueError(f"--per-class must be 0 or more, got {args.per_class}")
    if args.per_class == 0 and not args.npz:
        raise ValueError("--per-class 0 skips the model, so --npz is needed to have something to evaluate")
    check_output_files(json=args.json, save_npz=args.save_npz)
    _check_input_files(args)
    report: dict = {}
    if args.per_class:
        report.update(_evaluate_model(args))
    if args.npz:
        report["inception"] = _inception(args)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", path)
    return 0


def _check_input_files(args: argparse.Namespace) -> None:
    """Name a missing ``--npz`` or ``--npz-ref`` file, or ``--npz-ref`` without ``--npz``, before the model's
    evaluation: found after it, the error would lose that run's results, ``--json`` included. ``--npz`` may be
    the file this run's ``--save-npz`` is about to write."""
    if args.npz_ref and not args.npz:
        raise ValueError(f"--npz-ref {args.npz_ref} is the reference of --npz's FID: give --npz too")
    made_here = bool(args.npz and args.per_class and args.save_npz
                     and Path(args.save_npz).resolve() == Path(args.npz).resolve())
    for flag, path in (("--npz", None if made_here else args.npz), ("--npz-ref", args.npz_ref)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file (expected an npz of uint8 images, arr_0)")


def _evaluate_model(args: argparse.Namespace) -> dict:
    pipe = load_pipeline(args)
    data = args.data or _trained_on(pipe) or "fashion-mnist"
    if describe_data(data).kind != "fashion-mnist":
        return _evaluate_on_data(args, pipe, data)
    args = argparse.Namespace(**{**vars(args), "data": data})
    classifier, info = load_classifier(None if args.classifier == "bundled" else args.classifier)
    test, train = _dataset(args.data, "test"), _dataset(args.data, "train")
    start = time.perf_counter()
    result = evaluate_pipeline(pipe, classifier, test, train, n_per_class=args.per_class, seed=args.seed,
                               batch_size=args.batch_size, progress=True, save_npz=args.save_npz,
                               **_sampling(args))
    result["eval_time_s"] = round(time.perf_counter() - start, 1)
    result["model"] = "official" if args.official else args.model
    result["model_source"] = pipe.info.get("source")
    result["classifier"] = args.classifier
    result["classifier_test_accuracy"] = info.get("test_accuracy")
    _print_table(result)
    return result


def _sampling(args: argparse.Namespace) -> dict:
    """The sampling options of ``var eval`` as keyword arguments of the pipeline's call."""
    return dict(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                **speed_kwargs(args))


def _trained_on(pipe) -> str | None:
    """The data a ``var train`` pipeline was trained on, when its info names data that is still there."""
    data = pipe.info.get("data") if isinstance(pipe.info, dict) else None
    return data if data and (data == "fashion-mnist" or Path(data).exists()) else None


def _evaluate_on_data(args: argparse.Namespace, pipe, data: str) -> dict:
    """``var eval`` of a model of other images than Fashion-MNIST: :func:`evaluate_on_data` on ``data``, held
    out as ``var train-vae`` held it out."""
    if args.classifier != "bundled":
        log.warning("--classifier %s is not used: %s is judged in the model's tokenizer features", args.classifier,
                    data)
    ds = build_dataset(data, pipe.vqvae.config.image_hw, pipe.channels)
    train, heldout = split_holdout(ds)
    log.info("%s: %d images, %d held out (as var train-vae held them out)", data, len(ds), len(heldout))
    start = time.perf_counter()
    result = evaluate_on_data(pipe, train, heldout, n_per_class=args.per_class, seed=args.seed,
                              batch_size=args.batch_size, progress=True, **_sampling(args))
    result.update(eval_time_s=round(time.perf_counter() - start, 1), data=data,
                  model="official" if args.official else args.model, model_source=pipe.info.get("source"))
    _print_data_table(result)
    return result


def _print_data_table(r: dict) -> None:
    s = r["settings"]
    print(f"\nEvaluation of {r['model']} on {r['data']}: {r['num_samples']} samples, {r['n_per_class']} per class, "
          f"cfg {s['cfg']}, top-k {s['top_k']}, top-p {s['top_p']}, temperature {s['temperature']}, seed {s['seed']}; "
          f"{r['train_images']} training and {r['heldout_images']} held-out images")
    print(f"features: {r['features']}; comparable between models that share a tokenizer")
    held = r["frechet_samples_heldout"] is not None
    rows = [
        ("tokenizer PSNR, held-out images", f"{r['tokenizer_psnr_heldout']:.2f} dB", "reconstructions"),
        ("Frechet distance: samples to held-out", f"{r['frechet_samples_heldout']:.3f}" if held else "-",
         f"the floor, training to held-out images: {r['frechet_train_heldout']:.3f}" if held else
         "one held-out image: no covariance"),
        ("Frechet distance: samples to training", f"{r['frechet_samples_train']:.3f}", ""),
        ("nearest real image of the asked class", f"{100 * r['nearest_real_same_class']:.1f}%",
         "per class: " + ", ".join(f"{k} {v}/{r['n_per_class']}"
                                   for k, v in r["nearest_real_same_class_per_class"].items())),
        ("copy ratio", f"{r['copy_ratio']:.2f}",
         "samples' distance to the nearest training image / held-out images'; well below 1: near copies"),
    ]
    w = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        print(f"  {name:<{w}}  {value:>10}   {note}")
    if r["heldout_images"] < 50:
        print(f"  ({r['heldout_images']} held-out images: the distances to them are noisy; compare with the floor)")


def _inception(args: argparse.Namespace) -> dict:
    args = argparse.Namespace(**{**vars(args), "data": args.data or "fashion-mnist"})
    images = load_npz_images(args.npz)
    reference = (load_npz_images(args.npz_ref) if args.npz_ref
                 else np.repeat(_dataset(args.data, "test").images, 3, axis=-1))
    try:
        metrics = inception_metrics(images, reference, args.device or default_device(),
                                    weights=args.inception_weights)
    except InceptionUnavailable as e:
        print(f"\nFID/IS of {args.npz} were not computed: {e}.")
        return {"computed": False, "reason": str(e), "npz": args.npz}
    print(f"\nStandard metrics of {args.npz} ({len(images)} images, {metrics['backend']}; reference "
          f"{args.npz_ref or 'test split of ' + args.data}, {len(reference)} images):")
    print(f"  FID {metrics['fid']:.3f}" + (f"   IS {metrics['is_mean']:.3f} +- {metrics['is_std']:.3f}"
                                            if "is_mean" in metrics else "   (IS: clean-fid does not compute it)"))
    return {"computed": True, "npz": args.npz, "reference": args.npz_ref or f"{args.data} test", **metrics}


def _print_table(r: dict) -> None:
    s = r["settings"]
    ratio = r["frechet_ratio_samples_to_reconstructions"]
    rows = [
        ("samples classified as their class", f"{100 * r['class_accuracy']:.1f}%", "by the evaluation classifier"),
        ("Frechet distance: samples", f"{r['frechet_samples']:.3f}",
         f"{ratio:.2f}x reconstructions" if ratio is not None else "(the reconstructions' distance is 0)"),
        ("Frechet distance: reconstructions", f"{r['frechet_reconstructions']:.3f}", "tokenizer round trip of test images"),
        ("Frechet distance: real train images", f"{r['frechet_real_train']:.3f}", "the floor"),
        ("tokenizer PSNR", f"{r['tokenizer_psnr']:.2f} dB", "reconstructions of the same test images"),
    ]
    acc = r["classifier_test_accuracy"]
    print(f"\nEvaluation of {r['model']} ({r['model_source'] or 'trained'}): {r['num_samples']} samples, "
          f"{r['n_per_class']} per class, cfg {s['cfg']}, top-k {s['top_k']}, top-p {s['top_p']}, "
          f"temperature {s['temperature']}, seed {s['seed']}, {s['dtype']}")
    print(f"classifier: {r['classifier']}" + (f" (test accuracy {100 * acc:.2f}%)" if acc is not None else "")
          + f"; Frechet distances to the features of {r['reference_images']} test images")
    w = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        print(f"  {name:<{w}}  {value:>10}   {note}")
    print("per class: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["class_accuracy_per_class"].items()))
