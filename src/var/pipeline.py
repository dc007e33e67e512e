"""``VARPipeline``: the tokenizer and the transformer behind one user-facing object.

Images cross this boundary in [0, 1] as (B, channels, H, W); tokens as a list of K LongTensors
(B, h_k * w_k), row-major (scale k is an h_k x w_k map; square models have h_k = w_k). A pipeline saved
with ``save_pretrained`` is a folder holding ``config.json`` and one safetensors file per model; ``from_pretrained`` also takes the name of a bundled model.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import editing, official, precision, quickstart
from .checkpoints import (CONFIG_NAME, FORMAT_VERSION, VAR_WEIGHTS, VQVAE_WEIGHTS, bundled_folder, bundled_models,
                          for_storage, load_module, load_vqvae, read_config)
from .cpu import accelerate, int8_available, int8_copy, plain
from .cpu.streams import split_batch
from .cpu.weight_cache import clear_derived_weights
from .files import write_atomically
from .metrics import psnr
from .sampling import check_batch_size, check_sampling_options, chunk_seed, class_ids, generate, make_generator
from .schedule import Scale
from .transformer import VAR, VARConfig
from .vqvae import VQVAE, VQVAEConfig, square_side

log = logging.getLogger(__name__)

# The reference's settings (its FID settings); a saved model may recommend others (``sampling_defaults``).
REFERENCE_SAMPLING = {"cfg": 1.5, "top_k": 900, "top_p": 0.96, "temperature": 1.0}
# Classes as a pipeline takes them: an id, a class name, a sequence of either, or an integer tensor.
ClassLabels = int | str | Sequence[int | str] | torch.Tensor
# RGB to grey as Pillow's "L" mode does it (ITU-R 601-2 luma), shaped to weigh (B, 3, H, W) images.
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
# An input the tokenizer reconstructs below this PSNR (dB) is one the model does not know: its RMS error is over
# a tenth of the pixel range, which shows, and an edit keeps the input no closer than its reconstruction. The
# bundled model reconstructs 95% of 2,000 Fashion-MNIST test images above 19.4 dB (mean 24.7); photos, about 10.
UNKNOWN_IMAGE_PSNR = 20.0
# torch.compile's backends taken here (torch._dynamo.list_backends() names more): inductor generates fused kernels
# (C++ on the CPU, Triton on GPUs); eager only traces and runs the captured graphs as they are, aot_eager also
# traces the backward pass as inductor would: both check that code traces, in seconds, without building kernels.
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")


def check_compile_backend(backend: str, device: torch.device | str) -> None:
    """ValueError for a backend not in :data:`COMPILE_BACKENDS`; RuntimeError where ``backend`` is inductor on the
    CPU and no C++ compiler is found (inductor builds its CPU kernels with the one ``$CXX`` names, else g++),
    naming what to install, before a first call fails deep inside torch.compile."""
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"unknown compile backend {backend!r}; expected one of {', '.join(COMPILE_BACKENDS)}")
    if backend == "inductor" and torch.device(device).type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None:
            raise RuntimeError(f"torch.compile builds its CPU kernels with a C++ compiler, and {cxx!r} is not on "
                               f"the PATH{' ($CXX)' if os.environ.get('CXX') else ''}: install one (e.g. "
                               "apt-get install g++) or run without compiling")


@dataclass
class VAROutput:
    """What generation and editing return."""

    images: torch.Tensor               # (B, channels, H, W) in [0, 1]
    tokens: list[torch.Tensor]         # K maps, (B, h_k * w_k)
    labels: torch.Tensor               # (B,) the class of each image (num_classes = the null class)


class VARPipeline:
    """Generate, encode, decode and score images with a VQ-VAE tokenizer and a VAR transformer.

    ``pad`` is the border the model adds around the data set's images (28x28 Fashion-MNIST is padded to
    32x32): ``encode`` adds it, and every image this pipeline returns has it cropped off again.
    """

    def __init__(self, vqvae: VQVAE, var: VAR, class_names: Sequence[str] | None = None, pad: int = 0,
                 info: dict | None = None, sampling_defaults: dict | None = None):
        if class_names is not None and len(class_names) != var.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model of {var.num_classes} classes")
        quickstart.pair(var, vqvae)  # checks that they fit; an educational VAR's generate(...) then finds it
        self.vqvae, self.var = vqvae.eval(), var.eval()
        self.class_names = list(class_names) if class_names is not None else None
        self.pad = int(pad)
        self.info = dict(info or {})
        unknown = set(sampling_defaults or {}) - set(REFERENCE_SAMPLING)
        if unknown:
            raise ValueError(f"unknown sampling defaults {sorted(unknown)}; known: {sorted(REFERENCE_SAMPLING)}")
        # What a call uses for an option it is not given: the model's recommendation, else the reference's.
        self.sampling_defaults = {**REFERENCE_SAMPLING, **(sampling_defaults or {})}
        self._dtype_request: tuple[torch.dtype, bool] = (torch.float32, False)   # (asked for, forced)
        self._compiled = False            # generation runs compiled blocks (:meth:`compile`)
        self._int8_var: VAR | None = None  # the transformer with int8 linear layers, made by the first fast call
        self._first_compiled_call = False  # the next generation call is the first compiled one: its time is logged
        self._prepare_for_device()

    # -------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.var.head.weight.device

    @property
    def patch_nums(self) -> tuple[int, ...] | tuple[Scale, ...]:
        """The schedule as configs spell it: ints for square scales, else (h, w) pairs."""
        return tuple(self.var.patch_nums)

    @property
    def scales(self) -> tuple[Scale, ...]:
        """The schedule as (h, w) pairs."""
        return self.var.scales

    @property
    def num_classes(self) -> int:
        return self.var.num_classes

    @property
    def channels(self) -> int:
        return self.vqvae.config.in_channels

    @property
    def image_hw(self) -> Scale:
        """(height, width) of the images this pipeline takes and returns (the model's, minus the padding)."""
        H, W = self.vqvae.config.image_hw
        return H - 2 * self.pad, W - 2 * self.pad

    @property
    def image_size(self) -> int:
        """Side of the (square) images this pipeline takes and returns; ValueError for a non-square model."""
        return square_side(self.image_hw)

    @property
    def compiled(self) -> bool:
        """Whether generation runs the transformer's blocks compiled (:meth:`compile`)."""
        return self._compiled

    @property
    def compute_dtype(self) -> torch.dtype:
        """What the models compute in: float32, or bfloat16 under autocast (the weights stay float32)."""
        return self._compute_dtype

    def use_dtype(self, dtype: str | torch.dtype = torch.float32, force: bool = False) -> "VARPipeline":
        """Compute in ``dtype`` (``"fp32"``, ``"bf16"`` or the torch dtype) from now on. bf16 runs the
        transformer and the tokenizer's encoder and decoder under bf16 autocast (the quantizer's code lookup
        stays float32): faster where the device has bf16, with slightly different results. Where it would be
        emulated (a CPU without AMX or AVX512-BF16), float32 is used with a note, unless ``force``; :meth:`to`
        decides again for the new device. float32 runs without autocast: results as before, bit for bit."""
        self._dtype_request = (precision.resolve_dtype(dtype, precision.PIPELINE_DTYPES), bool(force))
        self._choose_dtype()
        return self

    def _choose_dtype(self) -> None:
        """The compute dtype for this device from the one asked for (:func:`var.precision.choose_dtype`)."""
        requested, force = self._dtype_request
        self._compute_dtype = precision.choose_dtype(requested, self.device, force, precision.PIPELINE_DTYPES)

    def _autocast(self):
        """The models' calls run inside this: autocast to the compute dtype, or nothing in float32."""
        return precision.autocast(self.device, self._compute_dtype)

    def to(self, device: str | torch.device) -> "VARPipeline":
        """Move both models to ``device`` and redo the per-device preparation (CPU layers, dtype)."""
        self.vqvae.to(device)
        self.var.to(device)
        self._prepare_for_device()
        return self

    def _prepare_for_device(self) -> None:
        """On the CPU: channels-last decoder weights (the decoder runs channels-last there, and its convs then
        skip a per-call weight copy) and the CPU layers (:func:`var.cpu.accelerate`) in the decoder and the
        transformer (compiled, the transformer keeps its plain layers: compiled code never calls the CPU
        layers, whose packed weights would only take memory); the encoder keeps its plain layers, so that an
        image makes the same tokens on every device. Other devices: the plain layers (:func:`var.cpu.plain`),
        contiguous weights."""
        on_cpu = self.device.type == "cpu"
        self._int8_var = None  # made again, for the new device or layers, by the next fast call
        self.vqvae.decoder.to(memory_format=torch.channels_last if on_cpu else torch.contiguous_format)
        if on_cpu:
            accelerate(self.vqvae.decoder)
            (plain if self._compiled else accelerate)(self.var)
        else:
            plain(self.vqvae)
            plain(self.var)
        self._choose_dtype()

    def fast_transformer(self) -> VAR:
        """The transformer that ``fast`` calls run: on the CPU in float32, a twin of :attr:`var` sharing its
        weights whose linear layers multiply in int8 (:func:`var.cpu.int8_copy`; the int8 weights, a quarter
        of the float32 ones, are made by the first call and kept); elsewhere (another device, bf16, compiled
        blocks, a PyTorch without int8 on the CPU) :attr:`var` itself, with a note."""
        why = ("the device is not the CPU" if self.device.type != "cpu" else
               "the pipeline computes in bf16" if self._compute_dtype != torch.float32 else
               "the blocks are compiled" if self._compiled else
               "this PyTorch build lacks int8 matrix products on the CPU" if not int8_available() else None)
        if why is not None:
            log.info("fast: the transformer's layers stay as they are (int8 layers run on the CPU in float32, "
                     "and %s)", why)
            return self.var
        if self._int8_var is None:
            self._int8_var = int8_copy(self.var).eval()
        return self._int8_var

    def compile(self, backend: str = "inductor", mode: str | None = None) -> "VARPipeline":
        """Generate with the transformer's blocks compiled by ``torch.compile`` (``backend`` and ``mode`` are
        its options; see :data:`COMPILE_BACKENDS`), in place; returns the pipeline. Every block runs the same
        code, so the blocks share their compiled graphs: the first scale compiles one, the second one with the
        token count and cache length dynamic, which then serves every later scale; a new batch size may compile
        once more. The first call, compiling included, is logged with its time. Images equal the eager ones to
        float rounding (the same tokens, except where a draw falls on a rounding difference).

        Compiled generation runs the batch as one stream (:mod:`var.cpu.streams` splits it on the CPU: compiled
        kernels bring their own threading), the transformer keeps its plain layers (the CPU layers' packed
        weights would go unused), and the tokenizer stays eager: its convolutions are library calls either way,
        and on the CPU compiled code would lose the decoder's Winograd convolutions. Teacher-forced
        :meth:`logits` runs the compiled blocks too (with graphs of its own). The models are changed in place:
        a transformer shared with a trainer runs compiled there as well. ValueError or RuntimeError from
        :func:`check_compile_backend`."""
        check_compile_backend(backend, self.device)
        for block in self.var.blocks:
            block.compile(backend=backend, mode=mode)
        self._compiled = self._first_compiled_call = True
        self._prepare_for_device()
        return self

    # ------------------------------------------------------------------------- construction
    @classmethod
    def from_official(cls, vae: official.PathOrStateDict, var: official.PathOrStateDict,
                      device: str | torch.device | None = None, num_heads: int | None = None,
                      dtype: str | torch.dtype = torch.float32, force_dtype: bool = False,
                      compile: bool = False) -> "VARPipeline":
        """The released checkpoints (paths or state dicts); the configuration is read from the tensors.
        ``dtype`` and ``force_dtype`` are those of :meth:`use_dtype`; ``compile`` calls :meth:`compile`."""
        precision.resolve_dtype(dtype, precision.PIPELINE_DTYPES)  # a bad dtype fails before any loading
        vqvae, model = official.load_official(vae, var, num_heads=num_heads)
        pipe = cls(vqvae, model, info={"source": "official"})
        return pipe._place(device, dtype, force_dtype, compile)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: str | torch.dtype = torch.float32, force_dtype: bool = False,
                        compile: bool = False) -> "VARPipeline":
        """A folder written by :meth:`save_pretrained`, or the name of a bundled model. ``dtype`` and
        ``force_dtype`` are those of :meth:`use_dtype`; ``compile`` calls :meth:`compile`."""
        precision.resolve_dtype(dtype, precision.PIPELINE_DTYPES)  # a bad dtype fails before any loading
        path = Path(name_or_path)
        if not (path / CONFIG_NAME).is_file():
            path = bundled_folder(name_or_path)
            if path is None:
                raise FileNotFoundError(f"{name_or_path!s} is neither a saved pipeline folder (no {CONFIG_NAME}) "
                                        f"nor a bundled model (bundled: {bundled_models() or 'none'})")
        cfg = read_config(path / CONFIG_NAME)
        vqvae = load_module(lambda: VQVAE(VQVAEConfig(**cfg["vqvae"])), path / VQVAE_WEIGHTS, path / CONFIG_NAME,
                            "a VAR pipeline")
        model = load_module(lambda: VAR(VARConfig(**cfg["var"])), path / VAR_WEIGHTS, path / CONFIG_NAME,
                            "a VAR pipeline")
        pipe = cls(vqvae, model, class_names=cfg.get("class_names"), pad=cfg.get("pad", 0), info=cfg.get("info"),
                   sampling_defaults=cfg.get("sampling_defaults"))
        return pipe._place(device, dtype, force_dtype, compile)

    def _place(self, device: str | torch.device | None, dtype: str | torch.dtype, force: bool,
               compile: bool) -> "VARPipeline":
        """Move a new pipeline to ``device`` (if given), then choose its dtype there: on the device it will
        run on, so that a note about the CPU's bf16 support is not given for a model headed for a GPU; then
        compile it if asked."""
        if device is not None:
            self.to(device)
        self.use_dtype(dtype, force)
        return self.compile() if compile else self

    def save_pretrained(self, path: str | os.PathLike, weights_dtype: str | torch.dtype = torch.float32) -> Path:
        """Write ``config.json`` and safetensors weights to the folder ``path`` (created if needed).
        ``weights_dtype`` ``"fp16"`` or ``"bf16"`` stores the floating-point weights at half the size;
        :meth:`from_pretrained` turns them back into float32 (only their rounding stays)."""
        from safetensors.torch import save_file

        store = precision.resolve_dtype(weights_dtype)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = {"format": "var-pipeline", "version": FORMAT_VERSION, "vqvae": self.vqvae.config.to_dict(),
               "var": self.var.config.to_dict(), "class_names": self.class_names, "pad": self.pad, "info": self.info,
               "sampling_defaults": self.sampling_defaults}
        for module, name in ((self.vqvae, VQVAE_WEIGHTS), (self.var, VAR_WEIGHTS)):
            tensors = {k: for_storage(f"{name}: {k}", v, store) for k, v in module.state_dict().items()}
            write_atomically(path / name, lambda tmp: save_file(tensors, tmp))
        write_atomically(path / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(cfg, indent=2) + "\n"))
        return path

    def use_decoder(self, tokenizer: VQVAE | str | os.PathLike) -> "VARPipeline":
        """Decode with ``tokenizer``'s decoder (``post_quant_conv`` and ``decoder``): one fine-tuned by
        ``var train-vae --finetune-decoder``, given as a VQVAE or a folder. Its token side (configuration,
        encoder, ``quant_conv``, codebook, phi) must equal this pipeline's, else the transformer's tokens
        would decode into other images: ValueError names the first weight that differs."""
        if not isinstance(tokenizer, VQVAE):
            tokenizer = load_vqvae(tokenizer)[0]
        differs = self.vqvae.token_side_difference(tokenizer)
        if differs == "configuration":
            raise ValueError(f"the tokenizer's configuration {tokenizer.config.to_dict()} differs from this "
                             f"pipeline's {self.vqvae.config.to_dict()}")
        if differs:
            raise ValueError(f"{differs} differs from this pipeline's: the tokenizer does not make the tokens this "
                             "transformer was trained on (fine-tune the decoder of this pipeline's tokenizer with "
                             "var train-vae --finetune-decoder)")
        for part in VQVAE.DECODER_SIDE:
            getattr(self.vqvae, part).load_state_dict(getattr(tokenizer, part).state_dict())
            # A load into inference tensors (a pipeline made under torch.inference_mode) moves no version
            # counter, so the decoder's cached kernels would not notice the new weights.
            clear_derived_weights(getattr(self.vqvae, part))
        return self

    # ------------------------------------------------------------------------------ checks
    def sampling(self, **given) -> dict:
        """The sampling options of a call: each one given, or else this model's default; checked here,
        before any work, so that a bad value is named instead of failing deep inside sampling."""
        options = {k: self.sampling_defaults.get(k) if v is None else v for k, v in given.items()}
        check_sampling_options(**options)
        return options

    def class_ids(self, class_labels: ClassLabels, allow_null: bool = False) -> torch.Tensor:
        """Class labels as a 1-D LongTensor on the pipeline's device: ids or this model's class names, alone or
        in a flat sequence (:func:`var.sampling.class_ids`); ``allow_null`` also accepts the null class's
        id, ``num_classes`` (what generation takes). ValueError names a bad or unknown label."""
        return class_ids(class_labels, self.num_classes, self.class_names, allow_null).to(self.device)

    def label_name(self, label: int) -> str:
        """How figures and the web demo name a class id: its name, ``class N`` without names, or ``null class``."""
        if label == self.num_classes:
            return "null class"
        return self.class_names[label] if self.class_names else f"class {label}"


    def _labels(self, class_labels: ClassLabels | None, num_samples: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
        if class_labels is None:
            n = 1 if num_samples is None else num_samples
            if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
                raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
            return torch.randint(0, self.num_classes, (n,), generator=generator, device=self.device)
        labels = self.class_ids(class_labels, allow_null=True)
        if num_samples is not None and num_samples != labels.numel():
            raise ValueError(f"num_samples={num_samples} but {labels.numel()} class labels were given")
        return labels

    def _edit_labels(self, class_labels: ClassLabels | None, n: int) -> torch.Tensor:
        """Labels of n edited images: the null class when none is given, one label for all, or n labels."""
        if class_labels is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)
        labels = self.class_ids(class_labels, allow_null=True)
        if labels.numel() == 1:
            labels = labels.repeat(n)
        if labels.numel() != n:
            raise ValueError(f"{labels.numel()} class labels for {n} images (give one label, or one per image)")
        return labels

    def _to_model_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] user images (B, channels, H, W) to padded [-1, 1] model input, with clear errors."""
        converted = self._match_channels(images)
        H, W = self.image_hw
        if not isinstance(converted, torch.Tensor) or converted.ndim != 4 or converted.shape[1] != self.channels:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected images of shape (B, {self.channels}, {H}, {W}) in [0, 1], got {shape}")
        if images.shape[-2:] != (H, W):
            raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]}, this model takes {H}x{W} "
                             "(height x width)")
        bad = int((~torch.isfinite(images)).sum())  # counted in the images as given, before any conversion
        if bad:
            raise ValueError(f"images hold {bad} non-finite values (NaN or inf); expected values in [0, 1]")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"image values must be in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        x = converted.to(self.device, torch.float32)
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=0.0)
        return x * 2 - 1

    def _match_channels(self, images):
        """RGB images for a 1-channel model become their luminance, grey images for an RGB model are
        repeated to 3 channels (with a note); anything else is left for the shape check to report."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] == self.channels:
            return images
        if images.shape[1] == 3 and self.channels == 1:
            log.info("note: converted RGB images to grey (luminance): this model takes 1 channel")
            return (images * LUMA.to(images)).sum(dim=1, keepdim=True)
        if images.shape[1] == 1 and self.channels == 3:
            log.info("note: repeated grey images to 3 channels: this model takes RGB")
            return images.expand(-1, 3, -1, -1)
        return images

    def _to_user_images(self, img_m11: torch.Tensor) -> torch.Tensor:
        img = (img_m11.float() + 1) / 2
        if self.pad:
            img = img[..., self.pad:-self.pad, self.pad:-self.pad]
        return img.clamp(0, 1)

    # --------------------------------------------------------------------------- the calls
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, channels, H, W) in [0, 1] to K token maps (B, h_k * w_k)."""
        x = self._to_model_images(images)
        with self._autocast():
            return self.vqvae.img_to_indices(x)

    @torch.no_grad()
    def decode(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """K token maps to images (B, channels, H, W) in [0, 1]."""
        with self._autocast():
            latent = self.vqvae.quantize.indices_to_latent([t.to(self.device) for t in tokens])
            return self._to_user_images(self._decode_latent(latent))

    @torch.no_grad()
    def reconstruction_check(self, images: torch.Tensor, greyed: bool = False) -> tuple[float, str | None]:
        """Whether this model knows ``images`` (B, channels, H, W) in [0, 1], to say before editing them: the
        mean PSNR (dB) of their reconstruction through the tokenizer, ``decode(encode(images))``, and a note
        for the user when it is below ``UNKNOWN_IMAGE_PSNR`` (else None) that names the data the model was
        trained on (``info["data"]``) and, with ``greyed``, that the input was converted to greyscale."""
        x = self._match_channels(images.to(self.device, torch.float32))  # compared as the model sees them
        db = psnr(self.decode(self.encode(x)).float(), x)
        if db >= UNKNOWN_IMAGE_PSNR:
            return db, None
        data = self.info.get("data")
        trained = f"this model was trained on {data}" if data else \
            "this model's training data is not recorded (info.data of its config.json)"
        grey = "; the image was converted to greyscale: this model takes 1 channel" if greyed else ""
        return db, (f"note: the tokenizer reconstructs the image at {db:.1f} dB PSNR, below {UNKNOWN_IMAGE_PSNR:g} "
                    f"dB: {trained}; the image is outside what it knows: expect the kept part to change too{grey}")

    @torch.no_grad()
    def decode_per_scale(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The image after 1, 2, ..., K scales (the coarse-to-fine progression), each in [0, 1]."""
        tokens = [t.to(self.device) for t in tokens]
        with self._autocast():
            stages = [self._decode_latent(self.vqvae.quantize.indices_to_latent(tokens[:k + 1], upto=k + 1))
                      for k in range(len(tokens))]
        return [self._to_user_images(x) for x in stages]

    def _decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The tokenizer's :meth:`~var.vqvae.VQVAE.decode_latent`, on the CPU over the batch in concurrent
        streams (:mod:`var.cpu.streams`)."""
        return split_batch(self.vqvae.decode_latent, latent)

    @torch.no_grad()
    def logits(self, tokens: Sequence[torch.Tensor], class_labels: ClassLabels) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) of the transformer for these tokens; no label is dropped."""
        tokens = [t.to(self.device) for t in tokens]
        labels = self._labels(class_labels, None, None)
        if labels.numel() != tokens[0].shape[0]:
            raise ValueError(f"{labels.numel()} class labels for {tokens[0].shape[0]} token maps")
        self.var.eval()
        with self._autocast():
            return self.var(labels, self.vqvae.quantize.teacher_forcing_input(tokens))

    def __call__(self, class_labels: ClassLabels | None = None, num_samples: int | None = None,
                 cfg: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 temperature: float | None = None, smooth: bool = False, seed: int | None = None,
                 batch_size: int | None = None, progress: bool = False,
                 on_scale: Callable[[int], None] | None = None, cfg_scales: int | None = None,
                 prune: Sequence[float] | None = None, fast: bool = False) -> VAROutput:
        """Generate images of ``class_labels`` (ids or class names such as ``["Dress"]``; or ``num_samples``
        of uniformly drawn classes; the id ``num_classes`` is the null class: unconditional).

        ``cfg``, ``top_k``, ``top_p`` and ``temperature`` left at None take the model's defaults
        (``sampling_defaults``: saved with the model, else the reference's 1.5 / 900 / 0.96 / 1.0).
        ``cfg_scales`` guides only the first that many scales, ``prune`` leaves fractions of the last scales'
        tokens out of the transformer (both faster, at a cost; None: neither, see :func:`generate`); ``fast``
        runs the transformer's linear layers in int8 (:meth:`fast_transformer`). docs/performance.md has
        what each costs.
        ``seed`` makes the call reproducible (for a given batch size); ``batch_size`` bounds memory by
        generating in chunks; ``on_scale(k)`` is called after each scale k of each chunk (progress reports).
        Returns images in [0, 1] with the token maps of every scale.
        """
        generator = make_generator(seed, self.device)
        labels = self._labels(class_labels, num_samples, generator)
        return self._generate_batched(labels, batch_size, progress, seed, generator=generator, smooth=smooth,
                                      on_scale=on_scale, fast=fast,
                                      **self.sampling(cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature,
                                                    cfg_scales=cfg_scales, prune=prune))

    def inpaint(self, images: torch.Tensor, mask, class_labels: ClassLabels | None = None, *,
                cfg: float | None = None, top_k: int | None = None, top_p: float | None = None,
                temperature: float | None = None, smooth: bool = False, seed: int | None = None,
                batch_size: int | None = None, progress: bool = False,
                on_scale: Callable[[int], None] | None = None, cfg_scales: int | None = None,
                prune: Sequence[float] | None = None, fast: bool = False) -> VAROutput:
        """Regenerate the masked part of ``images`` (B, channels, H, W) in [0, 1] and keep the rest.

        ``mask`` is (H, W) or (B, 1, H, W), 1 where new content is generated and 0 where the image is kept
        (outpainting: 1 outside the region to keep; see :func:`var.editing.box_mask`). At every scale a
        token is kept when more than half of its pixels are (:func:`var.editing.keep_masks_from_mask`).
        Kept tokens are teacher-forced: the image's own until something of it is generated, then fitted
        so that the latent meets the image's at the kept positions (``keep_latent`` of :func:`generate`).
        The model's border (``pad``) follows the mask of the nearest image pixel. Without ``class_labels``
        the null class conditions the model; with them the edit is class-conditional. Sampling options (and
        ``on_scale``) are those of ``__call__``; the seed draws the same numbers.
        """
        tokens = self.encode(images)
        gen_B1HW = editing.check_mask(mask, images.shape[0], self.image_hw).to(self.device)
        keep_masks = editing.keep_masks_from_mask(gen_B1HW, self.patch_nums, self.pad)
        with self._autocast():
            latent = self.vqvae.quantize.indices_to_latent(tokens).float()
        return self._edit(tokens, keep_masks, class_labels, seed, batch_size, progress, keep_latent=latent,
                          smooth=smooth, on_scale=on_scale, fast=fast,
                          **self.sampling(cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature,
                                                    cfg_scales=cfg_scales, prune=prune))

    def vary(self, images: torch.Tensor, keep_scales: int, class_labels: ClassLabels | None = None, *,
             cfg: float | None = None, top_k: int | None = None, top_p: float | None = None,
             temperature: float | None = None, smooth: bool = False, seed: int | None = None,
             batch_size: int | None = None, progress: bool = False,
             on_scale: Callable[[int], None] | None = None, cfg_scales: int | None = None,
             prune: Sequence[float] | None = None, fast: bool = False) -> VAROutput:
        """Variations of ``images``: keep their first ``keep_scales`` token maps and regenerate the finer ones.

        The coarse scales fix the layout, so the results share it with new details. ``keep_scales = 0`` is
        plain generation, ``keep_scales = K`` the reconstruction. Labels and options as in :meth:`inpaint`.
        """
        tokens = self.encode(images)
        keep_masks = editing.keep_masks_for_scales(images.shape[0], self.patch_nums, keep_scales, self.device)
        return self._edit(tokens, keep_masks, class_labels, seed, batch_size, progress, smooth=smooth,
                          on_scale=on_scale, fast=fast,
                          **self.sampling(cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature,
                                                    cfg_scales=cfg_scales, prune=prune))

    def _edit(self, tokens: list[torch.Tensor], keep_masks: list[torch.Tensor], class_labels: ClassLabels | None,
              seed: int | None, batch_size: int | None, progress: bool, keep_latent: torch.Tensor | None = None,
              **sampling) -> VAROutput:
        """Generate with ``tokens`` teacher-forced where ``keep_masks`` say so (shared by the edits)."""
        generator = make_generator(seed, self.device)
        labels = self._edit_labels(class_labels, tokens[0].shape[0])
        return self._generate_batched(labels, batch_size, progress, seed, keep_tokens=tokens, keep_masks=keep_masks,
                                      keep_latent=keep_latent, generator=generator, **sampling)

    def _generate_batched(self, labels: torch.Tensor, batch_size: int | None, progress: bool, seed: int | None,
                          keep_tokens: Sequence[torch.Tensor] | None = None,
                          keep_masks: Sequence[torch.Tensor] | None = None,
                          keep_latent: torch.Tensor | None = None,
                          on_scale: Callable[[int], None] | None = None, fast: bool = False,
                          **sampling) -> VAROutput:
        """Run :func:`generate` over chunks of the batch and decode; editing passes per-scale keeps. Chunk 0
        draws from the call's ``generator``, chunk i from one seeded with :func:`chunk_seed` (``seed`` given)."""
        from tqdm.auto import tqdm

        transformer = self.fast_transformer() if fast else self.var

        check_batch_size(batch_size, allow_none=True)
        n = labels.numel()
        bs = batch_size or n
        images, tokens = [], []
        began = time.perf_counter()
        with tqdm(total=n, desc="generating", unit="img", disable=not progress) as bar:
            for i, s in enumerate(range(0, n, bs)):
                part = slice(s, min(n, s + bs))
                if i and seed is not None:
                    sampling["generator"] = make_generator(chunk_seed(seed, i), self.device)
                keeps = {}
                if keep_masks is not None:
                    keeps = dict(keep_tokens=[t[part] for t in keep_tokens], keep_masks=[m[part] for m in keep_masks],
                                 keep_latent=None if keep_latent is None else keep_latent[part])
                with self._autocast():
                    f_hat, toks = generate(transformer, self.vqvae, labels[part], on_scale=on_scale,
                                           streams=1 if self._compiled else None, **sampling, **keeps)
                    with torch.no_grad():
                        images.append(self._to_user_images(self._decode_latent(f_hat)))
                tokens.append(toks)
                bar.update(part.stop - part.start)
        if self._first_compiled_call:
            self._first_compiled_call = False
            log.info("compiled generation: the first call took %.1f s, compiling included (a new batch size "
                     "may compile again)", time.perf_counter() - began)
        return VAROutput(images=torch.cat(images), tokens=[torch.cat(t) for t in zip(*tokens)], labels=labels)
