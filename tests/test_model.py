"""Behaviour of the modules beyond the fixture: cache vs full pass, seeds, variants, saving, errors."""
import pytest
import torch

from var import VAR, VARConfig, VARPipeline, VQVAE, VQVAEConfig, patch_nums_from_max_scale, precision
from var.sampling import draw, filter_logits, sample_tokens
from var.sampling import generate as sample_generate
from conftest import small_pipe


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


def test_seed_reproducible_and_different_seeds_differ():
    pipe = small_pipe()
    a = pipe(class_labels=[1, 2], seed=7, top_k=0, top_p=0.0)
    b = pipe(class_labels=[1, 2], seed=7, top_k=0, top_p=0.0)
    c = pipe(class_labels=[1, 2], seed=8, top_k=0, top_p=0.0)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    assert not torch.equal(a.tokens[-1], c.tokens[-1])
    d = pipe(num_samples=6, seed=3)
    e = pipe(num_samples=6, seed=3)
    assert torch.equal(d.labels, e.labels) and d.labels.shape == (6,)
    assert d.labels.min() >= 0 and d.labels.max() < pipe.num_classes


def test_batched_generation_matches_unbatched_when_greedy():
    pipe = small_pipe()
    full = pipe(class_labels=[0, 1, 2, 3, 4], cfg=1.5, top_k=1, seed=0)
    chunked = pipe(class_labels=[0, 1, 2, 3, 4], cfg=1.5, top_k=1, seed=0, batch_size=2)
    assert all(torch.equal(x, y) for x, y in zip(full.tokens, chunked.tokens))
    assert full.images.shape == (5, 3, 8, 8) and 0 <= full.images.min() and full.images.max() <= 1


def test_output_shapes_and_token_layout():
    pipe = small_pipe(patch_nums=patch_nums_from_max_scale(4), channels=1)
    out = pipe(class_labels=[0, 1], seed=0, smooth=True, temperature=0.8)
    assert [t.shape for t in out.tokens] == [(2, p * p) for p in (1, 2, 3, 4)]
    assert out.images.shape == (2, 1, 8, 8)
    assert all(t.dtype == torch.long for t in out.tokens)


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


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_a_batch_size_that_is_not_a_positive_integer_is_named(batch_size):
    # -1 used to fail inside torch.cat, 1.5 to run as 1 and 0 as the whole batch, without a word
    with pytest.raises(ValueError, match=rf"batch_size must be an integer >= 1 .*got {batch_size!r}"):
        small_pipe()(class_labels=[0, 1], batch_size=batch_size)


def test_saving_in_fp16_refuses_a_weight_float16_cannot_hold(tmp_path):
    pipe = small_pipe()
    with torch.no_grad():
        pipe.var.head.weight[0, 0] = 1e5  # float16 ends at 65504: it would be stored as inf
    with pytest.raises(ValueError, match=r"var.safetensors: head.weight holds 100000, beyond torch.float16"):
        pipe.save_pretrained(tmp_path / "m", weights_dtype="fp16")
    again = VARPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "m", weights_dtype="bf16"))
    assert again.var.head.weight[0, 0].item() == 1e5 - 1e5 % 512  # bf16 holds it (rounded)


def test_save_and_load_pretrained_roundtrip(tmp_path):
    pipe = small_pipe()
    pipe.class_names = [f"c{i}" for i in range(5)]
    pipe.save_pretrained(tmp_path / "m")
    again = VARPipeline.from_pretrained(tmp_path / "m")
    assert again.class_names == pipe.class_names and again.var.config == pipe.var.config
    a = pipe(class_labels=[1, 2], seed=1)
    b = again(class_labels=[1, 2], seed=1)
    assert torch.equal(a.images, b.images)
    with pytest.raises(FileNotFoundError, match="bundled"):
        VARPipeline.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("dtype", ["fp16", torch.bfloat16])
def test_half_precision_weights_take_half_the_space_and_load_as_float32(tmp_path, dtype):
    from safetensors import safe_open

    pipe = small_pipe()
    pipe.save_pretrained(tmp_path / "full")
    pipe.save_pretrained(tmp_path / "half", weights_dtype=dtype)
    for name in ("var.safetensors", "vqvae.safetensors"):
        full, half = (tmp_path / d / name for d in ("full", "half"))
        assert half.stat().st_size < 0.55 * full.stat().st_size
        with safe_open(str(half), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} <= {str(precision.resolve_dtype(dtype)), "torch.int64"}
    again = VARPipeline.from_pretrained(tmp_path / "half")
    for ours, theirs in ((again.var, pipe.var), (again.vqvae, pipe.vqvae)):
        for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert a.dtype == b.dtype, k                             # float32 again, ...
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-4)   # ... up to the half-precision rounding
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        pipe.save_pretrained(tmp_path / "bad", weights_dtype="int8")


