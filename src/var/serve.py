"""``var serve``: a Gradio web demo of one :class:`VARPipeline`: generate, edit (inpaint / outpaint) and vary.

Gradio is an optional extra (``pip install -e ".[web]"``), imported here on first use only, so the core
package never needs it. :class:`Demo` holds the three actions as plain functions of the page's inputs;
:func:`build_app` lays them out as a page whose events are also the API ``/generate``, ``/edit`` and
``/vary`` (``gradio_client``). Requests queue and run ``concurrency`` at a time on the one model (one by
default: on a CPU a second one only slows the first down). Nothing is sent anywhere: analytics are off,
there are no share links, and Gradio serves the page's fonts itself.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import random
import shlex
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .editing import box_mask, cover
from .images import has_colour, load_image, progression_grid, to_rgb_uint8
from .pipeline import VAROutput, VARPipeline
from .precision import dtype_name, emulated_reason

log = logging.getLogger(__name__)

MAX_SIDE = 4096             # pixels: an upload larger on either side is refused before it is decoded
MAX_FILE_SIZE = "20mb"      # Gradio refuses larger uploads outright
MAX_IMAGES = 16             # images per request
MAX_QUEUE = 64              # waiting requests; more are turned away with a message
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PAINTED, BOX = "painted", "box"
INPAINT, OUTPAINT = "inpaint", "outpaint"
# Results are small (28x28 for the bundled model): the page enlarges them without blurring.
BUTTONS = ["download", "fullscreen"]  # no "share": nothing leaves this machine
CSS = (".var-pixels img, .var-pixels canvas { image-rendering: pixelated; }\n"
       ".var-fill img { width: 100%; height: 100%; object-fit: contain; }")


def import_gradio():
    """Gradio, with its analytics turned off before it is imported (it reads the setting on import), unless
    the user's environment says otherwise."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio

    return gradio


