"""Options shared by the subcommands that load a model."""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import IMAGE_SUFFIXES
from ..pipeline import VARPipeline, bundled_models
from ..precision import PIPELINE_DTYPES, default_device
from ..sampling import check_sampling_options

log = logging.getLogger("var")
DEFAULT_MODEL = "fashion-mnist"
RELEASED_CHECKPOINTS = "https://huggingface.co/FoundationVision/var"   # the reference's model hub page


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default shown once: appended to its help unless the help already states it, the
    option is a flag (its "default" is only the flag's absence), or there is no default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or action.nargs == 0 or not action.option_strings
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def add_command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` opens with ``summary``, the line ``var --help`` lists."""
    return sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")


def device_name(text: str) -> str:
    """A ``--device`` value that this machine has: cpu, cuda, cuda:N (N below its GPU count) or mps. Checked
    as the options are parsed, so that a missing device is named before a model is loaded."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            why = "this PyTorch is a CPU-only build" if torch.version.cuda is None else \
                f"PyTorch (CUDA {torch.version.cuda}) sees no GPU (none, or no driver)"
            raise argparse.ArgumentTypeError(f"no CUDA device: {why}; use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"no CUDA device {device.index}: this machine has {count} "
                                             f"(cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("no MPS device: mps is Apple silicon's GPU; use --device cpu")
    return text


def add_model_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default=DEFAULT_MODEL,
                       help="bundled model name or a folder written by save_pretrained or var train "
                            "(default: %(default)s)")
    which.add_argument("--official", nargs=2, metavar=("VAE", "VAR"),
                       help="the released ImageNet checkpoints instead of --model, e.g. vae_ch160v4096z32.pth "
                            "var_d16.pth (download: %s)" % RELEASED_CHECKPOINTS)
    p.add_argument("--num-heads", type=positive_int, default=None,
                   help="with --official: the transformer's attention heads, for a checkpoint that does not store "
                        "them (no L2-normalized attention; default: head size 64, as the released models)")
    add_device_arg(p)
    add_dtype_args(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer's blocks (VARPipeline.compile): the first generation compiles, "
                        "its time is logged; inductor needs a C++ compiler on the CPU (docs/performance.md)")


def add_dtype_args(p: argparse.ArgumentParser) -> None:
    """--dtype and --force-dtype of every command that loads a model (:meth:`VARPipeline.use_dtype`)."""
    p.add_argument("--dtype", default="fp32", choices=PIPELINE_DTYPES,
                   help="compute precision: bf16 runs the transformer and the tokenizer under bf16 autocast, "
                        "faster on GPUs with bf16 and on CPUs with AMX or AVX512-BF16, with slightly different "
                        "images than fp32; a CPU without them would emulate it, slower, so there it runs fp32 "
                        "with a note (default: %(default)s)")
    p.add_argument("--force-dtype", action="store_true",
                   help="run --dtype bf16 even where it is emulated (slower than fp32): to measure what bf16 "
                        "does to the results on a machine without bf16")


def random_placeholder() -> VARPipeline:
    """A small randomly initialised model with the bundled model's geometry (used until one is trained)."""
    from ..recipes import fashion_mnist_configs
    from ..transformer import VAR
    from ..vqvae import VQVAE

    vae_cfg, var_cfg, class_names = fashion_mnist_configs()
    torch.manual_seed(0)
    return VARPipeline(VQVAE(vae_cfg), VAR(var_cfg), class_names=class_names, info={"source": "random"})


def load_pipeline(args: argparse.Namespace) -> VARPipeline:
    """The pipeline a command's model options name (a folder, a bundled model or the released checkpoints),
    on its device and in its dtype, compiled with ``--compile``."""
    if args.official:
        missing = [path for path in args.official if not Path(path).is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint not found: {missing[0]} (the released checkpoints, "
                                    f"vae_ch160v4096z32.pth and var_d16.pth ... var_d36.pth, are at "
                                    f"{RELEASED_CHECKPOINTS})")
        pipe = VARPipeline.from_official(*args.official, num_heads=args.num_heads)
    elif args.num_heads is not None:
        raise ValueError("--num-heads is for --official checkpoints: a --model folder stores its heads")
    elif args.model == DEFAULT_MODEL and DEFAULT_MODEL not in bundled_models():
        log.warning("the bundled %s model is not in this installation: using a RANDOMLY INITIALISED model of the "
                    "same shape, so the images are noise, not samples of a trained model", DEFAULT_MODEL)
        pipe = random_placeholder()
    else:
        pipe = VARPipeline.from_pretrained(args.model)
    pipe = pipe.to(args.device or default_device()).use_dtype(args.dtype, args.force_dtype)
    return pipe.compile() if args.compile else pipe


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling options shared by every command that generates tokens."""
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance strength (default: the model's; the reference uses 1.5)")
    p.add_argument("--top-k", type=int, default=None, help="0 disables (default: the model's; reference 900)")
    p.add_argument("--top-p", type=float, default=None, help="0 disables (default: the model's; reference 0.96)")
    p.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature (default: the model's; reference 1.0)")
    add_speed_args(p)
    p.add_argument("--smooth", action="store_true", help="Gumbel-softmax smoothing (looks, not FID)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same images")


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """The training-free speed-ups of generation (``var sample``, ``edit``, ``vary`` and ``eval``)."""
    p.add_argument("--cfg-scales", type=int, default=None, metavar="N",
                   help="guide only the first N scales, the later ones conditional alone: faster, at a measured "
                        "cost (docs/performance.md) (default: every scale)")
    p.add_argument("--prune", type=fractions, default=None, metavar="F,...",
                   help="leave these fractions of the last scales' tokens out of the transformer (the last "
                        "scale's last; e.g. 0.5 halves the last scale's work), filled in from the scale before: "
                        "faster, at a measured cost (docs/performance.md) (default: none)")
    p.add_argument("--fast", action="store_true",
                   help="the transformer's linear layers in int8 (on the CPU, in float32): faster, at a small "
                        "measured cost (docs/performance.md; check it on your model with var eval --fast)")


def speed_kwargs(args: argparse.Namespace) -> dict:
    """The options of :func:`add_speed_args` as keyword arguments of the pipeline's calls."""
    return dict(cfg_scales=args.cfg_scales, prune=args.prune, fast=args.fast)


def fractions(text: str) -> tuple[float, ...]:
    """``--prune``'s comma-separated fractions, each in [0, 1)."""
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions in [0, 1) such as 0.5 or 0.25,0.5, "
                                         f"got {text!r}")
    return values


def class_list(text: str, names: Sequence[str] | None = None) -> list[int | str]:
    """``--classes``/``--class`` values: ids or class names, comma-separated (``0,7`` or ``Dress,Sandal``).
    Names are resolved by the model (:meth:`VARPipeline.class_ids`), which names an unknown one. With the
    model's ``names``, a comma inside one of them (``tench, Tinca tinca``, a class folder's name) does not
    split it: otherwise such a class could not be asked for at all."""
    pieces, known = text.split(","), {n.strip().lower() for n in names or []}
    items, i = [], 0
    while i < len(pieces):
        # The longest run of two or more pieces that spells a class name, else the piece alone.
        j = next((j for j in range(len(pieces), i + 1, -1) if ",".join(pieces[i:j]).strip().lower() in known), i + 1)
        items.append(",".join(pieces[i:j]).strip())
        i = j
    items = [t for t in items if t]
    if not items:
        raise argparse.ArgumentTypeError(f"expected class ids or names such as 0,7 or Dress,Sandal, got {text!r}")
    return [int(t) if t.lstrip("-").isdigit() else t for t in items]


def argument_type(parse):
    """``parse`` as an argparse type: its ValueError becomes the usage error that names the option."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def positive_int(text: str) -> int:
    """An option that counts something: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def class_text(text: str) -> str:
    """A ``--classes`` / ``--class`` value, checked by :func:`class_list` as it is parsed but kept as typed:
    it is split once the model is loaded, so that a comma inside one of its class names does not split it."""
    class_list(text)
    return text


def check_output_folder(option: str, path: str | os.PathLike | None) -> None:
    """ValueError naming ``option`` when ``path`` cannot be made a folder (a file is in the way) or cannot
    be written in, before the long work whose results it is to hold."""
    if path is None:
        return
    path, flag = Path(path), "--" + option.replace("_", "-")
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, expected a folder")
    _check_writable(flag, path, path)


def check_output_files(images: Sequence[str] = (), **paths: str | os.PathLike | None) -> None:
    """ValueError naming the option (``save_npz=...`` is ``--save-npz``) whose output file could not be
    written: a folder of that name, a file where a folder would be, a folder that cannot be written in
    (read-only, no permission), the file of another option (one would overwrite the other), or, for the
    options named in ``images``, a suffix other than an image format's (``IMAGE_SUFFIXES``). Checked before
    long work, so that an hour of sampling is not lost to a typo at the end."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        path, flag = Path(path), "--" + option.replace("_", "-")
        if path.is_dir():
            raise ValueError(f"{flag} {path}: is a folder, expected a file name")
        if option in images and path.suffix.lower() not in IMAGE_SUFFIXES:
            got = repr(path.suffix) if path.suffix else "no suffix"
            raise ValueError(f"{flag} {path}: expected an image file name ending in "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}, got {got}")
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder")
        same = seen.setdefault(path.resolve(), flag)
        if same != flag:
            raise ValueError(f"{flag} {path}: also given as {same}: one file would overwrite the other")
        _check_writable(flag, path, path.parent)


def _check_writable(flag: str, path: Path, folder: Path) -> None:
    """ValueError "cannot write ``path``" unless a file can be made in ``folder`` or, where it does not exist
    yet, in the nearest folder above it that does (where it is to be made). Tried with a temporary file, which
    also sees a read-only file system (root may write anywhere else, so a permission check would not)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ValueError(f"cannot write {path} ({flag}): no file can be made in {existing}: "
                         f"{e.strerror or e}") from e


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The options of :func:`add_sampling_args` as keyword arguments of the pipeline's calls, checked
    before a model is loaded."""
    check_sampling_options(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                           cfg_scales=args.cfg_scales, prune=args.prune)
    return dict(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                smooth=args.smooth, seed=args.seed, **speed_kwargs(args))
