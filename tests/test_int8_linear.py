"""int8 linear layers (``fast`` generation): close to the float32 layer, taken only where they apply, never
stale, and a fast transformer that shares the pipeline's weights."""
import pytest
import torch
import torch.nn.functional as F

from var import VARPipeline
from var.cpu import int8_available, int8_copy
from var.cpu.int8_linear import INT8_MIN_ROWS, Int8Linear, quantize_rows
from var.cpu.packed_linear import PackedLinear
from var.transformer import Linear
from conftest import linear_reference, small_pipe

pytestmark = pytest.mark.skipif(not int8_available(), reason="this PyTorch build has no int8 products on the CPU")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def test_quantized_rows_round_to_within_half_a_step():
    x = torch.randn(50, 33) * torch.logspace(-3, 3, 50).unsqueeze(1)   # rows of very different magnitudes
    codes, scale = quantize_rows(x)
    assert codes.dtype == torch.int8 and codes.abs().amax(1).eq(127).all()   # each row uses the full range
    assert ((codes.float() * scale - x).abs() <= scale / 2 + 1e-6 * x.abs()).all()


@pytest.mark.parametrize("gelu", [False, True])
def test_int8_forward_is_close_to_the_float_layer(gelu):
    torch.manual_seed(0)
    layer = Int8Linear(256, 512)
    x = torch.randn(2, 40, 256)
    bias = torch.randn(512)
    with torch.no_grad():
        for b in (None, bias):
            want = linear_reference(layer, x, b, gelu)
            got = layer(x, bias=b, gelu=gelu)
            assert layer._int8.value is not None                   # the int8 path ran
            assert got.shape == want.shape
            assert 1e-4 < relative_error(got, want) < 0.02         # rounded, but by 8-bit steps only


def test_int8_is_taken_only_where_it_applies():
    """Gradients, other dtypes and small products (below INT8_MIN_ROWS rows of a small layer) run the float32
    layer exactly; the int8 copy follows a changed weight."""
    torch.manual_seed(1)
    layer = Int8Linear(64, 96)
    small, large = torch.randn(INT8_MIN_ROWS - 1, 64), torch.randn(INT8_MIN_ROWS, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(small), F.linear(small, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        assert layer._int8.value is None
        assert relative_error(layer(large), F.linear(large, layer.weight, layer.bias)) > 1e-4
        assert layer._int8.value is not None
        layer.weight.mul_(-2)                                      # an in-place edit: re-quantized
        assert relative_error(layer(large), F.linear(large, layer.weight, layer.bias)) < 0.02
    y = layer(large)                                               # autograd: the float layer, exactly
    torch.testing.assert_close(y, F.linear(large, layer.weight, layer.bias))
    y.sum().backward()
    assert layer.weight.grad is not None
    layer._int8.clear()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):   # autocast: the layer's own bf16 product
        assert layer(large).dtype == torch.bfloat16 and layer._int8.value is None


def test_the_int8_copy_shares_the_weights_and_leaves_the_original_alone():
    pipe = small_pipe()
    twin = int8_copy(pipe.var)
    linears = [(n, m) for n, m in pipe.var.named_modules() if isinstance(m, Linear)]
    assert linears and all(type(m) is not Int8Linear for _, m in linears)
    copies = dict(twin.named_modules())
    for name, m in linears:
        assert type(copies[name]) is Int8Linear
        assert copies[name].weight is m.weight and copies[name].bias is m.bias
        if isinstance(m, PackedLinear):
            assert copies[name]._packed is m._packed                # one packed copy, not two
    assert all(a is b for a, b in zip(twin.parameters(), pipe.var.parameters(), strict=True))
    assert all(a is b for a, b in zip(twin.buffers(), pipe.var.buffers(), strict=True))


def test_fast_calls_run_the_int8_transformer_and_it_predicts_as_the_float_one():
    """On a trained model: teacher-forced through the fast transformer, the logits are those of the float
    one to a few percent and pick the same token almost everywhere; fast generation changes the images a
    little (a different sample), and bf16 leaves the layers as they are."""
    pipe = VARPipeline.from_pretrained("fashion-mnist")
    out = pipe(class_labels=list(range(10)), seed=0)
    fast = pipe.fast_transformer()
    assert fast is not pipe.var and pipe.fast_transformer() is fast   # made once, kept
    labels = out.labels
    x = pipe.vqvae.quantize.teacher_forcing_input(out.tokens)
    with torch.no_grad():
        want, got = pipe.var(labels, x), fast(labels, x)
    assert relative_error(got, want) < 0.05
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    quick = pipe(class_labels=list(range(10)), seed=0, fast=True)
    assert not torch.equal(quick.images, out.images)
    torch.testing.assert_close(quick.images, pipe.decode(quick.tokens), atol=1e-5, rtol=0)
    assert pipe.use_dtype("bf16", force=True).fast_transformer() is pipe.var
    assert pipe.use_dtype("fp32").fast_transformer() is fast
