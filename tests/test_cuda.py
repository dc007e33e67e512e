"""What needs a CUDA GPU: the models on the GPU against the CPU, bf16, and the compiled paths with Triton kernels.

Marked ``cuda``: skipped without a GPU (benchmarks/gpu_check.sh runs them with ``-m cuda``). The CPU dry run of
that script sets ``VAR_CUDA_TESTS_DEVICE=cpu``, which runs them on the CPU instead (compiling with the
eager and aot_eager backends, which build no kernels), so that the tests themselves are exercised before a GPU is at
hand; they then check the CPU against itself.
"""
import os

import pytest
import torch

from var import VAR, VARConfig, VARPipeline, VQVAE
from var.cpu import CPU_LAYERS
from var.training.common import Schedule
from var.training.runs import VAR_BETAS, make_optimizer
from var.training.trainers import VARTrainer
from conftest import TINY_VAE

DEVICE = torch.device(os.environ.get("VAR_CUDA_TESTS_DEVICE", "cuda"))
# On the CPU: Dynamo's tracing alone for generation, AOTAutograd's too for training (no kernels are built).
GENERATION_BACKEND, TRAINING_BACKEND = ("inductor", "inductor") if DEVICE.type == "cuda" else ("eager", "aot_eager")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _pipes() -> tuple[VARPipeline, VARPipeline]:
    """The same small random model on the CPU and on DEVICE."""
    def build():
        torch.manual_seed(0)
        var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=10, depth=2, embed_dim=64, num_heads=2,
                            patch_nums=TINY_VAE.patch_nums))
        return VARPipeline(VQVAE(TINY_VAE), var)
    return build(), build().to(DEVICE)


def test_the_gpu_computes_what_the_cpu_does():
    cpu, gpu = _pipes()
    assert gpu.device.type == DEVICE.type
    if DEVICE.type == "cuda":
        assert not any(isinstance(m, CPU_LAYERS) for m in (*gpu.var.modules(), *gpu.vqvae.modules()))
    greedy = dict(class_labels=[1, 2, 3], top_k=1, seed=0)
    a, b = cpu(**greedy), gpu(**greedy)
    assert all(torch.equal(x, y.cpu()) for x, y in zip(a.tokens, b.tokens, strict=True))
    torch.testing.assert_close(b.images.cpu(), a.images, rtol=0, atol=1e-3)  # cuDNN's convolutions may use TF32
    torch.testing.assert_close(gpu.logits(b.tokens, [1, 2, 3]).cpu(), cpu.logits(a.tokens, [1, 2, 3]),
                               rtol=1e-4, atol=1e-4)


def test_seeded_generation_repeats_on_the_gpu_and_bf16_gives_images():
    _, gpu = _pipes()
    first, again = gpu([0, 5], seed=3), gpu([0, 5], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(first.tokens, again.tokens))
    out = gpu.use_dtype("bf16", force=True)([0, 5, 7], seed=3, cfg_scales=2)
    assert out.images.dtype == torch.float32 and out.images.isfinite().all()
    assert 0 <= out.images.min() and out.images.max() <= 1 and len(out.tokens) == len(gpu.scales)


def test_compiled_generation_on_the_gpu_equals_eager():
    _, gpu = _pipes()
    calls = [dict(class_labels=[1, 2], seed=0), dict(class_labels=[3, 4, 5, 6], seed=1, cfg_scales=2)]
    eager = [gpu(**call) for call in calls]
    gpu.compile(backend=GENERATION_BACKEND)
    for call, a in zip(calls, eager):
        b = gpu(**call)
        assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
        torch.testing.assert_close(b.images, a.images, rtol=0, atol=1e-4)


def _trainer(device: torch.device, compiled: bool = False, amp: bool = False) -> VARTrainer:
    torch.manual_seed(0)
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=10, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=TINY_VAE.patch_nums, cond_drop_rate=0.0, drop_path_rate=0.0)).to(device)
    vae = VQVAE(TINY_VAE).to(device)
    trainer = VARTrainer(var, vae, make_optimizer(var, Schedule(steps=3, batch_size=4), VAR_BETAS), device, amp=amp)
    if compiled:
        trainer.compile(backend=TRAINING_BACKEND)
    return trainer


def test_training_steps_on_the_gpu_equal_the_cpu_and_compiled_ones():
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randint(32, (4, 85), generator=gen), torch.arange(4))
    cpu, gpu, compiled = _trainer(torch.device("cpu")), _trainer(DEVICE), _trainer(DEVICE, compiled=True)
    for _ in range(3):
        losses = [t.train_step(batch)["loss"] for t in (cpu, gpu, compiled)]
        assert losses[1] == pytest.approx(losses[0], rel=1e-4) and losses[2] == pytest.approx(losses[1], rel=1e-4)
    bf16 = _trainer(DEVICE, amp=True)
    assert bf16.amp_dtype == torch.bfloat16
    assert abs(bf16.train_step(batch)["loss"] - _trainer(DEVICE).train_step(batch)["loss"]) < 0.05
