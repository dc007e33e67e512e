"""The CPU speed-ups compute what plain PyTorch computes, also in the corner cases where a cached or packed copy
could fall behind the weight or get in the way: strided inputs, loads into inference tensors, swapped parameters."""
import pytest
import torch
import torch.nn.functional as F

from var.cpu.packed_linear import PackedLinear, packing_available
from var.cpu.winograd import WinogradConv2d
from conftest import small_pipe


needs_packing = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")


def _all_tokens(pipe, batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 48, (batch, h * w), generator=g) for h, w in pipe.scales]


def _winograd_everywhere(pipe) -> None:
    """Let the tiny decoder's convolutions take the Winograd path (the real thresholds are for d16's sizes)."""
    for m in pipe.vqvae.decoder.modules():
        if isinstance(m, WinogradConv2d):
            m.MIN_CHANNELS, m.MIN_SIDE = 1, 4


@needs_packing
@pytest.mark.parametrize("gelu", [False, True])
def test_packed_layer_takes_a_strided_bias_override(gelu):
    """oneDNN reads the bias as a dense vector: a strided one (a slice of a larger tensor) must give F.linear's
    result, not the numbers that happen to lie next to each other in memory."""
    torch.manual_seed(0)
    layer = PackedLinear(24, 40)
    layer.pack()
    x = torch.randn(3, 5, 24)
    bias = torch.randn(80)[::2]
    assert not bias.is_contiguous()
    with torch.no_grad():
        assert layer._packed_weight(x) is not None  # the packed path runs
        want = F.linear(x, layer.weight, bias)
        want = F.gelu(want, approximate="tanh") if gelu else want
        torch.testing.assert_close(layer(x, bias=bias, gelu=gelu), want, atol=1e-5, rtol=1e-5)


@needs_packing
def test_loading_weights_into_a_pipeline_made_in_inference_mode_is_seen():
    """A pipeline built under inference_mode holds inference tensors, whose in-place loads move no version
    counter: load_state_dict must still retire the packed weights, the Winograd kernels and the upsampling
    kernels, else the old model keeps running."""
    other = small_pipe(seed=1)
    _winograd_everywhere(other)
    labels, f_hat = torch.tensor([0, 3]), torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    tokens = _all_tokens(other, 2)
    want_logits = other.logits(tokens, labels)
    with torch.no_grad():
        want_images = other.vqvae.decode_latent(f_hat)
    with torch.inference_mode():
        pipe = small_pipe(seed=0)
        _winograd_everywhere(pipe)
        pipe.logits(tokens, labels)                # fills the packed copies
        pipe.vqvae.decode_latent(f_hat)            # fills the Winograd and upsampling kernels
        pipe.var.load_state_dict(other.var.state_dict())
        pipe.vqvae.load_state_dict(other.vqvae.state_dict())
        got_logits = pipe.logits(tokens, labels)
        got_images = pipe.vqvae.decode_latent(f_hat)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_images, want_images, atol=1e-4, rtol=0)


@pytest.fixture
def swapped_params():
    """PyTorch's opt-in (and announced future default): .to() and load_state_dict swap parameters in place,
    which refuses a tensor that something holds a weak reference to."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


@needs_packing
def test_used_models_can_be_cast_and_loaded_with_swapped_parameters(swapped_params):
    pipe = small_pipe()
    _winograd_everywhere(pipe)
    labels, f_hat = torch.tensor([1, 4]), torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    tokens = _all_tokens(pipe, 2)
    other = small_pipe(seed=1)
    _winograd_everywhere(other)
    for _ in range(2):  # the second round: caches re-made after the first cast and load
        pipe.logits(tokens, labels)
        with torch.no_grad():
            pipe.vqvae.decode_latent(f_hat)
        for model in (pipe.var, pipe.vqvae):
            model.to(torch.float64)
            model.to(torch.float32)
        pipe.var.load_state_dict(other.var.state_dict())
        pipe.vqvae.load_state_dict(other.vqvae.state_dict())
    torch.testing.assert_close(pipe.logits(tokens, labels), other.logits(tokens, labels), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(pipe.vqvae.decode_latent(f_hat), other.vqvae.decode_latent(f_hat),
                                   atol=1e-4, rtol=0)
    assert all(isinstance(m, PackedLinear) for m in pipe.var.modules() if isinstance(m, torch.nn.Linear))


def test_an_empty_batch_decodes_as_the_plain_decoder_does():
    """Splitting an empty batch into streams must not ask for zero streams: the plain decoder returns an
    empty batch of images, and so must the pipeline's decoding (in streams on the CPU)."""
    pipe = small_pipe()
    f_hat = torch.randn(0, 8, 4, 4)
    with torch.no_grad():
        want = pipe.vqvae.decoder(pipe.vqvae.post_quant_conv(f_hat)).clamp(-1, 1)
    got = pipe.decode([torch.zeros(0, h * w, dtype=torch.long) for h, w in pipe.scales])
    assert got.shape == want.shape == (0, 3, 8, 8)
