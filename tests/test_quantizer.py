"""The multi-scale quantizer (var.quantizer): codebook initialisation and lookup, float32 under autocast, dead codes."""
import pytest
import torch

from var import VARPipeline, VQVAE, VQVAEConfig
from conftest import TINY_VAE, small_pipe


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


def test_dead_codes_are_recovered():
    torch.manual_seed(0)
    vqvae = VQVAE(TINY_VAE)
    q = vqvae.quantize
    with torch.no_grad():
        q.embedding.weight[16:] += 1000.0  # half the codebook far away: never the nearest code
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    vqvae.train()
    for _ in range(3):
        vqvae(x)
    used_before = torch.cat(vqvae.img_to_indices(x), 1).unique()
    assert used_before.max() < 16
    unused = (q.ema_vocab_hit_SV.max(0).values < 1e-6).nonzero().flatten().tolist()
    assert set(range(16, 32)) <= set(unused)
    f = vqvae.encode_latent(x).detach()
    reset = q.reinit_dead_codes(f.permute(0, 2, 3, 1).reshape(-1, 8))
    assert set(range(16, 32)) <= set(reset.tolist())
    used_after = torch.cat(vqvae.img_to_indices(x), 1).unique()
    assert (used_after >= 16).any(), "re-initialised codes are used again"