def check_upload(path: str) -> None:
    """Refuse a file that is not an image, or one over ``MAX_SIDE`` pixels a side, before decoding it
    (Pillow reads only the header here)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"the upload is not an image (PNG, JPEG, WebP, BMP ...): {e}") from e
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"the image is {w}x{h} pixels; the limit is {MAX_SIDE} on either side")


def to_pil(images: torch.Tensor) -> Image.Image:
    """The first image of (B, C, H, W) (or one (H, W) mask) in [0, 1] as an RGB PIL image."""
    while images.ndim < 4:
        images = images[None]
    return Image.fromarray(to_rgb_uint8(images[:1])[0])


def _no_progress(fraction: float, desc: str | None = None) -> None:
    """What the actions report progress to when called outside Gradio."""


class Demo:
    """The page's three actions on one pipeline, as functions of the page's inputs (Gradio calls them,
    tests can too). Bad input raises ValueError naming the bad value; :func:`build_app` shows it in the page.

    ``model_args`` are the command-line options that load the same model (``--model NAME`` or ``--official
    VAE VAR``): every result comes with the ``var`` command that reproduces it. The pipeline's own compute
    dtype (:meth:`VARPipeline.use_dtype`) is what the demo runs in.
    """

    def __init__(self, pipe: VARPipeline, model_args: Sequence[str] = ("--model", "fashion-mnist")):
        self.pipe, self.model_args = pipe, list(model_args)
        # Dropdown entries: every class by name, then the null class (unconditional).
        self.classes = [pipe.label_name(i) for i in range(pipe.num_classes + 1)]

    # ----------------------------------------------------------------------------- inputs
    def class_id(self, choice: str) -> int:
        """A dropdown entry (a class name, ``class N`` or ``null class``) as a class id."""
        if choice not in self.classes:
            shown = self.classes if len(self.classes) <= 12 else self.classes[:5] + ["..."] + self.classes[-2:]
            raise ValueError(f"unknown class {choice!r}; expected one of {shown}")
        return self.classes.index(choice)

    def read_image(self, path: str | None) -> tuple[torch.Tensor, str | None]:
        """An uploaded image at the model's resolution (1, C, S, S), and the note to show with the result when
        the model does not know it (:meth:`VARPipeline.reconstruction_check`; it says when the image was made
        grey), else None."""
        if not path:
            raise ValueError("no image: upload one first")
        check_upload(path)
        image, _ = load_image(path, self.pipe.channels, self.pipe.image_size)
        image = image.to(self.pipe.device)
        db, note = self.pipe.reconstruction_check(image, greyed=self.pipe.channels == 1 and has_colour(path))
        log.info("an upload the tokenizer reconstructs at %.1f dB PSNR%s", db,
                 " (not known to the model)" if note else "")
        return image, note

    def painted_mask(self, layers: Sequence[str], invert: bool = False) -> torch.Tensor:
        """The brush strokes of the editor's layers (any pixel not transparent) as an (S, S) 0/1 mask; a
        model pixel is 1 when any upload pixel it covers is painted, or with ``invert`` (outpainting: the
        strokes are kept) when any is not. Inverted before the resize, as :func:`var.editing.load_mask` does,
        so that an upload pixel to regenerate is never lost to it either way."""
        S = self.pipe.image_size
        painted = None
        for layer in layers:
            with Image.open(layer) as im:
                alpha = torch.from_numpy(np.asarray(im.convert("RGBA"))[..., 3] > 0)
            if painted is not None and alpha.shape != painted.shape:  # the editor's layers share the canvas size
                alpha = F.interpolate(alpha[None, None].float(), size=painted.shape, mode="nearest")[0, 0] > 0
            painted = alpha if painted is None else painted | alpha
        if painted is None:
            return torch.full((S, S), float(invert))
        return cover((~painted if invert else painted)[None, None], S)[0, 0]

    def sampling(self, cfg: float | None, top_k: float | None, top_p: float | None, temperature: float | None,
                 smooth: bool, seed: float | None, fast: bool = False) -> dict:
        """The sampling options of a request, checked and completed with the model's defaults, and ``fast``
        (int8 layers); a seed below 0 (or none) draws one, so that every result has a seed to reproduce it with."""
        options = self.pipe.sampling(cfg=cfg, top_k=_json_int(top_k), top_p=top_p, temperature=temperature)
        seed = None if seed is None else _whole(seed, "seed")
        if seed is None or seed < 0:
            seed = random.randrange(2 ** 31)
        return {**options, "smooth": bool(smooth), "seed": seed, "fast": bool(fast)}

    # --------------------------------------------------------------------------- the actions
    def generate(self, class_name: str, num_images: float, cfg: float | None = None, top_k: float | None = None,
                 top_p: float | None = None, temperature: float | None = None, smooth: bool = False,
                 seed: float | None = 0, fast: bool = False, progress: Callable = _no_progress):
        """Images of one class: (gallery of (image, caption), the first one's coarse-to-fine figure,
        the seed and the command that reproduces them, the tokens for :meth:`progression`)."""
        label, n = self.class_id(class_name), _count(num_images, "num_images")
        options = self.sampling(cfg, top_k, top_p, temperature, smooth, seed, fast)
        out = self._run(self.pipe, progress, class_labels=[label] * n, **options)
        gallery = [(to_pil(img), f"{class_name}, seed {options['seed']}, {i + 1} of {n}")
                   for i, img in enumerate(out.images)]
        command = self.command("sample", options, "--classes", str(label), "--per-class", str(n))
        return gallery, self.progression(out, 0), self.info(options, command), out

    def progression(self, out: VAROutput | None, index: int) -> Image.Image | None:
        """The image after each scale, for result ``index`` of a generation."""
        if out is None:
            return None
        stages = self.pipe.decode_per_scale([t[index:index + 1] for t in out.tokens])
        scale = max(1, 128 // self.pipe.image_size)
        return progression_grid(stages, self.pipe.patch_nums, [self.pipe.label_name(int(out.labels[index]))], scale)

    def edit(self, editor: dict | None, region: str = PAINTED, y0: float = 0.25, x0: float = 0.25, y1: float = 0.75,
             x1: float = 0.75, operation: str = INPAINT, class_name: str | None = None, cfg: float | None = None,
             top_k: float | None = None, top_p: float | None = None, temperature: float | None = None,
             smooth: bool = False, seed: float | None = 0, fast: bool = False,
             progress: Callable = _no_progress):
        """Inpaint (regenerate the region) or outpaint (keep it, regenerate around it) the editor's image,
        optionally towards a class. The region is the editor's brush strokes or the box (y0, x0, y1, x1 as
        fractions of the height and width). Returns (input, mask, result) at the model's resolution and the seed."""
        image, note = self.read_image((editor or {}).get("background"))
        S = self.pipe.image_size
        if operation not in (INPAINT, OUTPAINT):
            raise ValueError(f"unknown operation {operation!r}; expected {INPAINT!r} or {OUTPAINT!r}")
        if region == BOX:
            mask = box_mask(S, S, y0, x0, y1, x1)
            mask = 1 - mask if operation == OUTPAINT else mask
        elif region == PAINTED:
            mask = self.painted_mask((editor or {}).get("layers") or [], invert=operation == OUTPAINT)
        else:
            raise ValueError(f"unknown region {region!r}; expected {PAINTED!r} or {BOX!r}")
        if operation == OUTPAINT and mask.all():  # else the upload is ignored: a plain generation
            raise ValueError(f"nothing to keep: the {region} region is empty or covers no whole pixel of the "
                             f"model's {S}x{S} image: paint the part to keep, or choose a box")
        if not mask.any():
            where = "is empty: paint the part to regenerate, or choose a box" if operation == INPAINT else \
                "covers the whole image: nothing is left to regenerate around it"
            raise ValueError(f"nothing to regenerate: the {region} region {where}")
        label = self.class_id(class_name or self.classes[-1])
        options = self.sampling(cfg, top_k, top_p, temperature, smooth, seed, fast)
        out = self._run(self.pipe.inpaint, progress, images=image, mask=mask, class_labels=label, **options)
        command = self.command("edit", options, "--image", "input.png", "--mask", "mask.png", *self._class_arg(label),
                               "--out", "result.png")   # var edit requires --out
        return to_pil(image), to_pil(mask), to_pil(out.images), self.info(options, command, note)

    def vary(self, image: str | None, keep_scales: float, num_images: float = 1, class_name: str | None = None,
             cfg: float | None = None, top_k: float | None = None, top_p: float | None = None,
             temperature: float | None = None, smooth: bool = False, seed: float | None = 0, fast: bool = False,
             progress: Callable = _no_progress):
        """Variations of an image that keep its first ``keep_scales`` scales; variation i uses seed + i,
        so each one is reproducible on its own with ``var vary``."""
        (image, note), n = self.read_image(image), _count(num_images, "num_images")
        keep = _whole(keep_scales, "keep_scales")
        label = self.class_id(class_name or self.classes[-1])
        options = self.sampling(cfg, top_k, top_p, temperature, smooth, seed, fast)
        gallery = []
        for i in range(n):
            out = self._run(self.pipe.vary, progress, (i, n), images=image, keep_scales=keep,
                            class_labels=label, **{**options, "seed": options["seed"] + i})
            gallery.append((to_pil(out.images), f"seed {options['seed'] + i}"))
        command = self.command("vary", options, "--image", "input.png", "--keep-scales", str(keep),
                               *self._class_arg(label), "--out", "result.png")   # var vary requires --out
        return gallery, self.info(options, command, note)

    # --------------------------------------------------------------------------- plumbing
    def _run(self, call: Callable[..., VAROutput], progress: Callable, part: tuple[int, int] = (0, 1),
             **kwargs) -> VAROutput:
        """One pipeline call, reporting each scale to ``progress`` (part i of n)."""
        i, n = part
        K = len(self.pipe.patch_nums)

        def on_scale(k: int) -> None:
            p = self.pipe.patch_nums[k]
            prefix = f"image {i + 1} of {n}: " if n > 1 else ""
            progress((i * K + k + 1) / (n * K), desc=f"{prefix}scale {k + 1} of {K} ({p}x{p} tokens)")

        return call(on_scale=on_scale, **kwargs)

    def _class_arg(self, label: int) -> list[str]:
        """``--class ID`` for a conditional edit; nothing for the null class (the command's default)."""
        return [] if label == self.pipe.num_classes else ["--class", str(label)]

    def command(self, name: str, options: dict, *args: str) -> str:
        """The ``var`` command line that makes the same images (with the same model, device and compute dtype)."""
        parts = ["var", name, *self.model_args, *args, "--cfg", str(options["cfg"]), "--top-k", str(options["top_k"]),
                 "--top-p", str(options["top_p"]), "--temperature", str(options["temperature"]),
                 "--seed", str(options["seed"])] + (["--smooth"] if options["smooth"] else []) + \
            (["--fast"] if options["fast"] else []) + \
            ["--device", str(self.pipe.device)] + self._dtype_args()
        # --device always: a seed's random numbers are the device's own (a CPU's and a GPU's differ), and the
        # command's default device is the machine's (a GPU where there is one), not the one the demo ran on.
        return shlex.join(parts)

    def _dtype_args(self) -> list[str]:
        """``--dtype`` of a model that computes in other than fp32, with ``--force-dtype`` where this machine
        emulates that dtype (so the server was forced into it, and the command must be too)."""
        dtype, device = self.pipe.compute_dtype, self.pipe.device
        if dtype == torch.float32:
            return []
        return ["--dtype", dtype_name(dtype)] + (["--force-dtype"] if emulated_reason(dtype, device) else [])

    def info(self, options: dict, command: str, note: str | None = None) -> str:
        """The line shown under every result: its seed and the command that makes it again, then ``note``
        (an input the model does not know) in a paragraph of its own."""
        return f"**seed {options['seed']}**. Reproduce: `{command}`" + (f"\n\n{note}" if note else "")


