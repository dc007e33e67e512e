"""var.cpu.accelerate / plain: the CPU layers take the plain layers' places with their parameters, compute
what they compute, and leave nothing behind on another device."""
import pytest
import torch

from var.cpu import accelerate, plain
from var.cpu.packed_linear import PackedLinear, packing_available
from var.cpu.upsample import FoldedUpsample
from var.cpu.winograd import WinogradConv2d
from var.transformer import VAR, Linear, VARConfig
from var.vqvae import VQVAE, ResnetBlock, Upsample, VQVAEConfig
from conftest import small_pipe

needs_packing = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")


def _models(seed: int = 0) -> tuple[VAR, VQVAE]:
    """A plain transformer and tokenizer (built directly, not by a pipeline), in eval mode."""
    torch.manual_seed(seed)
    var = VAR(VARConfig(vocab_size=48, latent_channels=8, num_classes=5, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=(1, 2, 3, 4)))
    vqvae = VQVAE(VQVAEConfig(in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                              vocab_size=48, patch_nums=(1, 2, 3, 4)))
    return var.eval(), vqvae.eval()


def _outputs(var: VAR, vqvae: VQVAE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, 48, (2, h * w), generator=g) for h, w in var.scales]
    with torch.no_grad():
        logits = var(torch.tensor([1, 4]), vqvae.quantize.teacher_forcing_input(tokens))
        images = vqvae.decode_latent(torch.randn(2, 8, 4, 4, generator=g))
    return logits, images


def _cpu_layers(*modules: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module of a class defined in var.cpu."""
    return [m for module in modules for m in module.modules() if type(m).__module__.startswith("var.cpu")]


@needs_packing
def test_accelerate_keeps_the_parameters_and_computes_the_plain_function():
    var, vqvae = _models()
    keys = [list(m.state_dict()) for m in (var, vqvae)]
    params = [dict(m.named_parameters()) for m in (var, vqvae)]
    types = {name: type(m) for name, m in (*var.named_modules(), *vqvae.named_modules())}
    want_logits, want_images = _outputs(var, vqvae)

    assert accelerate(var) is var and accelerate(vqvae) is vqvae
    linears = sum(t is Linear for t in types.values())
    assert sum(isinstance(m, PackedLinear) for m in var.modules()) == linears > 0
    assert sum(isinstance(m, WinogradConv2d) for m in vqvae.modules()) == \
        2 * sum(t is ResnetBlock for t in types.values()) > 0
    assert sum(isinstance(m, FoldedUpsample) for m in vqvae.modules()) == sum(t is Upsample for t in types.values()) > 0
    assert [list(m.state_dict()) for m in (var, vqvae)] == keys
    for model, before in zip((var, vqvae), params):
        after = dict(model.named_parameters())
        assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # the same objects
    for conv in (m for m in vqvae.modules() if isinstance(m, WinogradConv2d)):
        conv.MIN_CHANNELS, conv.MIN_SIDE = 1, 4  # the real thresholds are for the d16 decoder's sizes
    logits, images = _outputs(var, vqvae)
    assert any(m._transformed.value is not None for m in vqvae.modules() if isinstance(m, WinogradConv2d))
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(images, want_images, atol=1e-4, rtol=0)

    other_var, other_vqvae = _models(seed=1)  # loading weights: the packed and transformed copies follow
    var.load_state_dict(other_var.state_dict())
    vqvae.load_state_dict(other_vqvae.state_dict())
    for got, want in zip(_outputs(var, vqvae), _outputs(other_var, other_vqvae)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)

    accelerate(var)  # again: nothing left to swap
    assert sum(isinstance(m, PackedLinear) for m in var.modules()) == linears
    assert plain(var) is var and plain(vqvae) is vqvae
    assert not _cpu_layers(var, vqvae)
    assert {name: type(m) for name, m in (*var.named_modules(), *vqvae.named_modules())} == types
    for got, want in zip(_outputs(var, vqvae), _outputs(other_var, other_vqvae)):
        assert torch.equal(got, want)  # the plain layers again: the plain function, bit for bit


def test_a_pipeline_moved_off_the_cpu_holds_no_cpu_layer():
    pipe = small_pipe()
    keys = [list(m.state_dict()) for m in (pipe.var, pipe.vqvae)]
    assert _cpu_layers(pipe.var, pipe.vqvae)                  # on the CPU: swapped in
    assert not _cpu_layers(pipe.vqvae.encoder)                 # the encoder's tokens are those of any device
    pipe.to("meta")                                            # a device type other than the CPU
    assert pipe.device.type == "meta"
    assert not _cpu_layers(pipe.var, pipe.vqvae)
    assert [list(m.state_dict()) for m in (pipe.var, pipe.vqvae)] == keys


def test_accelerate_refuses_a_module_off_the_cpu():
    with torch.device("meta"):
        var, _ = _models()
    with pytest.raises(ValueError, match=r"tensors on \['meta'\]: move it to the CPU first"):
        accelerate(var)
    assert not _cpu_layers(var)