def test_clear_errors():
    pipe = small_pipe()
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 5\) or 5 \(the null class\), got \[6\]"):
        pipe(class_labels=[6])                                  # 5, the null class, generates unconditionally
    with pytest.raises(ValueError, match="takes 8x8"):
        pipe.encode(torch.rand(1, 3, 20, 20))
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        pipe.encode(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pipe.encode(torch.rand(1, 3, 8, 8) * 255)
    tokens = pipe.encode(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="expected 4 token maps"):
        pipe.decode(tokens[:3])
    with pytest.raises(ValueError, match="scale 1 must have shape"):
        pipe.decode([tokens[0], tokens[1][:, :3], tokens[2], tokens[3]])
    with pytest.raises(ValueError, match="outside"):
        pipe.decode([tokens[0], tokens[1], tokens[2], tokens[3] + 100])
    with pytest.raises(ValueError, match="2 token maps"):
        pipe.logits(tokens, [0, 1, 2])
    with pytest.raises(ValueError, match="unknown preset"):
        VARConfig.from_preset("huge")
    other = VQVAE(VQVAEConfig(**{**pipe.vqvae.config.to_dict(), "vocab_size": 16}))
    with pytest.raises(ValueError, match=r"the tokenizer \(vocabulary, latent channels, scales\) \(16, "):
        VARPipeline(other, pipe.var)


def test_presets_have_the_requested_sizes():
    small = VARConfig.from_preset("small")
    assert (small.vocab_size, small.embed_dim, small.depth, small.num_heads, small.patch_nums) == (
        512, 256, 6, 8, (1, 2, 3, 4, 5, 6, 7, 8))
    with torch.device("meta"):
        model = VAR(VARConfig.from_preset("large"))
    assert model.blocks[0].ffn.fc1.out_features == 3072 and len(model.blocks) == 24


def test_training_forward_drops_labels_and_has_gradients():
    pipe = small_pipe()
    var, vae = pipe.var.train(), pipe.vqvae
    tokens = pipe.encode(torch.rand(4, 3, 8, 8))
    x = vae.quantize.teacher_forcing_input(tokens)
    torch.manual_seed(0)
    logits = var(torch.tensor([0, 1, 2, 3]), x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.cat(tokens, 1).flatten())
    loss.backward()
    assert all(p.grad is not None for p in var.parameters() if p.requires_grad)
    var.config.cond_drop_rate = 1.0  # every label dropped: output equals the null class's
    for block in var.blocks:
        block.drop_path = 0.0          # stochastic depth off, so that only the labels differ
    a = var(torch.tensor([0, 1, 2, 3]), x)
    var.eval()
    b = var(torch.full((4,), 5), x)
    torch.testing.assert_close(a, b)


def test_stochastic_depth_follows_the_reference_schedule_and_only_trains():
    cfg = VARConfig(depth=16, embed_dim=64, num_heads=2)
    assert cfg.drop_path_rate == pytest.approx(0.1 * 16 / 24)
    with torch.device("meta"):
        rates = [b.drop_path for b in VAR(cfg).blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(cfg.drop_path_rate)
    assert all(b > a for a, b in zip(rates, rates[1:]))                     # linear in depth
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.5"):
        VARConfig(drop_path_rate=1.5)
    block = small_pipe().var.blocks[1]
    x = torch.randn(8, 5, 64)
    mod = torch.randn(8, 1, 6, 64)
    block.drop_path = 1 - 1e-7                                               # every branch dropped
    assert torch.equal(block.train()(x, mod, None), x)
    with torch.no_grad():
        assert not torch.equal(block.eval()(x, mod, None), x)              # inference never drops
    block.drop_path = 0.5                                                    # some samples kept, some not
    torch.manual_seed(0)
    out = block.train()(x, mod, None)
    unchanged = [torch.equal(out[i], x[i]) for i in range(8)]
    assert 0 < sum(unchanged) < 8


def test_weight_decay_spares_positions_levels_and_temperatures():
    from var.training.runs import make_optimizer, VAR_BETAS, VQVAE_BETAS
    from var.training.common import Schedule
    var = VAR(VARConfig(vocab_size=48, latent_channels=8, num_classes=5, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=(1, 2, 3), shared_aln=True))
    opt = make_optimizer(var, Schedule(weight_decay=0.05), VAR_BETAS)
    names = {id(p): n for n, p in var.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    spared = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0
    assert {"pos_start", "pos_1LC", "lvl_embed.weight", "blocks.0.attn.scale_mul_1H11", "blocks.1.ada_gss",
            "blocks.0.attn.q_bias"} <= spared
    assert {"class_emb.weight", "blocks.0.attn.mat_qkv.weight", "head.weight", "shared_ada_lin.1.weight"} <= decayed
    assert decayed.isdisjoint(spared) and len(decayed) + len(spared) == len(names)
    vae = VQVAE(VQVAEConfig(in_channels=1, ch=32, ch_mult=(1, 2), z_channels=8, vocab_size=48, patch_nums=(1, 2, 4)))
    opt = make_optimizer(vae, Schedule(), VQVAE_BETAS)
    vae_names = {id(p): n for n, p in vae.named_parameters()}
    assert "quantize.embedding.weight" in {vae_names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_adaln_gates_start_at_the_reference_scale():
    from var.transformer import default_adaln_gamma
    assert default_adaln_gamma(16) == default_adaln_gamma(20) == 1e-3 and default_adaln_gamma(24) == 1e-4
    torch.manual_seed(0)
    C = 64
    for shared in (False, True):
        var = VAR(VARConfig(vocab_size=48, latent_channels=8, num_classes=5, depth=2, embed_dim=C, num_heads=2,
                            patch_nums=(1, 2), shared_aln=shared))
        var.init_weights(init_adaln_gamma=1e-3)
        if shared:   # each block's offsets are scaled: gates by gamma, scales and shifts by 0.5
            gss = var.blocks[0].ada_gss
            assert gss[:, :, :2].std().item() == pytest.approx(1e-3 / C ** 0.5, rel=0.2)
            assert gss[:, :, 2:].std().item() == pytest.approx(0.5 / C ** 0.5, rel=0.2)
            assert var.shared_ada_lin[1].weight.std().item() == pytest.approx((1 / C / 3) ** 0.5, rel=0.2)
        else:
            w = var.blocks[0].ada_lin[1].weight
            assert w[:2 * C].std().item() == pytest.approx(1e-3 * (1 / C / 3) ** 0.5, rel=0.2)
        var.init_weights(init_adaln_gamma=1e-3)   # drawing again does not scale twice
        if shared:
            assert var.blocks[0].ada_gss[:, :, :2].std().item() == pytest.approx(1e-3 / C ** 0.5, rel=0.2)


def test_sampling_defaults_are_saved_with_the_model(tmp_path):
    pipe = small_pipe()
    assert pipe.sampling(cfg=None, top_k=5) == {"cfg": 1.5, "top_k": 5}      # the reference's, else given
    pipe.sampling_defaults["cfg"] = 4.0
    pipe.save_pretrained(tmp_path / "m")
    again = VARPipeline.from_pretrained(tmp_path / "m")
    assert again.sampling_defaults["cfg"] == 4.0
    a = again(class_labels=[1, 2], seed=3)                  # cfg from the model
    b = again(class_labels=[1, 2], seed=3, cfg=4.0)
    c = again(class_labels=[1, 2], seed=3, cfg=0.0)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match="unknown sampling defaults"):
        VARPipeline(pipe.vqvae, pipe.var, sampling_defaults={"cfgg": 2})


def test_fresh_codebook_is_mostly_in_use():
    """Codes start uniform in +-1/V (VQGAN's init): most are some latent's nearest code from the start.
    With N(0, 1) codes (norm 4 against latents of norm 0.7) the coarse scales used 1-14 of 512."""
    from var.data import fashion_mnist_dataset
    from var.recipes import fashion_mnist_configs
    try:
        images, _ = fashion_mnist_dataset(split="test").batch(torch.arange(512).numpy())
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed (make data): {e}")
    torch.manual_seed(0)
    vae = VQVAE(fashion_mnist_configs()[0])
    V = vae.config.vocab_size
    assert vae.quantize.embedding.weight.abs().max() <= 1 / V
    with torch.no_grad():
        used = [len(torch.unique(i)) for i in vae.img_to_indices(images * 2 - 1)]
    assert used[1] >= 40 and used[-1] >= 250, used


def test_quantizer_runs_in_float32_under_autocast():
    pipe = small_pipe()
    quant = pipe.vqvae.quantize.train()
    f = torch.randn(4, 8, 4, 4)
    f_hat, loss, idx = quant(f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f_hat_amp, loss_amp, idx_amp = quant(f)
    assert f_hat_amp.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(idx, idx_amp))
    torch.testing.assert_close(f_hat_amp, f_hat)
    # Encoding (edits, evaluation) too: an image's tokens must not depend on the caller's compute dtype. The
    # bundled tokenizer's trained phi convs make bf16 rounding flip about 3% of the finest tokens.
    quant = VARPipeline.from_pretrained("fashion-mnist").vqvae.quantize
    f = torch.randn(64, quant.channels, *quant.latent_hw, generator=torch.Generator().manual_seed(0))
    tokens = quant.latent_to_indices(f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens_amp = quant.latent_to_indices(f)
    assert all(torch.equal(a, b) for a, b in zip(tokens, tokens_amp))


def test_the_null_class_generates_unconditionally_and_on_scale_reports_every_scale():
    pipe = small_pipe()
    null = pipe.num_classes
    seen = []
    out = pipe(class_labels=[null, null], seed=4, on_scale=seen.append)
    _, expected = sample_generate(pipe.var, pipe.vqvae, torch.full((2,), null), cfg=pipe.sampling_defaults["cfg"],
                                  top_k=900, top_p=0.96, generator=torch.Generator().manual_seed(4))
    assert out.labels.tolist() == [null, null] and all(torch.equal(a, b) for a, b in zip(out.tokens, expected))
    assert seen == list(range(len(pipe.patch_nums)))           # once per scale, in order
    assert pipe.label_name(null) == "null class" and pipe.label_name(2) == "class 2"
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 5\)"):
        pipe.class_ids([null])                                  # only generation takes the null class


def test_cosine_lookup_picks_the_code_pointing_the_same_way():
    """L2 picks the nearer code; cosine lookup the one with the same direction, and what is added to the
    reconstruction is that code itself (not its unit vector)."""
    from var.quantizer import MultiScaleQuantizer
    for cosine, want in ((False, 0), (True, 1)):
        q = MultiScaleQuantizer(2, 2, (1,), share_quant_resi=1, cosine_lookup=cosine)
        with torch.no_grad():
            q.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        assert q.nearest_code(torch.tensor([[0.5, 1.0]])).tolist() == [want]
    assert torch.equal(q.embedding(torch.tensor([1])), torch.tensor([[0.0, 3.0]]))
    cfg = VQVAEConfig(in_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=16,
                      patch_nums=(1, 2, 4), using_sa=False, using_mid_sa=False, cosine_lookup=True)
    assert VQVAE(VQVAEConfig(**cfg.to_dict())).quantize.cosine_lookup


@pytest.mark.parametrize("scale_lens", [(1,), (1, 4), (1, 4, 9, 16), (2, 8, 18),
                                        (1, 4, 9, 16, 25, 36, 64, 100, 169, 256)])
def test_block_causal_attention_equals_the_masked_attention_and_its_gradients(scale_lens):
    from var.transformer import BlockCausal
    torch.manual_seed(0)
    L = sum(scale_lens)
    lvl = torch.cat([torch.full((n,), k) for k, n in enumerate(scale_lens)])
    bias = torch.zeros(L, L).masked_fill(lvl[:, None] < lvl[None], -torch.inf)
    q, k, v = (torch.randn(2, 3, L, 8, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(2, 3, L, 8)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    mask = BlockCausal.for_scales(scale_lens, bias)
    got = mask.attend(q, k, v, 0.3)
    got_grads = torch.autograd.grad(got, (q, k, v), grad_out)
    assert sum(mask.sizes) == L and len(mask.sizes) == min(len(scale_lens), 1 + BlockCausal.LATE_SCALES)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    # the later scales must not see the future: changing the last scale's keys leaves earlier outputs alone
    k2 = k.detach().clone()
    k2[:, :, L - scale_lens[-1]:] += 5
    early = L - scale_lens[-1]
    torch.testing.assert_close(mask.attend(q, k2, v, 0.3)[:, :, :early], got[:, :, :early], atol=1e-6, rtol=1e-6)


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
