"""Winograd 3x3 convolutions: the same function as a direct convolution, taken only where it applies."""
import pytest
import torch
import torch.nn.functional as F

from var.cpu import plain, winograd
from var.cpu.winograd import WinogradConv2d, winograd_conv3x3, winograd_weight
from var.vqvae import ResnetBlock
from conftest import small_pipe


def _close_to_direct(got, x, weight, bias):
    want = F.conv2d(x, weight, bias, padding=1)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("tile_rows_target", [128, 24, 4])  # one strip / strips of 3 then 1 / one tile row each
@pytest.mark.parametrize("use_bias", [True, False])
def test_matches_direct_convolution(tile_rows_target, use_bias, monkeypatch):
    monkeypatch.setattr(winograd, "TILE_ROWS_TARGET", tile_rows_target)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, 20).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(7, 5, 3, 3), torch.randn(7)
    got = winograd_conv3x3(x, winograd_weight(weight), bias if use_bias else None)
    _close_to_direct(got, x, weight, bias if use_bias else None)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_rejects_sides_that_are_not_multiples_of_four():
    with pytest.raises(ValueError, match="multiples of 4, got 10x12"):
        winograd_conv3x3(torch.randn(1, 2, 10, 12), winograd_weight(torch.randn(3, 2, 3, 3)), None)


def _small_winograd_conv():
    torch.manual_seed(0)
    conv = WinogradConv2d(6, 4)
    conv.MIN_CHANNELS, conv.MIN_SIDE = 1, 8  # the real thresholds are for the d16 decoder's sizes
    return conv


def test_module_takes_winograd_only_where_it_applies():
    conv = _small_winograd_conv()
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        _close_to_direct(conv(x), x, conv.weight, conv.bias)
        assert conv._transformed.value is not None                    # the Winograd path ran
        for other in (torch.randn(1, 6, 4, 4), torch.randn(1, 6, 8, 10), x.double()):  # too small, not /4, fp64
            assert not conv._applies(other)
    assert not conv._applies(x)                                       # autograd: the direct convolution
    y = conv(x.requires_grad_())
    y.sum().backward()
    assert conv.weight.grad is not None
    conv.float()                                                      # moved or cast: the kernels are freed
    assert conv._transformed.value is None


def test_transformed_kernels_follow_the_weight():
    conv = _small_winograd_conv()
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(-3.0)
        _close_to_direct(conv(x), x, conv.weight, conv.bias)


def test_transformed_kernels_follow_a_fused_optimizer_step():
    conv = _small_winograd_conv()
    opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)  # steps without bumping the version
    x = torch.randn(1, 6, 8, 8)
    for _ in range(2):
        with torch.no_grad():
            _close_to_direct(conv(x), x, conv.weight, conv.bias)
            assert conv._transformed.value is not None
        conv(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        _close_to_direct(conv(x), x, conv.weight, conv.bias)


def test_cpu_pipeline_decodes_with_winograd_like_the_direct_convolutions():
    pipe = small_pipe()
    convs = [m for m in pipe.vqvae.decoder.modules() if isinstance(m, WinogradConv2d)]
    blocks = [m for m in pipe.vqvae.decoder.modules() if isinstance(m, ResnetBlock)]
    assert len(convs) == 2 * len(blocks) > 0                          # conv1 and conv2 of every residual block
    assert not any(isinstance(m, WinogradConv2d) for m in pipe.vqvae.encoder.modules())  # tokens as elsewhere
    for m in convs:
        m.MIN_CHANNELS, m.MIN_SIDE = 1, 4
    f_hat = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        fast = pipe.vqvae.decode_latent(f_hat)
        assert all(m._transformed.value is not None for m in convs)
        plain(pipe.vqvae.decoder)
        torch.testing.assert_close(fast, pipe.vqvae.decode_latent(f_hat), atol=1e-4, rtol=0)


def test_compiled_code_uses_the_direct_convolution(monkeypatch):
    conv = _small_winograd_conv()
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        assert conv._applies(x)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as inside torch.compile's tracing
        assert not conv._applies(x)


def test_output_keeps_the_input_memory_format():
    x = torch.randn(1, 3, 8, 8)
    w = winograd_weight(torch.randn(4, 3, 3, 3))
    assert winograd_conv3x3(x, w, None).is_contiguous()
    assert winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), w, None).is_contiguous(
        memory_format=torch.channels_last)
