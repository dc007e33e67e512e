"""Compute precision: dtype names, the bf16 hardware check and its fp32 fallback, bf16 through the pipeline,
the commands and training. The CPU's bf16 support is pretended either way, so both paths run on any machine."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from var import VARPipeline, precision
from var.cli import build_parser, main as cli
from var.sampling import generate
from var.training.trainers import VQVAETrainer
from var.vqvae import VQVAE
from conftest import TINY_VAE, small_pipe, subcommands


def pretend_cpu(monkeypatch, bf16: bool, amx: bool = False) -> None:
    """Make torch's CPU capability checks answer as a CPU with (or without) AVX512-BF16 and AMX would."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def autocast_during(pipe: VARPipeline, run) -> dict[str, set]:
    """The autocast dtype in force (None: no autocast) each time the transformer's head, the encoder and the
    decoder ran during ``run()``."""
    modules = {"transformer": pipe.var.head, "encoder": pipe.vqvae.encoder, "decoder": pipe.vqvae.decoder}
    seen: dict[str, set] = {name: set() for name in modules}

    def recorder(name):
        def hook(module, args):
            seen[name].add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return hook

    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in modules.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def an_edit(pipe: VARPipeline):
    """Encode, generate and decode: a variation of two fixed images."""
    images = torch.rand(2, 3, *pipe.image_hw, generator=torch.Generator().manual_seed(0))
    return pipe.vary(images, keep_scales=1, class_labels=[1, 2], seed=5)


# ------------------------------------------------------------------------------------------ the decision
def test_dtype_names_and_errors():
    assert precision.resolve_dtype("bf16") is torch.bfloat16 and precision.resolve_dtype(torch.float32) is torch.float32
    assert precision.dtype_name(torch.bfloat16) == "bf16"
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'; expected one of \['fp32', 'bf16', 'fp16'\]"):
        precision.resolve_dtype("fp8")
    with pytest.raises(ValueError, match=r"unknown dtype 'fp16'; expected one of \['fp32', 'bf16'\]"):
        small_pipe().use_dtype("fp16")
    with pytest.raises(ValueError, match=r"unknown dtype torch.float64"):
        VARPipeline.from_pretrained("no-such-model", dtype=torch.float64)   # refused before looking for the model


@pytest.mark.parametrize("bf16, amx", [(True, False), (False, True)])
def test_bf16_runs_where_the_cpu_has_avx512_bf16_or_amx(monkeypatch, caplog, bf16, amx):
    pretend_cpu(monkeypatch, bf16=bf16, amx=amx)
    with caplog.at_level(logging.INFO):
        assert precision.choose_dtype("bf16", "cpu") is torch.bfloat16
    assert precision.emulated_reason(torch.bfloat16, "cpu") is None and not caplog.text


def test_without_bf16_the_cpu_falls_back_to_fp32_with_a_note_unless_forced(monkeypatch, caplog):
    pretend_cpu(monkeypatch, bf16=False)
    with caplog.at_level(logging.INFO):
        assert precision.choose_dtype("bf16", "cpu") is torch.float32
    assert "neither AMX nor AVX512-BF16" in caplog.text and "running fp32 instead" in caplog.text
    assert "--force-dtype" in caplog.text and "force_dtype=True" in caplog.text   # says how to force it
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert precision.choose_dtype(torch.bfloat16, "cpu", force=True) is torch.bfloat16
        assert "running bf16 anyway, slower than fp32" in caplog.text
        caplog.clear()
        assert precision.choose_dtype("fp32", "cpu") is torch.float32
    assert not caplog.text


