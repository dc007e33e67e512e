"""Next-scale generation: classifier-free guidance, top-k / top-p sampling, optional Gumbel smoothing.

One transformer pass per scale. Keys and values of earlier scales sit in a pre-allocated cache, so each
pass runs only the new scale's tokens. ``keep_tokens`` / ``keep_masks`` teacher-force chosen tokens at
every scale, and ``keep_latent`` re-fits them to the generated content: all that zero-shot editing
(inpainting, outpainting, variations) needs.

Shape letters: B batch, l one scale's tokens, V vocabulary, C width, Cv latent channels.
"""
from __future__ import annotations

import itertools
import math
from numbers import Integral, Real
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cpu.streams import Streams, stream_count
from .quantizer import MultiScaleQuantizer
from .transformer import VAR, KVCache
from .vqvae import VQVAE


def check_sampling_options(cfg: float | None = None, top_k: int | None = None, top_p: float | None = None,
                           temperature: float | None = None, cfg_scales: int | None = None,
                           prune: Sequence[float] | None = None) -> None:
    """Raise ValueError naming the first bad option and its valid range; None means "not given" (the
    pipeline and the command line check their options here before any work starts)."""
    if cfg is not None and not (_is_real(cfg) and math.isfinite(cfg)):
        raise ValueError(f"cfg must be a finite number (0 disables guidance), got {cfg!r}")
    if top_k is not None and not (isinstance(top_k, Integral) and not isinstance(top_k, bool) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 keeps every token), got {top_k!r}")
    if top_p is not None and not (_is_real(top_p) and 0 <= top_p <= 1):
        raise ValueError(f"top_p must be in [0, 1] (0 or 1 keeps every token), got {top_p!r}")
    if temperature is not None and not (_is_real(temperature) and 0 < temperature < math.inf):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if cfg_scales is not None and (isinstance(cfg_scales, bool) or not isinstance(cfg_scales, Integral)
                                   or cfg_scales < 0):
        raise ValueError(f"cfg_scales must be an integer >= 0 (guidance at the first cfg_scales scales only; "
                         f"None: at all), got {cfg_scales!r}")
    if prune is not None and (isinstance(prune, (str, bytes)) or not hasattr(prune, "__iter__")
                              or not all(_is_real(f) and 0 <= f < 1 for f in prune)):
        raise ValueError(f"prune must be a sequence of fractions in [0, 1), one per last scale (e.g. (0.5, 0.75): "
                         f"a half of the second-to-last scale's tokens and three quarters of the last's left "
                         f"out), got {prune!r}")


def _is_real(x) -> bool:
    """A plain real number (bools are ints to Python, not sampling options)."""
    return isinstance(x, Real) and not isinstance(x, bool)


def check_finite_logits(logits: torch.Tensor, k: int, hw: tuple[int, int]) -> None:
    """Stop with a clear message where the model's logits hold NaN or inf (sampling cannot draw from them).
    The smallest and largest logit are NaN or infinite exactly when one logit is: one pass over the logits."""
    lowest, highest = torch.aminmax(logits)
    if not (torch.isfinite(lowest) and torch.isfinite(highest)):
        raise ValueError(f"the model produced non-finite logits (NaN or inf) at scale {k} ({hw[0]}x{hw[1]} tokens): "
                         "its weights or inputs hold NaN or inf")


