"""``var edit`` (inpaint or outpaint an image file) and ``var vary`` (a variation of one)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..editing import box_mask, load_mask
from ..images import grid, has_colour, load_image, save_image
from ..pipeline import VARPipeline
from .common import (add_command, add_model_args, add_sampling_args, check_output_files, class_list, class_text,
                     load_pipeline, sampling_kwargs)

log = logging.getLogger("var")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``y0,x0,y1,x1`` (fractions of the height and width) for ``--box``."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected four fractions y0,x0,y1,x1 such as 0.25,0.25,0.75,0.75, "
                                         f"got {text!r}")
    return box


def _add_input_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--image", required=True, help="input image (resized to the model's resolution if needed)")


def _add_output_args(p: argparse.ArgumentParser, panel: str) -> None:
    p.add_argument("--class", dest="label", type=class_text, metavar="ID_OR_NAME",
                   help="class id or name to condition on (default: the null class, unconditional)")
    add_sampling_args(p)
    p.add_argument("--panel", action="store_true", help=f"write {panel} side by side instead of the result alone")
    p.add_argument("--out", required=True, help="PNG to write")


def _label(args: argparse.Namespace, pipe) -> list[int | str] | None:
    """``--class`` split with the model's class names known (a name may hold a comma), or None: unconditional."""
    return None if args.label is None else class_list(args.label, pipe.class_names)


def register(sub) -> None:
    p = add_command(sub, "edit", "inpaint or outpaint an image: regenerate the masked part, keep the rest")
    _add_input_args(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="mask image of the input's size: white is regenerated, black is kept (paint one in any image "
                            "editor, or write one from Python as the README shows)")
    where.add_argument("--box", type=parse_box, metavar="Y0,X0,Y1,X1",
                       help="box to regenerate, as fractions of the height and width")
    p.add_argument("--outpaint", action="store_true",
                   help="invert the mask: keep the masked part and regenerate around it")
    _add_output_args(p, "input | mask | result")
    p.set_defaults(run=run_edit)

    p = add_command(sub, "vary", "a variation of an image: keep its coarse scales, regenerate the details")
    _add_input_args(p)
    p.add_argument("--keep-scales", type=int, required=True,
                   help="coarse scales kept from the image: 0 is a new image, the number of scales the reconstruction")
    _add_output_args(p, "input | result")
    p.set_defaults(run=run_vary)


def _load_input(path: str, pipe: VARPipeline) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input image at the model's resolution and its original (width, height), with a note when it had to
    be resized (and one more when that changed its aspect ratio) or made grey, and then how well the model
    knows it (:meth:`VARPipeline.reconstruction_check`): said before the edit, which keeps no more of it."""
    H, W = pipe.image_hw
    image, (w, h) = load_image(path, pipe.channels, (H, W))
    if (w, h) != (W, H):
        stretched = " (its aspect ratio changed: the model's images are width x height %dx%d)" % (W, H) \
            if w * H != h * W else ""
        log.info("note: resized %s from %dx%d to %dx%d, the model's resolution%s", path, w, h, W, H, stretched)
    greyed = pipe.channels == 1 and has_colour(path)
    if greyed:
        log.info("note: converted %s to grey (luminance): this model takes 1 channel", path)
    image = image.to(pipe.device)
    db, note = pipe.reconstruction_check(image, greyed)
    if note:
        log.warning("%s", note)
    else:
        log.info("the model's tokenizer reconstructs %s at %.1f dB PSNR (what an edit keeps of it is at best that "
                 "close)", path, db)
    return image, (w, h)


def _write(args: argparse.Namespace, pipe: VARPipeline, named_images: dict[str, torch.Tensor]) -> None:
    """The result alone, or with ``--panel`` every image of ``named_images`` side by side, labelled."""
    path = Path(args.out)
    if args.panel:
        tiles = torch.cat([t.expand(1, pipe.channels, -1, -1).cpu() for t in named_images.values()])
        path.parent.mkdir(parents=True, exist_ok=True)
        grid(tiles, nrow=len(tiles), scale=max(1, 64 // max(pipe.image_hw)), col_labels=list(named_images)).save(path)
    else:
        save_image(named_images["result"], path)
    log.info("wrote %s", path)


def run_edit(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    check_output_files(images=("out",), out=args.out)
    pipe = load_pipeline(args)
    image, size = _load_input(args.image, pipe)
    H, W = pipe.image_hw
    if args.mask:
        mask_HW = load_mask(args.mask, size=(H, W), expect=size, invert=args.outpaint)
    else:
        mask_HW = box_mask(H, W, *args.box)
        mask_HW = 1 - mask_HW if args.outpaint else mask_HW
    out = pipe.inpaint(image, mask_HW, class_labels=_label(args, pipe), **sampling)
    _write(args, pipe, {"input": image, "mask": mask_HW[None, None], "result": out.images})
    return 0


def run_vary(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    check_output_files(images=("out",), out=args.out)
    pipe = load_pipeline(args)
    image, _ = _load_input(args.image, pipe)
    out = pipe.vary(image, args.keep_scales, class_labels=_label(args, pipe), **sampling)
    _write(args, pipe, {"input": image, "result": out.images})
    return 0