def _json_int(value):
    """JSON carries whole numbers as 3.0: those become ints; anything else is left for a check to name."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole(value, name: str) -> int:
    """An integer input (``name`` is its name in error messages)."""
    value = _json_int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _count(value, name: str) -> int:
    """A number of images: an integer in [1, MAX_IMAGES]."""
    n = _whole(value, name)
    if not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"{name} must be in [1, {MAX_IMAGES}], got {n}")
    return n


# ------------------------------------------------------------------------------------ the page
def _page_action(gr, fn: Callable) -> Callable:
    """A :class:`Demo` action for Gradio: its ValueErrors become gr.Error (Gradio shows the message in the
    page and returns it to API clients, and goes on serving), and its ``progress`` parameter gets Gradio's
    progress bar (Gradio passes one where a parameter's default is a gr.Progress)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            log.info("refused a request: %s", e)
            raise gr.Error(str(e), print_exception=False) from e

    signature = inspect.signature(fn)
    wrapper.__signature__ = signature.replace(parameters=[
        p.replace(default=gr.Progress()) if p.name == "progress" else p for p in signature.parameters.values()])
    return wrapper


def _checked_uploads(gr, component):
    """``component`` (an image or image editor input) with its uploads checked by :func:`check_upload`
    before Gradio decodes them, so that a bad file gets our message instead of Gradio's traceback.

    Gradio converts an upload to the component's mode (the editor's is RGBA, for the brush layers' alpha)
    and saves the copy in the format its file name says; a JPEG holds no alpha, so the copy is saved as PNG
    (lossless, any mode)."""
    decode = component.preprocess

    def preprocess(payload):
        files = [payload] if hasattr(payload, "path") else \
            [getattr(payload, "background", None), *(getattr(payload, "layers", None) or [])]
        try:
            for f in files:
                if getattr(f, "path", None):
                    check_upload(f.path)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from e
        for f in files:
            if getattr(f, "orig_name", None):
                f.orig_name = os.path.splitext(f.orig_name)[0] + ".png"
        return decode(payload)

    component.preprocess = preprocess
    return component


def _sampling_controls(gr, demo: Demo) -> list:
    """cfg, top-k, top-p, temperature and Gumbel smoothing, at the model's defaults, then the seed and the
    ``fast`` speed-ups."""
    d = demo.pipe.sampling_defaults
    with gr.Accordion("Sampling", open=False):
        with gr.Row():
            controls = [gr.Number(d["cfg"], label="cfg (guidance; 0 = off)", minimum=0),
                        gr.Number(d["top_k"], label="top-k (0 = all)", precision=0, minimum=0),
                        gr.Number(d["top_p"], label="top-p (0 = all)", minimum=0, maximum=1),
                        gr.Number(d["temperature"], label="temperature", minimum=0)]
        controls.append(gr.Checkbox(False, label="Gumbel smoothing (looks, not FID)"))
    controls.append(gr.Number(0, label="seed (-1 draws one)", precision=0))
    controls.append(gr.Checkbox(False, label="fast (int8 layers on the CPU: faster, at a small cost)"))
    return controls


def _class_dropdown(gr, demo: Demo, default: str, elem_id: str):
    return gr.Dropdown(demo.classes, value=default, label="class", elem_id=elem_id)


def build_app(pipe: VARPipeline, model_args: Sequence[str] = ("--model", "fashion-mnist"),
              concurrency: int = 1, title: str = "VAR: next-scale prediction") -> Any:
    """The demo page (a ``gr.Blocks``) for ``pipe``: tabs Generate, Edit and Vary, whose buttons are also
    the API endpoints ``/generate``, ``/edit`` and ``/vary``. All three share one queue slot group on the
    model, so at most ``concurrency`` requests run at once. Launch it with :func:`launch`."""
    gr = import_gradio()
    demo = Demo(pipe, model_args)
    K, S = len(pipe.patch_nums), pipe.image_size
    run = dict(concurrency_limit=concurrency, concurrency_id="model")

    def show_progression(out: VAROutput | None, evt) -> Image.Image | None:
        return demo.progression(out, evt.index)

    show_progression.__annotations__["evt"] = gr.SelectData  # how Gradio knows to pass the clicked image

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## {title}\n{_describe(pipe, model_args)}")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    gen_class = _class_dropdown(gr, demo, demo.classes[0], "generate-class")
                    gen_n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images")
                    gen_sampling = _sampling_controls(gr, demo)
                    gen_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column(scale=2):
                    gen_gallery = gr.Gallery(label="results (click one: its coarse-to-fine progression is shown below)",
                                             format="png", columns=4, height=300, object_fit="contain", buttons=BUTTONS,
                                             elem_id="generate-gallery", elem_classes="var-pixels")
                    gen_progression = gr.Image(label=f"coarse to fine: after each of the {K} scales", format="png",
                                               show_label=False, buttons=BUTTONS,
                                               elem_id="generate-progression", elem_classes="var-pixels")
                    gen_info = gr.Markdown(label="seed", elem_id="generate-info")
            last = gr.State(None)
            gen_button.click(_page_action(gr, demo.generate), [gen_class, gen_n, *gen_sampling],
                             [gen_gallery, gen_progression, gen_info, last], api_name="generate", **run)
            gen_gallery.select(show_progression, [last], gen_progression,
                               api_visibility="private", **run)

        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column(scale=1):
                    editor = _checked_uploads(gr, gr.ImageEditor(label="image: paint the region with the brush", type="filepath",
                                            format="png", sources=("upload", "clipboard"), layers=False,
                                            brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed", default_size=max(1, S // 14)),
                                            transforms=(), elem_id="edit-editor", elem_classes="var-pixels"))
                    region = gr.Radio([PAINTED, BOX], value=PAINTED, label="region", elem_id="edit-region")
                    with gr.Row():
                        box = [gr.Slider(0, 1, value=v, step=0.01, label=f"box {n}", elem_id=f"edit-box-{n}")
                               for n, v in (("top", 0.25), ("left", 0.25), ("bottom", 0.75), ("right", 0.75))]
                    operation = gr.Radio([INPAINT, OUTPAINT], value=INPAINT, elem_id="edit-operation",
                                         label="inpaint regenerates the region; outpaint keeps it and "
                                               "regenerates around it")
                    edit_class = _class_dropdown(gr, demo, demo.classes[-1], "edit-class")
                    edit_sampling = _sampling_controls(gr, demo)
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column(scale=2):
                    with gr.Row():
                        edit_out = [gr.Image(label=name, format="png", elem_id=f"edit-{name}", buttons=BUTTONS, height=240,
                                             elem_classes=["var-pixels", "var-fill"]) for name in ("input", "mask", "result")]
                    edit_info = gr.Markdown(label="seed", elem_id="edit-info")
            edit_button.click(_page_action(gr, demo.edit), [editor, region, *box, operation, edit_class, *edit_sampling],
                              [*edit_out, edit_info], api_name="edit", **run)

        with gr.Tab("Vary"):
            with gr.Row():
                with gr.Column(scale=1):
                    vary_image = _checked_uploads(gr, gr.Image(label="image", type="filepath", image_mode=None, format="png",
                                          sources=("upload", "clipboard"), elem_id="vary-image",
                                          elem_classes="var-pixels"))
                    keep = gr.Slider(0, K, value=min(3, K), step=1, elem_id="vary-keep",
                                     label=f"scales kept (of {K}: {', '.join(f'{p}x{p}' for p in pipe.patch_nums)})")
                    vary_n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of variations")
                    vary_class = _class_dropdown(gr, demo, demo.classes[-1], "vary-class")
                    vary_sampling = _sampling_controls(gr, demo)
                    vary_button = gr.Button("Vary", variant="primary", elem_id="vary-button")
                with gr.Column(scale=2):
                    vary_gallery = gr.Gallery(label="variations", format="png", columns=4, height=300, buttons=BUTTONS,
                                              object_fit="contain", elem_id="vary-gallery", elem_classes="var-pixels")
                    vary_info = gr.Markdown(label="seed", elem_id="vary-info")
            vary_button.click(_page_action(gr, demo.vary), [vary_image, keep, vary_n, vary_class, *vary_sampling],
                              [vary_gallery, vary_info], api_name="vary", **run)
    app.queue(max_size=MAX_QUEUE, default_concurrency_limit=concurrency)
    return app


def _describe(pipe: VARPipeline, model_args: Sequence[str]) -> str:
    """One line about the model: where it comes from, its resolution, classes and scales."""
    return (f"Model `{' '.join(model_args)}`: {pipe.image_size}x{pipe.image_size} px, {pipe.num_classes} classes, "
            f"{len(pipe.patch_nums)} scales ({', '.join(f'{p}x{p}' for p in pipe.patch_nums)}). "
            f"Images are made coarse to fine, one transformer pass per scale. Every result can be downloaded "
            f"as PNG; uploads up to {MAX_SIDE} px a side, {MAX_FILE_SIZE}.")


def launch(app: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Serve ``app`` on ``host:port`` (no share link, errors shown in the page, uploads over
    ``MAX_FILE_SIZE`` refused) and return its local URL; ``block=False`` returns once the server listens
    (``app.block_thread()`` then waits for Ctrl-C, as ``block=True`` does). OSError when it cannot listen
    there (the port is taken, or the address is not this machine's), before anything is said about it."""
    gr = import_gradio()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True,
                           max_file_size=MAX_FILE_SIZE, prevent_thread_lock=True, ssr_mode=False,
                           mcp_server=False, pwa=False, enable_monitoring=False, footer_links=["api"],
                           theme=gr.themes.Default(), css=CSS)
    if host not in LOCAL_HOSTS:
        log.warning("serving on %s: anyone who can reach this machine on port %d can use the demo "
                    "(there is no login); --host 127.0.0.1 keeps it local", host, port)
    if block:
        app.block_thread()
    return url
