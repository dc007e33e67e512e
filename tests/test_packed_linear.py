"""Packed linear weights: the same function as nn.Linear, only taken where it applies, and never stale."""
import pytest
import torch
import torch.nn.functional as F

from var.cpu import accelerate, plain
from var.cpu.packed_linear import PackedLinear, packing_available
from var.sampling import generate
from var.transformer import Linear
from conftest import linear_reference, small_pipe


pytestmark = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")


def _packed_layer(seed=0):
    torch.manual_seed(seed)
    layer = PackedLinear(24, 40)
    layer.pack()
    return layer


@pytest.mark.parametrize("gelu", [False, True])
def test_packed_forward_matches_linear(gelu):
    layer = _packed_layer()
    x = torch.randn(3, 5, 24)
    bias = torch.randn(40)
    with torch.no_grad():
        for b in (None, bias):
            want = linear_reference(layer, x, b, gelu)
            got = layer(x, bias=b, gelu=gelu)
            assert layer._packed_weight(x) is not None  # the packed path really ran
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packed_copy_follows_the_weight():
    layer = _packed_layer()
    x = torch.randn(4, 24)
    with torch.no_grad():
        layer.weight.mul_(-2.0)                       # in place: same storage, new version
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.load_state_dict(_packed_layer(seed=1).state_dict())
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.weight = torch.nn.Parameter(torch.randn(40, 24))  # a new parameter object
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["fused", "foreach"])
def test_packed_copy_follows_optimizer_steps(optimizer):
    """Fused AdamW updates weights without bumping their version counter: the gradients it steps on
    must still retire the packed copy, also when inference runs between backward and step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(PackedLinear(24, 40), torch.nn.Tanh(), PackedLinear(40, 8))
    for m in (model[0], model[2]):
        m.pack()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, **{optimizer: True})
    x = torch.randn(6, 24)

    def plain(inp):
        return F.linear(torch.tanh(F.linear(inp, model[0].weight, model[0].bias)), model[2].weight, model[2].bias)

    for step in range(3):
        with torch.no_grad():
            torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)
            assert model[0]._packed_weight(x) is not None
        model(x).square().mean().backward()
        if step == 1:  # inference while a gradient is pending, before the step
            with torch.no_grad():
                torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)


def test_a_weight_frozen_when_packed_and_trained_later_is_repacked():
    """Packed while frozen (no gradient hook yet), then trained by fused AdamW, whose steps move no version
    counter: the copy made while frozen must not be served once the weight can be trained."""
    torch.manual_seed(0)
    layer = PackedLinear(24, 40).requires_grad_(False)
    layer.pack()
    x = torch.randn(4, 24)
    with torch.no_grad():
        layer(x)
    layer.requires_grad_(True)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    for _ in range(2):
        layer(x).square().sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_packing_again_and_again_keeps_one_gradient_hook():
    """Each accelerate / plain (a training snapshot's) watches the weight's gradients; the hook of a dropped
    copy goes with it instead of piling up on the weight and running at every backward."""
    import gc
    torch.manual_seed(0)
    model = torch.nn.Sequential(Linear(24, 40))
    weight, x = model[0].weight, torch.randn(4, 24)
    for _ in range(4):
        accelerate(model)
        with torch.no_grad():
            model(x)
        plain(model)
        gc.collect()
    assert len(weight._post_accumulate_grad_hooks or {}) == 0
    accelerate(model)
    assert len(weight._post_accumulate_grad_hooks) == 1


def test_pack_repacks_the_current_weight():
    layer = _packed_layer()
    x = torch.randn(4, 24)
    layer.weight.data.mul_(-1)      # through .data: no version counter moves, so the cache cannot see it
    layer.pack()                    # an explicit pack takes the weight as it is now
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_autograd_and_other_dtypes_take_the_plain_path():
    layer = _packed_layer()
    x = torch.randn(4, 24, requires_grad=True)
    y = layer(x, gelu=True)
    assert y.requires_grad
    y.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    with torch.no_grad():
        assert layer._packed_weight(x.double()) is None
        assert layer.double()(x.double()).dtype == torch.float64


def _packed_and_plain_linears(model):
    return ([m for m in model.modules() if isinstance(m, PackedLinear)],
            [m for m in model.modules() if type(m) is Linear])


def test_pipeline_packing_and_plain():
    pipe = small_pipe()
    packed, unpacked = _packed_and_plain_linears(pipe.var)
    assert packed and not unpacked  # a CPU pipeline packs its transformer
    labels = torch.tensor([0, 3])
    with_packing = generate(pipe.var, pipe.vqvae, labels, cfg=2.0, top_k=1)
    plain(pipe.var)
    packed_after, unpacked_after = _packed_and_plain_linears(pipe.var)
    assert not packed_after and len(unpacked_after) == len(packed)
    without = generate(pipe.var, pipe.vqvae, labels, cfg=2.0, top_k=1)
    assert all(torch.equal(a, b) for a, b in zip(with_packing[1], without[1], strict=True))
    torch.testing.assert_close(with_packing[0], without[0], atol=1e-5, rtol=0)


def test_pipeline_does_not_pack_what_would_crowd_the_memory(monkeypatch):
    import var.cpu.swap
    weights = sum(m.weight.numel() * 4 for m in small_pipe().var.modules() if isinstance(m, torch.nn.Linear))
    monkeypatch.setattr(var.cpu.swap, "total_memory_bytes", lambda: 4 * weights - 4)
    pipe = small_pipe()
    packed, unpacked = _packed_and_plain_linears(pipe.var)
    assert unpacked and not packed
    monkeypatch.setattr(var.cpu.swap, "total_memory_bytes", lambda: 4 * weights)
    pipe.to("cpu")
    packed, unpacked = _packed_and_plain_linears(pipe.var)
    assert packed and not unpacked


def test_compiled_code_uses_the_plain_linear(monkeypatch):
    layer = _packed_layer()
    x = torch.randn(4, 24)
    with torch.no_grad():
        assert layer._packed_weight(x) is not None
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as inside torch.compile's tracing
        assert layer._packed_weight(x) is None


def test_cache_is_not_fooled_by_a_reused_address():
    from var.cpu.weight_cache import DerivedWeight
    lin = torch.nn.Linear(64, 64)
    cache = DerivedWeight(lambda w: w.clone())
    cache.get(lin.weight)
    for _ in range(3):  # freed storages are often handed out again at the same address
        lin.weight.data = torch.randn(64, 64)
        lin.weight.data = torch.randn(64, 64)
        assert torch.equal(cache.get(lin.weight), lin.weight)


def test_packed_modules_copy_save_and_move(tmp_path):
    import copy
    pipe = small_pipe()
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        pipe.vqvae.decode_latent(torch.randn(1, 8, 4, 4))         # fills the decoder's caches
    twin = copy.deepcopy(pipe.var)                                # e.g. the trainer's EMA copy
    torch.save(pipe.var, tmp_path / "var.pt")
    torch.save(pipe.vqvae, tmp_path / "vqvae.pt")
    loaded = torch.load(tmp_path / "var.pt", weights_only=False)
    want = generate(pipe.var, pipe.vqvae, labels, cfg=2.0, top_k=1)[1]
    for other in (twin, loaded):
        got = generate(other, pipe.vqvae, labels, cfg=2.0, top_k=1)[1]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    head = pipe.var.head
    assert head._packed.value is not None
    pipe.var.double()                                             # moving or casting frees the packed copy
    assert head._packed.value is None


def test_pipeline_can_be_built_in_inference_mode():
    with torch.inference_mode():
        pipe = small_pipe()
        tokens = generate(pipe.var, pipe.vqvae, torch.tensor([0]), cfg=2.0, top_k=1)[1]
    assert len(tokens) == len(pipe.patch_nums)
