"""Next-scale sampling (var.sampling): the KV-cached loop, top-k/top-p filtering, draws, option and seed checks."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

from var.sampling import check_sampling_options, draw, filter_logits, generate as sample_generate, sample_tokens
from conftest import FEW, small_pipe


def guided_argmax(pipe, tokens, labels, cfg):
    K = len(pipe.patch_nums)
    cond = pipe.logits(tokens, labels)
    x = pipe.vqvae.quantize.teacher_forcing_input(tokens)
    with torch.no_grad():
        null = pipe.var(torch.full_like(labels, pipe.num_classes), x)
    out, start = [], 0
    for k, (h, w) in enumerate(pipe.scales):
        t = cfg * k / (K - 1)
        sl = slice(start, start + h * w)
        out.append(((1 + t) * cond[:, sl] - t * null[:, sl]).argmax(-1))
        start += h * w
    return out


@pytest.mark.parametrize("variant", [dict(), dict(shared_aln=True), dict(attn_l2_norm=False),
                                     dict(share_quant_resi=0), dict(share_quant_resi=1),
                                     dict(patch_nums=(1, 2, 4, 6, 8)),
                                     dict(patch_nums=((1, 2), (2, 4), (3, 6), (4, 8))),     # 8x16 images
                                     dict(patch_nums=((1, 1), (2, 1), (3, 2), (6, 4)))])    # 12x8 images
@pytest.mark.parametrize("cfg", [0.0, 3.0])
def test_kv_cached_generation_equals_teacher_forced_pass(variant, cfg):
    pipe = small_pipe(**variant)
    labels = torch.tensor([0, 3, 4])
    out = pipe(class_labels=labels, cfg=cfg, top_k=1, seed=0)
    expected = guided_argmax(pipe, out.tokens, labels, cfg)
    for k, (got, want) in enumerate(zip(out.tokens, expected)):
        assert torch.equal(got, want), f"scale {k}"
    torch.testing.assert_close(out.images, pipe.decode(out.tokens), atol=1e-5, rtol=0)


def test_top_k_top_p_filtering_keeps_the_right_candidates():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    vals, ids = filter_logits(logits, top_k=3, top_p=0.0)
    assert ids.tolist() == [[[0, 1, 2]]]
    vals, ids = filter_logits(logits, top_k=0, top_p=0.7)  # 0.5 + 0.3 reaches 0.7: the rest is dropped
    assert torch.isfinite(vals).sum() == 2 and set(ids[torch.isfinite(vals)].tolist()) == {0, 1}
    vals, ids = filter_logits(logits, top_k=0, top_p=0.1)  # the best token is never dropped
    assert torch.isfinite(vals).sum() == 1 and ids[0, 0, 0] == 0
    g = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits.expand(1, 4000, 4), top_k=2, generator=g)
    share0 = (draws == 0).float().mean().item()
    assert set(draws.unique().tolist()) == {0, 1} and abs(share0 - 0.5 / 0.8) < 0.03


def test_draws_follow_the_distribution_and_never_pick_a_dropped_candidate():
    probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    logits = probs.log().expand(1, 200_000, 6)  # -inf where the probability is 0
    vals, ids = filter_logits(logits)  # nothing to cut: the logits as they are, no sort
    assert ids is None and vals is logits
    draws = draw(vals, ids, torch.Generator().manual_seed(0))
    share = torch.bincount(draws.flatten(), minlength=6).double() / draws.numel()
    torch.testing.assert_close(share, probs.double(), atol=0.005, rtol=0)
    assert share[probs == 0].sum() == 0


def test_a_draw_at_the_top_of_the_distribution_takes_the_last_candidate_with_weight(monkeypatch):
    # u * total can round up to the total: the draw must not fall on the zero-weight tail.
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape, dtype=kw.get("dtype")))
    logits = torch.tensor([[[0.0, 1.0, -torch.inf, -torch.inf]]])
    assert draw(logits, None).tolist() == [[1]]
    assert draw(logits, torch.tensor([[[7, 8, 9, 10]]])).tolist() == [[8]]


def test_generate_names_bad_edit_inputs():
    pipe = small_pipe()
    tokens = pipe.encode(torch.rand(2, 3, 8, 8))
    masks = [torch.ones_like(t, dtype=torch.bool) for t in tokens]
    labels = torch.tensor([0, 1])

    def run(**kw):
        return sample_generate(pipe.var, pipe.vqvae, labels, **kw)

    with pytest.raises(ValueError, match="keep_tokens and keep_masks go together: got keep_masks alone"):
        run(keep_masks=masks)
    with pytest.raises(ValueError, match=r"expected 4 keep_masks \(one per scale\), got 3"):
        run(keep_tokens=tokens, keep_masks=masks[:3])
    with pytest.raises(ValueError, match=r"keep_masks\[2\] must have shape \(2, 9\), got \(2, 4\)"):
        run(keep_tokens=tokens, keep_masks=[masks[0], masks[1], masks[1], masks[3]])
    with pytest.raises(ValueError, match="keep_tokens hold 1 images, the labels 2"):
        run(keep_tokens=[t[:1] for t in tokens], keep_masks=[m[:1] for m in masks])
    _, kept = run(keep_tokens=tokens, keep_masks=masks)  # everything kept: the tokens come back unchanged
    assert all(torch.equal(a, b) for a, b in zip(kept, tokens))


@FEW
@given(cfg=st.floats(allow_nan=True, allow_infinity=True), top_k=st.integers(-10**6, 10**6),
       top_p=st.floats(allow_nan=True), temperature=st.floats(allow_nan=True))
def test_sampling_options_are_accepted_exactly_in_their_ranges(cfg, top_k, top_p, temperature):
    checks = {"cfg": math.isfinite(cfg), "top_k": top_k >= 0, "top_p": 0 <= top_p <= 1,
              "temperature": 0 < temperature < math.inf}
    for name, ok in checks.items():
        value = dict(cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature)[name]
        if ok:
            check_sampling_options(**{name: value})
        else:
            with pytest.raises(ValueError, match=name):
                check_sampling_options(**{name: value})


def test_nan_weights_are_reported_at_the_first_scale():
    broken = small_pipe()
    with torch.no_grad():
        broken.var.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite logits \(NaN or inf\) at scale 0 \(1x1 tokens\)"):
        broken(class_labels=[0], seed=0)


@pytest.mark.parametrize("row", [[0.0, float("inf"), 1.0], [float("nan"), 2.0, -3.0],
                                 [-float("inf")] * 3, [float("inf"), float("inf"), 1.0]])
@pytest.mark.parametrize("top_k", [0, 2])
def test_a_draw_from_nan_or_inf_logits_is_refused_not_an_id_past_the_vocabulary(row, top_k):
    """The cdf of such logits is NaN (or all zero): the search then returned id V (3 here), which is no token."""
    logits = torch.tensor([[row, [0.0, 1.0, 2.0]]])
    with pytest.raises(ValueError, match="cannot draw from logits whose largest value is"):
        sample_tokens(logits, top_k=top_k, generator=torch.Generator().manual_seed(0))


def test_a_temperature_so_small_that_the_logits_overflow_is_named():
    """temperature 1e-40 passes the option check (finite, > 0) but overflows float32 logits to +inf: generation
    stopped with "index 48 is out of bounds" / "index out of range in self" instead of a message saying why."""
    pipe = small_pipe()
    for kw in (dict(top_k=0, top_p=0.0), dict(top_k=5, top_p=0.0), dict()):
        with pytest.raises(ValueError, match="temperature or cfg so extreme that float32 overflows"):
            pipe(class_labels=[0, 1], seed=0, temperature=1e-40, **kw)


@pytest.mark.parametrize("seed", [2 ** 64, -2 ** 63 - 1])
def test_a_seed_out_of_torchs_range_is_named(seed):
    from var.sampling import make_generator

    with pytest.raises(ValueError, match=rf"seed must be an integer in \[-2\*\*63, 2\*\*64\), got {seed}"):
        make_generator(seed, "cpu")
    make_generator(2 ** 64 - 1, "cpu")  # the ends of the range are seeds
    make_generator(-2 ** 63, "cpu")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_every_batch_size_is_checked_by_one_rule(bad):
    """The pipeline's calls and the educational generate refuse a batch size with the same message as
    var eval's evaluation (test_evaluation): each had its own check and wording."""
    from var import VAR
    from var.sampling import check_batch_size

    pipe = small_pipe()
    message = rf"batch_size must be an integer >= 1.*got {bad!r}"
    with pytest.raises(ValueError, match=message):
        check_batch_size(bad)
    with pytest.raises(ValueError, match=message):
        pipe(class_labels=[0, 1], batch_size=bad)
    educational = VAR(pipe.var.config)
    with pytest.raises(ValueError, match=message):
        educational.generate(batch_size=bad, vqvae=pipe.vqvae)
    check_batch_size(None, allow_none=True)


