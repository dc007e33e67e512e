"""The transformer (var.transformer): presets, initialisation, stochastic depth, label dropout, causal attention."""
import pytest
import torch

from var import VAR, VARConfig
from var.recipes import preset_config
from conftest import small_pipe


def test_presets_have_the_requested_sizes():
    small = preset_config("small")
    assert (small.vocab_size, small.embed_dim, small.depth, small.num_heads, small.patch_nums) == (
        512, 256, 6, 8, (1, 2, 3, 4, 5, 6, 7, 8))
    with torch.device("meta"):
        model = VAR(preset_config("large"))
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


@pytest.mark.parametrize("depth, gamma", [(16, 1e-3), (20, 1e-3), (24, 1e-4), (30, 1e-5), (36, 5e-6),
                                          (8, 1e-3), (22, 1e-3), (27, 1e-4), (33, 1e-5), (40, 5e-6)])
def test_adaln_gates_start_at_the_reference_scale_for_the_depth(depth, gamma):
    """The listed depths take the README's --alng; the others that of the deepest listed depth at or below."""
    from var.transformer import default_adaln_gamma
    assert default_adaln_gamma(depth) == gamma


def test_a_deep_model_is_initialised_with_its_depths_gate_scale():
    torch.manual_seed(0)
    C = 64
    var = VAR(VARConfig(vocab_size=16, latent_channels=4, num_classes=2, depth=30, embed_dim=C, num_heads=2,
                        patch_nums=(1, 2)))
    gates = var.blocks[0].ada_lin[1].weight[:2 * C]
    assert gates.std().item() == pytest.approx(1e-5 * (1 / C / 3) ** 0.5, rel=0.2)