def class_ids(class_labels, num_classes: int, class_names: Sequence[str] | None = None,
              allow_null: bool = False) -> torch.Tensor:
    """Class labels as a 1-D LongTensor (on the CPU): ids (integers; a float only when whole, e.g. 3.0 from
    JSON; a 0-D or 1-D tensor or array) or ``class_names`` (matched case-insensitively), alone or in a flat
    sequence, one label per image; each in [0, num_classes), or num_classes (the null class) with
    ``allow_null``. ValueError names a bad or unknown label, a nested sequence and an array of more than one
    dimension (flattening them would silently make more images than rows)."""
    if hasattr(class_labels, "ndim") and hasattr(class_labels, "tolist"):  # a tensor or a numpy array
        if class_labels.ndim > 1:
            raise ValueError(f"class_labels must be one label or a 1-D sequence of labels, got an array of "
                             f"shape {tuple(class_labels.shape)}")
        items = class_labels.reshape(-1).tolist()
    else:
        items = class_labels
    if isinstance(items, (str, int, float)) or not hasattr(items, "__iter__"):
        items = [items]
    items = list(items)
    nested = next((c for c in items if isinstance(c, (list, tuple)) or getattr(c, "ndim", 0) > 0), None)
    if nested is not None:
        raise ValueError(f"class_labels must be one label or a 1-D sequence of labels, got a nested sequence "
                         f"holding {nested!r}")
    if not items:
        raise ValueError("class_labels is empty: give at least one class id or name")
    lookup = {name.lower(): i for i, name in enumerate(class_names or [])}
    ids = [_class_id(c, lookup, class_names, num_classes) for c in items]
    hi = num_classes + (1 if allow_null else 0)
    if not all(0 <= i < hi for i in ids):
        null = f" or {num_classes} (the null class)" if allow_null else ""
        raise ValueError(f"class labels must be in [0, {num_classes}){null}, got {ids}")
    return torch.tensor(ids, dtype=torch.long)


def _class_id(label, lookup: dict[str, int], class_names: Sequence[str] | None, num_classes: int) -> int:
    """One label as a class id: an integer (a float only when whole) or a class name of ``lookup``."""
    if isinstance(label, str):
        if label.strip().lower() not in lookup:
            if not class_names:
                raise ValueError(f"unknown class {label!r}: this model has no class names; expected an id in "
                                 f"[0, {num_classes})")
            raise ValueError(f"unknown class {label!r}; expected one of {list(class_names)} or an id in "
                             f"[0, {num_classes})")
        return lookup[label.strip().lower()]
    whole = isinstance(label, Integral) or (isinstance(label, Real) and float(label).is_integer())
    if isinstance(label, bool) or not whole:
        raise ValueError(f"class_labels must hold integers or class names, got {label!r}")
    return int(label)


def check_batch_size(batch_size, allow_none: bool = False) -> None:
    """ValueError unless ``batch_size`` is an integer >= 1 (or, with ``allow_none``, None: everything at once);
    1.5, True and 0 are refused, not rounded."""
    if batch_size is None and allow_none:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        none = " (or None: the whole batch at once)" if allow_none else ""
        raise ValueError(f"batch_size must be an integer >= 1{none}, got {batch_size!r}")


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """The one random stream of a generation call: seeded when ``seed`` is given, so calls repeat. ValueError
    names a seed that is not an integer in [-2**63, 2**64) (a float such as 1.5 is refused, not truncated)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    # torch's own errors name no seed ("Overflow when unpacking long long"), and int() would truncate 1.5 to 1.
    elif isinstance(seed, bool) or not isinstance(seed, Integral) or not -2 ** 63 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    else:
        generator.manual_seed(int(seed))
    return generator


def chunk_seed(seed: int, i: int) -> int:
    """The seed of chunk ``i`` of a call seeded with ``seed`` (the one rule of ``VARPipeline`` calls, ``var
    sample`` and ``var eval``): chunk 0 takes ``seed`` itself, so a call of one chunk is seeded as given; later
    chunks a number drawn from (seed, i) by numpy's SeedSequence, so that calls with nearby seeds share no
    chunk."""
    if i == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2 ** 64, i]).generate_state(1, np.uint64)[0] >> 1)


def filter_logits(logits_BlV: torch.Tensor, top_k: int = 0,
                  top_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Candidates left by top-k then top-p: (logits, vocabulary ids), both (B, l, k), best first; ids
    None, and the logits as they are, where neither option cuts anything (no sort of the vocabulary).

    Top-p drops a candidate when the candidates more likely than it already hold at least ``top_p`` of
    the probability (the reference's rule, stated on the k sorted candidates rather than on a sort of
    the whole vocabulary); the most likely token is never dropped. Dropped entries get -inf.
    """
    V = logits_BlV.shape[-1]
    nucleus = 0 < top_p < 1
    if 0 < top_k < V:
        vals, ids = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=True)
    elif nucleus:
        vals, ids = logits_BlV.sort(dim=-1, descending=True)
    else:
        return logits_BlV, None
    if nucleus:
        probs = vals.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = mass_before >= top_p
        drop[..., 0] = False
        vals = vals.masked_fill(drop, -torch.inf)
    return vals, ids