# ------------------------------------------------------------------------------------------ the pipeline
def test_fp32_is_the_default_and_runs_without_autocast_bit_for_bit():
    """What the pipeline made before it had a dtype: generate + decode_latent, no autocast anywhere."""
    pipe = small_pipe()
    assert pipe.compute_dtype is torch.float32
    labels = torch.tensor([0, 3, 4])
    seen = autocast_during(pipe, lambda: an_edit(pipe))
    assert seen == {"transformer": {None}, "encoder": {None}, "decoder": {None}}
    out = pipe(class_labels=labels, seed=3)
    f_hat, tokens = generate(pipe.var, pipe.vqvae, labels, cfg=1.5, top_k=900, top_p=0.96,
                             generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        images = ((pipe.vqvae.decode_latent(f_hat) + 1) / 2).clamp(0, 1)
    assert torch.equal(out.images, images) and all(torch.equal(a, b) for a, b in zip(out.tokens, tokens))
    explicit = pipe.use_dtype("fp32")(class_labels=labels, seed=3)
    assert torch.equal(explicit.images, out.images)


def test_bf16_runs_every_model_under_autocast_where_the_cpu_has_it(monkeypatch, caplog):
    pretend_cpu(monkeypatch, bf16=True)
    pipe = small_pipe()
    fp32 = an_edit(pipe)
    with caplog.at_level(logging.INFO):
        pipe.use_dtype(torch.bfloat16)
    assert pipe.compute_dtype is torch.bfloat16 and "note" not in caplog.text
    results = []
    seen = autocast_during(pipe, lambda: results.append(an_edit(pipe)))
    assert seen == {"transformer": {torch.bfloat16}, "encoder": {torch.bfloat16}, "decoder": {torch.bfloat16}}
    images = results[0].images
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert not torch.equal(images, fp32.images)        # bf16 rounding shows in the pixels
    tokens = pipe.encode(images)
    assert pipe.logits(tokens, [1, 2]).dtype == torch.float32


def test_bf16_falls_back_to_fp32_on_a_cpu_without_it_unless_forced(monkeypatch, caplog):
    pretend_cpu(monkeypatch, bf16=False)
    pipe = small_pipe()
    fp32 = an_edit(pipe)
    with caplog.at_level(logging.INFO):
        pipe.use_dtype("bf16")
    assert pipe.compute_dtype is torch.float32 and "running fp32 instead" in caplog.text
    fallback = an_edit(pipe)
    assert torch.equal(fallback.images, fp32.images)   # the fallback is plain fp32, bit for bit
    pipe.use_dtype("bf16", force=True)
    assert pipe.compute_dtype is torch.bfloat16
    assert autocast_during(pipe, lambda: an_edit(pipe))["transformer"] == {torch.bfloat16}


def test_moving_a_pipeline_decides_its_dtype_again(monkeypatch, caplog):
    pretend_cpu(monkeypatch, bf16=True)
    pipe = small_pipe().use_dtype("bf16")
    assert pipe.compute_dtype is torch.bfloat16
    pretend_cpu(monkeypatch, bf16=False)               # as if moved to a device without bf16
    with caplog.at_level(logging.INFO):
        pipe.to("cpu")
    assert pipe.compute_dtype is torch.float32 and "running fp32 instead" in caplog.text
    pretend_cpu(monkeypatch, bf16=True)
    assert pipe.to("cpu").compute_dtype is torch.bfloat16   # the request outlives the fallback


def test_loading_takes_the_dtype_and_notes_a_fallback_once(monkeypatch, caplog, fixture):
    pretend_cpu(monkeypatch, bf16=False)
    with caplog.at_level(logging.INFO):
        pipe = VARPipeline.from_pretrained("fashion-mnist", device="cpu", dtype="bf16")
    assert pipe.compute_dtype is torch.float32 and caplog.text.count("running fp32 instead") == 1
    forced = VARPipeline.from_official(fixture["vae_state_dict"], fixture["var_state_dict"], dtype=torch.bfloat16,
                                       force_dtype=True)
    assert forced.compute_dtype is torch.bfloat16


# ------------------------------------------------------------------------------------------ the commands
@pytest.mark.parametrize("argv", [["sample"], ["eval"], ["serve"],
                                  ["edit", "--image", "a.png", "--box", "0,0,1,1", "--out", "b.png"],
                                  ["vary", "--image", "a.png", "--keep-scales", "2", "--out", "b.png"]])
def test_every_command_that_loads_a_model_takes_dtype(argv):
    parser = build_parser()
    assert (parser.parse_args(argv).dtype, parser.parse_args(argv).force_dtype) == ("fp32", False)
    args = parser.parse_args([*argv, "--dtype", "bf16", "--force-dtype"])
    assert (args.dtype, args.force_dtype) == ("bf16", True)
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--dtype", "fp16"])


def sample_png(tmp_path, name: str, *options: str) -> np.ndarray:
    path = tmp_path / f"{name}.png"
    assert cli(["sample", "--classes", "0,7", "--per-class", "2", "--device", "cpu", "--out", str(path), *options]) == 0
    return np.asarray(Image.open(path))


def test_var_sample_in_bf16_with_and_without_the_cpus_support(monkeypatch, caplog, tmp_path):
    fp32 = sample_png(tmp_path, "fp32")
    pretend_cpu(monkeypatch, bf16=False)
    with caplog.at_level(logging.INFO):
        fallback = sample_png(tmp_path, "fallback", "--dtype", "bf16")
    assert "neither AMX nor AVX512-BF16" in caplog.text and np.array_equal(fallback, fp32)
    forced = sample_png(tmp_path, "forced", "--dtype", "bf16", "--force-dtype")
    assert not np.array_equal(forced, fp32)
    pretend_cpu(monkeypatch, bf16=True)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        native = sample_png(tmp_path, "native", "--dtype", "bf16")
    assert "note" not in caplog.text and np.array_equal(native, forced)   # bf16 without being forced


def test_train_amp_is_bf16_and_says_when_the_cpu_makes_it_slower(monkeypatch, caplog):
    text = next(a.help for a in subcommands()["train"]._actions if "--amp" in a.option_strings)
    assert "bf16 autocast" in text and "slower" in text

    def trainer(amp: bool) -> VQVAETrainer:
        torch.manual_seed(0)
        m = VQVAE(TINY_VAE)
        return VQVAETrainer(m, torch.optim.SGD(m.parameters(), lr=0.1), reinit_every=0, amp=amp)

    pretend_cpu(monkeypatch, bf16=False)
    with caplog.at_level(logging.INFO):
        assert trainer(amp=False).amp_dtype is torch.float32 and not caplog.text
        emulated = trainer(amp=True)
    assert emulated.amp_dtype is torch.bfloat16            # --amp is not turned off, only noted
    assert "neither AMX nor AVX512-BF16" in caplog.text and "slower than fp32" in caplog.text
    with emulated.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
    pretend_cpu(monkeypatch, bf16=True)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert trainer(amp=True).amp_dtype is torch.bfloat16
    assert not caplog.text