def test_guidance_at_the_first_scales_only_equals_the_teacher_forced_pass():
    """cfg_scales=N guides scales 0..N-1 and takes the conditional logits alone after (the null half of the
    batch dropped, its cached keys and values too); None, or N >= K, is the default to the token."""
    pipe = small_pipe()
    labels = torch.tensor([0, 3, 4])
    K = len(pipe.patch_nums)
    out = pipe(class_labels=labels, cfg=3.0, top_k=1, seed=0, cfg_scales=2)
    guided, conditional = guided_argmax(pipe, out.tokens, labels, 3.0), guided_argmax(pipe, out.tokens, labels, 0.0)
    for k, got in enumerate(out.tokens):
        assert torch.equal(got, (guided if k < 2 else conditional)[k]), f"scale {k}"
    assert not all(torch.equal(a, b) for a, b in zip(out.tokens, pipe(class_labels=labels, cfg=3.0, top_k=1).tokens))
    default = pipe(class_labels=labels, cfg=3.0, seed=1, top_k=0, top_p=0)
    for n in (None, K, K + 3):
        same = pipe(class_labels=labels, cfg=3.0, seed=1, top_k=0, top_p=0, cfg_scales=n)
        assert all(torch.equal(a, b) for a, b in zip(same.tokens, default.tokens)) and torch.equal(same.images, default.images)
    unguided = pipe(class_labels=labels, cfg=0.0, seed=1, top_k=0, top_p=0)
    assert all(torch.equal(a, b) for a, b in zip(pipe(class_labels=labels, cfg=3.0, seed=1, top_k=0, top_p=0,
                                                       cfg_scales=0).tokens, unguided.tokens))
    with pytest.raises(ValueError, match=r"cfg_scales must be an integer >= 0.*got -1"):
        pipe(class_labels=labels, cfg_scales=-1)
    # Concurrent streams split the remaining rows anew: the same tokens as one stream.
    many = torch.arange(40) % 5
    one, two = (sample_generate(pipe.var, pipe.vqvae, many, cfg=3.0, top_k=1, streams=s, cfg_scales=3)[1]
                for s in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def pruned_last_scale_argmax(pipe, tokens, labels, cfg, left_out):
    """Greedy guided tokens of the last scale with ``left_out`` of it pruned, computed without the KV cache:
    the scale before's output resized bilinearly to the last scale's grid stands in for every token; the
    tokens whose stand-in logits have the highest entropy are run, in one block-causal pass over the earlier
    scales and themselves alone."""
    from var.transformer import BlockCausal

    var, quant = pipe.var.eval(), pipe.vqvae.quantize
    lens = [h * w for h, w in pipe.scales]
    (ph, pw), (h, w) = pipe.scales[-2:]
    start, l, B = sum(lens[:-1]), lens[-1], labels.shape[0]
    x_in = quant.teacher_forcing_input(tokens)
    keep = round(l * (1 - left_out))
    bias = var.attn_bias_for_masking[0, 0]
    logits, idx_Bk = [], None
    for label in (labels, torch.full_like(labels, pipe.num_classes)):
        cond = var.class_emb(label)
        sos = cond.unsqueeze(1) + var.pos_start
        x_BLC = torch.cat((sos, var.word_embed(x_in)), dim=1) + var.lvl_embed(var.lvl_1L) + var.pos_1LC
        mods = var.modulations(cond)
        full = var.run_blocks(x_BLC, mods, BlockCausal.for_scales(lens, bias))
        if idx_Bk is None:  # the conditional rows' stand-in logits choose the tokens run, by their entropy
            prev = full[:, start - ph * pw:start].transpose(1, 2).reshape(B, -1, ph, pw)
            stand_in = torch.nn.functional.interpolate(prev, size=(h, w), mode="bilinear").flatten(2).transpose(1, 2)
            p = var.logits_from_hidden(stand_in, cond).softmax(-1)
            entropy = -(p * p.log()).sum(-1)
            idx_Bk = entropy.argsort(dim=1, descending=True)[:, :keep].sort(dim=1).values
        out = []
        for b in range(B):  # each image its own kept positions (and so its own mask)
            rows = torch.cat((torch.arange(start), start + idx_Bk[b]))
            sub = var.run_blocks(x_BLC[b:b + 1, rows], [m[b:b + 1] for m in mods],
                                 BlockCausal.for_scales(lens[:-1] + [keep], bias[rows][:, rows]))
            prev = full[b:b + 1, start - ph * pw:start].transpose(1, 2).reshape(1, -1, ph, pw)
            hid = torch.nn.functional.interpolate(prev, size=(h, w), mode="bilinear").flatten(2).transpose(1, 2)
            hid[0, idx_Bk[b]] = sub[0, start:]
            out.append(var.logits_from_hidden(hid, cond[b:b + 1]))
        logits.append(torch.cat(out))
    cond_logits, null_logits = logits
    return ((1 + cfg) * cond_logits - cfg * null_logits).argmax(-1), idx_Bk


@pytest.mark.parametrize("left_out", [0.3, 0.75])
def test_pruned_last_scale_equals_the_pass_over_the_kept_tokens(left_out):
    """prune=(f,): the last scale's least certain tokens go through the blocks (attending to every earlier
    token and to each other only), the rest take the previous scale's output resized; the earlier scales are
    untouched."""
    pipe = small_pipe(patch_nums=(1, 2, 3, 4))
    with torch.no_grad():  # confident logits: the random model's are near uniform, their entropies near ties
        pipe.var.head.weight.mul_(40)
    labels = torch.tensor([0, 3, 4])
    default = pipe(class_labels=labels, cfg=3.0, top_k=1, seed=0)
    pruned = pipe(class_labels=labels, cfg=3.0, top_k=1, seed=0, prune=(left_out,))
    for k in range(3):
        assert torch.equal(pruned.tokens[k], default.tokens[k]), f"scale {k}"
    with torch.no_grad():
        expected, idx_Bk = pruned_last_scale_argmax(pipe, pruned.tokens, labels, 3.0, left_out)
    assert idx_Bk.shape[1] == round(16 * (1 - left_out))
    assert torch.equal(pruned.tokens[-1], expected)
    assert not torch.equal(pruned.tokens[-1], default.tokens[-1])  # the pruning did change something
    torch.testing.assert_close(pruned.images, pipe.decode(pruned.tokens), atol=1e-5, rtol=0)


def test_pruning_options_off_equal_the_default_and_bad_ones_are_named():
    pipe = small_pipe()
    labels = torch.tensor([0, 3, 4, 1])
    default = pipe(class_labels=labels, cfg=3.0, seed=1, top_k=0, top_p=0)
    for off in (None, (), (0.0,), (0.0, 0.0, 0.0)):
        same = pipe(class_labels=labels, cfg=3.0, seed=1, top_k=0, top_p=0, prune=off)
        assert all(torch.equal(a, b) for a, b in zip(same.tokens, default.tokens)) and torch.equal(same.images, default.images)
    for bad in (1.0, (1.0,), (-0.1,), ("0.5",), (0.5, float("nan"))):
        with pytest.raises(ValueError, match="prune must be a sequence of fractions in \\[0, 1\\)"):
            pipe(class_labels=labels, prune=bad)
    with pytest.raises(ValueError, match="prune gives 4 fractions, but only the last 3 of this model's 4 scales"):
        pipe(class_labels=labels, prune=(0.5,) * 4)
    # A pruned scale before the last: the last scale attends to the kept tokens' cached keys only, and the
    # concurrent streams split the rows the same way as one stream.
    many = torch.arange(40) % 5
    one, two = (sample_generate(pipe.var, pipe.vqvae, many, cfg=3.0, top_k=1, streams=s, prune=(0.5, 0.5))[1]
                for s in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two))