def draw(vals: torch.Tensor, ids: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per position among the candidates of :func:`filter_logits`: vocabulary ids (B, l).

    By the inverse of the cumulative distribution: one uniform number per position, where
    ``torch.multinomial`` draws an exponential per candidate (40% of a CPU generation at 4,096 codes).
    """
    k = vals.shape[-1]
    if k == 1:  # greedy: no random number is consumed
        return ids[..., 0] if ids is not None else torch.zeros(vals.shape[:-1], dtype=torch.long, device=vals.device)
    logits = vals.float()
    top = logits.amax(dim=-1, keepdim=True)
    # NaN, +inf or an all -inf row makes the cdf NaN and the search return an id past the vocabulary: refuse.
    if not torch.isfinite(top).all():
        bad = top[~torch.isfinite(top)].flatten()[0].item()
        raise ValueError(f"cannot draw from logits whose largest value is {bad} (expected a finite number at every "
                         "position): NaN, -inf for every candidate, or +inf from a temperature or cfg so extreme "
                         "that float32 overflows")
    cdf = (logits - top).exp_().cumsum_(dim=-1)  # unnormalised: the best weighs 1
    total = cdf[..., -1:].contiguous()
    u = torch.rand(total.shape, generator=generator, device=cdf.device, dtype=cdf.dtype)
    choice = torch.searchsorted(cdf, u * total, right=True)  # the first candidate whose cdf passes u * total
    # u * total can round up to total itself: then take the last candidate with any weight.
    choice = torch.minimum(choice, torch.searchsorted(cdf, total))
    return choice[..., 0] if ids is None else ids.gather(-1, choice)[..., 0]


def sample_tokens(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Top-k / top-p filtering then one draw per position: ids (B, l)."""
    return draw(*filter_logits(logits_BlV, top_k, top_p), generator=generator)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Soft Gumbel-softmax sample drawn with ``generator`` (torch's own version takes no generator)."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


def _scatter_filtered(logits_BlV: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """Full-vocabulary logits with everything but the kept candidates at -inf."""
    if ids is None:  # nothing was cut
        return vals
    return torch.full_like(logits_BlV, -torch.inf).scatter_(-1, ids, vals)


def generate(var: VAR, vqvae: VQVAE, label_B: torch.Tensor, *, cfg: float = 1.5, top_k: int = 900,
             top_p: float = 0.96, temperature: float = 1.0, smooth: bool = False,
             generator: torch.Generator | None = None,
             keep_tokens: Sequence[torch.Tensor] | None = None, keep_masks: Sequence[torch.Tensor] | None = None,
             keep_latent: torch.Tensor | None = None, on_scale: Callable[[int], None] | None = None,
             streams: int | None = None, cfg_scales: int | None = None,
             prune: Sequence[float] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Generate the token maps of every scale for ``label_B`` (null class allowed).

    At scale k of K the guided logits are ``(1 + t) * cond - t * null`` with ``t = cfg * k / (K - 1)``
    (the paper's linear ramp); with ``cfg_scales`` only the first ``cfg_scales`` scales are guided and the
    later ones take the conditional logits alone (the null-class half of the batch is dropped, a
    training-free speed-up). ``prune`` (fractions, the last scale's last) leaves that fraction of each of
    the last scales' tokens out of the transformer: their logits come from the previous scale's output,
    resized (FastVAR's cached-token pruning, a training-free speed-up), and the tokens run are those whose
    stand-in logits are least certain. Where
    ``keep_masks[k]`` (B, h_k * w_k) is True the token is taken from
    ``keep_tokens[k]`` instead of being sampled. With ``keep_latent`` (B, Cv, H, W: the kept image's
    quantized latent) a kept token is the image's own only while every earlier token of its image was
    kept; after that it is re-fitted (:meth:`MultiScaleQuantizer.codes_toward`) so that the running
    latent meets the image's at the kept positions whatever was generated around them. ``streams`` splits
    the transformer's batch into that many concurrent streams (see :mod:`var.cpu.streams`); by default one
    per CPU thread on CPU, one elsewhere.
    Returns the final latent f_hat and the K token maps.
    """
    with torch.inference_mode():
        f_hat, tokens = _generate(var, vqvae, label_B, cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature,
                                  smooth=smooth, generator=generator, keep_tokens=keep_tokens,
                                  keep_masks=keep_masks, keep_latent=keep_latent, on_scale=on_scale,
                                  streams=streams, cfg_scales=cfg_scales, prune=prune)
    # Clones made outside inference mode are ordinary tensors, usable anywhere (autograd included).
    return f_hat.clone(), [t.clone() for t in tokens]


def _generate(var: VAR, vqvae: VQVAE, label_B: torch.Tensor, *, cfg: float, top_k: int, top_p: float,
              temperature: float, smooth: bool, generator: torch.Generator | None,
              keep_tokens: Sequence[torch.Tensor] | None, keep_masks: Sequence[torch.Tensor] | None,
              keep_latent: torch.Tensor | None, on_scale: Callable[[int], None] | None,
              streams: int | None, cfg_scales: int | None = None,
              prune: Sequence[float] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    var.check_labels(label_B, allow_null=True)
    check_sampling_options(cfg, top_k, top_p, temperature, cfg_scales, prune)
    scales, quant = var.scales, vqvae.quantize
    if scales != quant.scales:
        raise ValueError(f"transformer scales {var.patch_nums} differ from the tokenizer's {quant.patch_nums}")
    K, B = len(scales), label_B.shape[0]
    left_out = _pruned_fractions(prune, K)
    _check_kept(keep_tokens, keep_masks, keep_latent, quant, B)
    untouched_B = label_B.new_ones(B, dtype=torch.bool)  # every token so far is the kept image's own
    guided = cfg != 0 and cfg_scales != 0  # with cfg == 0 the null-class half would get weight 0: skip it
    labels = torch.cat((label_B, torch.full_like(label_B, var.num_classes))) if guided else label_B
    n = labels.shape[0]

    cond_nC = var.class_emb(labels)
    mods = var.modulations(cond_nC)                           # once per call: the condition is fixed
    lvl_pos_1LC = var.lvl_embed(var.lvl_1L) + var.pos_1LC
    x_nlC = cond_nC.unsqueeze(1) + var.pos_start + lvl_pos_1LC[:, :var.first_l]
    f_hat = cond_nC.new_zeros(B, quant.channels, *quant.latent_hw)
    codebook_VC = quant.embedding.weight
    tokens: list[torch.Tensor] = []
    with Streams(stream_count(cond_nC.device, n, streams), cond_nC.device.type) as pool:
        transformer = _BatchStreams(var, cond_nC, mods, pool)
        cur = 0
        hidden_nlC = None  # the last scale's output (a pruned scale fills in from it)
        for k, (h, w) in enumerate(scales):
            ratio = k / (K - 1) if K > 1 else 1.0
            if guided and cfg_scales is not None and k >= cfg_scales:  # guidance off from here: drop the null half
                guided = False
                transformer.keep_rows(B)
                x_nlC = x_nlC[:B]
            if left_out[k]:
                hidden_nlC, logits_BlV = _pruned_pass(var, transformer, x_nlC, hidden_nlC, scales[k - 1], (h, w),
                                                      left_out[k], B)
            else:
                hidden_nlC = transformer.hidden(x_nlC)
                logits_BlV = var.logits_from_hidden(hidden_nlC, transformer.cond)
            check_finite_logits(logits_BlV, k, (h, w))
            if guided:  # (1 + t) * conditional - t * unconditional, in one pass
                logits_BlV = torch.lerp(logits_BlV[B:], logits_BlV[:B], 1 + cfg * ratio)
            if temperature != 1.0:
                logits_BlV.div_(temperature)  # a tensor of this call's own: no copy
            vals, ids = filter_logits(logits_BlV, top_k, top_p)
            idx_Bl = draw(vals, ids, generator)
            if smooth:
                tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
                soft_BlV = gumbel_softmax(_scatter_filtered(logits_BlV, vals, ids) * (1 + ratio), tau, generator)
                h_BlC = soft_BlV @ codebook_VC
            else:
                h_BlC = F.embedding(idx_Bl, codebook_VC)
            if keep_masks is not None:
                keep_Bl = keep_masks[k].to(torch.bool)
                kept_Bl = keep_tokens[k]
                if keep_latent is not None:
                    fitted_Bl = quant.codes_toward(k, f_hat, keep_latent, keep_Bl, idx_Bl)
                    kept_Bl = torch.where(untouched_B.unsqueeze(1), kept_Bl, fitted_Bl)
                idx_Bl = torch.where(keep_Bl, kept_Bl, idx_Bl)
                h_BlC = torch.where(keep_Bl.unsqueeze(-1), F.embedding(idx_Bl, codebook_VC), h_BlC)
                untouched_B &= (idx_Bl == keep_tokens[k]).all(dim=1)
            tokens.append(idx_Bl)
            f_hat, next_map = quant.next_input(k, f_hat, h_BlC.transpose(1, 2).reshape(B, -1, h, w))
            cur += h * w
            if on_scale is not None:
                on_scale(k)
            if k == K - 1:
                break
            l_next = next_map.shape[-2] * next_map.shape[-1]
            x_BlC = var.word_embed(next_map.flatten(2).transpose(1, 2)) + lvl_pos_1LC[:, cur:cur + l_next]
            x_nlC = torch.cat((x_BlC, x_BlC)) if guided else x_BlC
    return f_hat, tokens


def _pruned_fractions(prune: Sequence[float] | None, K: int) -> list[float]:
    """The fraction of tokens left out at each of the K scales: ``prune`` aligned to the last scales. The
    first scale has no earlier output to restore from, so at most K - 1 scales can be pruned."""
    prune = list(prune or ())
    if len(prune) > K - 1:
        raise ValueError(f"prune gives {len(prune)} fractions, but only the last {K - 1} of this model's {K} scales "
                         "can be pruned (the first has no earlier output to fill in from)")
    return [0.0] * (K - len(prune)) + [float(f) for f in prune]


def _pruned_pass(var: VAR, transformer: "_BatchStreams", x_nlC: torch.Tensor, previous_nlC: torch.Tensor,
                 previous_hw: tuple[int, int], hw: tuple[int, int], left_out: float,
                 B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block's output (n, l, C) and the logits (n, l, V) of one scale with ``left_out`` of its tokens
    skipped. The previous scale's output ``previous_nlC`` resized bilinearly stands in for every token; the
    tokens whose stand-in logits are least certain (highest entropy, on the conditional rows: the first B)
    go through the blocks and join the KV caches, at the same positions for an image's conditional and
    null-class rows."""
    n, l, C = x_nlC.shape
    (ph, pw), (h, w) = previous_hw, hw
    grid_nChw = previous_nlC[:n].transpose(1, 2).reshape(n, C, ph, pw)
    filled_nlC = F.interpolate(grid_nChw, size=(h, w), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    logits_nlV = var.logits_from_hidden(filled_nlC, transformer.cond)
    logp_BlV = logits_nlV[:B].log_softmax(dim=-1)
    entropy_Bl = -(logp_BlV.exp() * logp_BlV).sum(dim=-1)
    keep = max(1, round(l * (1 - left_out)))
    idx_nk1 = entropy_Bl.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values.repeat(n // B, 1).unsqueeze(-1)
    ran_nkC = transformer.hidden(x_nlC.gather(1, idx_nk1.expand(-1, -1, C)))
    hidden_nlC = filled_nlC.scatter(1, idx_nk1.expand(-1, -1, C), ran_nkC.to(filled_nlC.dtype))
    ran_nkV = var.logits_from_hidden(ran_nkC, transformer.cond)
    return hidden_nlC, logits_nlV.scatter(1, idx_nk1.expand_as(ran_nkV), ran_nkV)


def _check_kept(keep_tokens: Sequence[torch.Tensor] | None, keep_masks: Sequence[torch.Tensor] | None,
                keep_latent: torch.Tensor | None, quant: MultiScaleQuantizer, B: int) -> None:
    """An edit's kept tokens and masks: both or neither, one (B, h_k * w_k) map each per scale; the
    optional latent (B, Cv, H, W) only with them."""
    if (keep_tokens is None) != (keep_masks is None):
        raise ValueError("keep_tokens and keep_masks go together: got "
                         f"{'keep_tokens' if keep_masks is None else 'keep_masks'} alone")
    if keep_tokens is None:
        if keep_latent is not None:
            raise ValueError("keep_latent needs keep_tokens and keep_masks")
        return
    expected = (B, quant.channels, *quant.latent_hw)
    if keep_latent is not None and tuple(keep_latent.shape) != expected:
        raise ValueError(f"keep_latent must have shape {expected}, got {tuple(keep_latent.shape)}")
    quant.check_indices(keep_tokens)
    if keep_tokens[0].shape[0] != B:
        raise ValueError(f"keep_tokens hold {keep_tokens[0].shape[0]} images, the labels {B}")
    if len(keep_masks) != len(keep_tokens):
        raise ValueError(f"expected {len(keep_tokens)} keep_masks (one per scale), got {len(keep_masks)}")
    for k, (mask, (h, w)) in enumerate(zip(keep_masks, quant.scales)):
        if tuple(mask.shape) != (B, h * w):
            raise ValueError(f"keep_masks[{k}] must have shape ({B}, {h * w}), got {tuple(mask.shape)}")


class _BatchStreams:
    """The transformer's per-scale pass over the batch, on CPU split into concurrent streams (see
    :mod:`.streams`) at the scales with at least ``MIN_ROWS_PER_STREAM`` tokens per stream. Smaller scales
    run as one call over the whole batch: there the layers are bound by reading the weights, which every
    stream would do again. One KV cache per block holds the whole batch; each stream's caches are views of
    its rows. The outputs come back
    in batch order, so sampling, done by the caller, does not depend on the number of streams."""

    MIN_ROWS_PER_STREAM = 256

    def __init__(self, var: VAR, cond_nC: torch.Tensor, mods: Sequence[torch.Tensor], streams: Streams):
        self.var, self.streams, self.cond, self.mods = var, streams, cond_nC, mods
        self.caches = var.new_caches(cond_nC.shape[0], cond_nC)
        self.length = 0
        self._split()

    def _split(self) -> None:
        """Each stream's rows of the batch and its views of the caches."""
        n = self.cond.shape[0]
        edges = [round(i * n / self.streams.count) for i in range(self.streams.count + 1)]
        self.parts = [slice(a, b) for a, b in zip(edges, edges[1:])]
        self.part_caches = [[KVCache(c.kv[:, sl], c.length) for c in self.caches] for sl in self.parts]

    def keep_rows(self, n: int) -> None:
        """Run only the first ``n`` rows of the batch from now on (their cached keys and values stay)."""
        self.cond, self.mods = self.cond[:n], [m[:n] for m in self.mods]
        self.caches = [KVCache(c.kv[:, :n], c.length) for c in self.caches]
        self._split()

    def hidden(self, x_nlC: torch.Tensor) -> torch.Tensor:
        """The last block's output (n, l, C) for the tokens ``x_nlC`` (a whole scale, or the kept part of a
        pruned one); their keys and values join the caches."""
        n, l = x_nlC.shape[:2]
        if self.streams.count == 1 or n * l < self.MIN_ROWS_PER_STREAM * self.streams.count:
            out = self.var.run_blocks(x_nlC, self.mods, caches=self.caches)
        else:
            parts = self.parts
            out = torch.cat(self.streams.map(lambda i: self.var.run_blocks(
                x_nlC[parts[i]], [m[parts[i]] for m in self.mods], caches=self.part_caches[i])))
        self.length += l
        for cache in itertools.chain(self.caches, *self.part_caches):
            cache.length = self.length
        return out
