"""Compiled paths (VARPipeline.compile, the trainers' compile, --compile): the same results as eager.

Most tests trace with torch.compile's "eager" and "aot_eager" backends, which run Dynamo (and AOTAutograd's
forward and backward tracing) without building kernels: seconds instead of the ~25-40 s inductor takes to
build C++ kernels for even a tiny model on a 2-core CPU. One test, marked slow, builds them.
"""
import logging

import pytest
import torch
from torch._dynamo.utils import counters

from var import VAR, VARConfig, VARPipeline, VQVAE, VQVAEConfig
from var.cmd.common import load_pipeline
from var.cli import build_parser
from var.cpu import CPU_LAYERS
from var.pipeline import check_compile_backend
from var.training.common import Schedule
from var.training.runs import VAR_BETAS, VQVAE_BETAS, make_optimizer, train_var
from var.training.trainers import PatchDiscriminator, VARTrainer, VQVAETrainer
from conftest import TINY_VAE, cli, mnist_sized_pipe


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts from no compiled code and zeroed counters (graphs, graph breaks)."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _pipe() -> VARPipeline:
    """mnist_sized_pipe with two blocks: the blocks share their compiled graphs."""
    pipe = mnist_sized_pipe()
    torch.manual_seed(1)
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=10, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=pipe.patch_nums))
    return VARPipeline(pipe.vqvae, var, class_names=pipe.class_names)


def _same_outputs(a, b) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-5)


def test_compiled_generation_equals_eager_and_traces_without_graph_breaks(caplog):
    pipe = _pipe()
    calls = [dict(class_labels=[1, 2, 3], seed=0), dict(class_labels=[4, 5, 6, 7, 8], seed=1, cfg_scales=2),
             dict(class_labels=[0, 9], seed=2, cfg=0.0, top_k=0, top_p=0.0)]
    eager = [pipe(**call) for call in calls]
    assert pipe.compile(backend="eager") is pipe and pipe.compiled
    with caplog.at_level(logging.INFO, logger="var.pipeline"):
        compiled = [pipe(**call) for call in calls]
    for a, b in zip(eager, compiled):
        _same_outputs(a, b)
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks did run compiled
    assert not counters["graph_break"], dict(counters["graph_break"])  # every block is one graph
    first = [r.getMessage() for r in caplog.records if "compiled generation" in r.getMessage()]
    assert len(first) == 1 and "the first call took" in first[0]  # logged once, for the call that compiled


def test_compiled_transformer_keeps_its_plain_layers_on_the_cpu():
    pipe = _pipe().compile(backend="eager").to("cpu")
    assert not any(isinstance(m, CPU_LAYERS) for m in pipe.var.modules())  # their packed weights would go unused
    assert any(isinstance(m, CPU_LAYERS) for m in pipe.vqvae.decoder.modules())  # the eager decoder keeps its own


def test_pipelines_load_compiled(tmp_path):
    _pipe().save_pretrained(tmp_path / "saved")
    assert VARPipeline.from_pretrained(tmp_path / "saved", compile=True).compiled
    assert not VARPipeline.from_pretrained(tmp_path / "saved").compiled


def test_compiled_teacher_forced_logits_equal_eager():
    pipe = _pipe()
    tokens = pipe([3, 4], seed=0).tokens
    eager = pipe.logits(tokens, [3, 4])
    torch.testing.assert_close(pipe.compile(backend="eager").logits(tokens, [3, 4]), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_compiled_generation_equals_eager():
    """Builds the C++ kernels (about 25 s on a busy 2-core CPU, a few seconds with inductor's cache warm)."""
    pipe = _pipe()
    eager = pipe([1, 2], seed=0)
    _same_outputs(eager, pipe.compile()([1, 2], seed=0))


def test_compile_checks_its_backend_and_the_cpu_compiler(monkeypatch):
    with pytest.raises(ValueError, match="unknown compile backend 'tvm'; expected one of inductor, eager"):
        check_compile_backend("tvm", "cpu")
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(RuntimeError, match=r"'no-such-c\+\+' is not on the PATH \(\$CXX\): install one"):
        _pipe().compile()
    check_compile_backend("eager", "cpu")  # traces only: no compiler needed


def _var_trainer(compiled: bool) -> VARTrainer:
    torch.manual_seed(0)
    vae = VQVAE(TINY_VAE)
    # No label dropout nor stochastic depth: compiled code draws its own random numbers for them.
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=10, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=TINY_VAE.patch_nums, cond_drop_rate=0.0, drop_path_rate=0.0))
    trainer = VARTrainer(var, vae, make_optimizer(var, Schedule(steps=3, batch_size=4), VAR_BETAS), ema_decay=0.9)
    if compiled:
        trainer.compile(backend="aot_eager")
    return trainer


def _vae_trainer(compiled: bool) -> VQVAETrainer:
    torch.manual_seed(0)
    vae, disc = VQVAE(TINY_VAE), PatchDiscriminator(3)
    trainer = VQVAETrainer(vae, make_optimizer(vae, Schedule(steps=3, batch_size=4), VQVAE_BETAS), disc=disc,
                           disc_optimizer=torch.optim.AdamW(disc.parameters()), adv_weight=0.1)
    if compiled:
        trainer.compile(backend="aot_eager")
    return trainer


@pytest.mark.parametrize("make", [_var_trainer, _vae_trainer], ids=["transformer", "tokenizer"])
def test_compiled_training_steps_equal_eager(make, caplog):
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(4)
    batch = ((torch.randint(32, (4, 85), generator=gen), labels) if make is _var_trainer
             else (torch.rand(4, 3, 16, 16, generator=gen), labels))
    eager, compiled = make(False), make(True)
    with caplog.at_level(logging.INFO, logger="var.training.trainers"):
        for _ in range(3):
            a, b = eager.train_step(batch), compiled.train_step(batch)
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert counters["stats"]["unique_graphs"] >= 1
    if make is _var_trainer:  # the transformer breaks its graph only around the label check, quietly
        assert counters["graph_break"] and all("torch.compiler.disable" in reason
                                               for reason in counters["graph_break"]), dict(counters["graph_break"])
    assert sum("compiled training: the first step took" in r.getMessage() for r in caplog.records) == 1
    # the trainers' own models are the eager ones: what checkpoints, EMA and samples use
    assert not isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)


def test_training_refuses_compile_with_fsdp_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"compiling a sharded transformer \(--fsdp\) is not supported"):
        train_var("fashion-mnist", tmp_path / "no-vae", tmp_path / "out", VARConfig(), Schedule(), fsdp=True,
                  compile=True)


@pytest.mark.parametrize("command", ["sample", "eval", "serve", "edit", "vary"])
def test_generating_commands_take_compile(command):
    argv = [command, "--compile"] + {"edit": ["--image", "x.png", "--box", "0,0,1,1", "--out", "y.png"],
                                     "vary": ["--image", "x.png", "--keep-scales", "1", "--out", "y.png"]}.get(command, [])
    pipe = load_pipeline(build_parser().parse_args(argv))
    assert pipe.compiled


@pytest.mark.parametrize("command, runner", [("train", "train_var"), ("train-vae", "train_vqvae")])
def test_training_commands_pass_compile_on(monkeypatch, command, runner):
    from var.training import runs
    seen = {}
    monkeypatch.setattr(runs, runner, lambda *a, **k: seen.update(k) or {})
    assert cli([command, "--data", "fashion-mnist", "--steps", "2", "--compile"]) == 0
    assert seen["compile"] is True
