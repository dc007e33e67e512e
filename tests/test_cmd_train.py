"""`var train` / `var train-vae`: option checks, recipes and presets, what a run trains and exports, torchrun."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from var import VARPipeline, VQVAE
from var.cli import main as cli
from var.data import image_folder_dataset
from var.training.common import DistInfo
from var.training.budget import MIN_STEPS
from conftest import TINY_VAE, VAE_ARGS, VAR_ARGS, shapes_folder


NO_DATA = "/nonexistent/var-test-data"  # every check below must fire before the data is looked at


def _refused(argv: list[str], caplog) -> str:
    """Run ``var ARGV`` (which must fail as a usage error, exit 2) and return what it logged."""
    caplog.clear()
    with caplog.at_level("ERROR"):
        assert cli(argv) == 2
    return caplog.text


def _train_schedule(monkeypatch, argv: list[str]):
    """The Schedule and options `var train ARGV` would train with (the run itself replaced)."""
    from var.training import runs
    seen = {}
    monkeypatch.setattr(runs, "train_var", lambda *a, **k: seen.update(schedule=a[4], cfg=a[3]))
    assert cli(["train", "--data", "fashion-mnist", *argv]) == 0
    return seen["schedule"], seen["cfg"]


@pytest.mark.parametrize("flag", ["--steps", "--batch-size", "--save-every", "--sample-every", "--log-every"])
def test_cli_training_counts_must_be_positive(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        cli(["train-vae", "--data", str(tmp_path), "--out", str(tmp_path / "run"), flag, "0"])
    assert e.value.code == 2 and f"{flag}: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_an_explicit_warmup_longer_than_the_run_is_refused(caplog):
    """--warmup 200 --steps 100: the lr would never reach --lr nor decay (min-lr-ratio unused); say so."""
    text = _refused(["train", "--data", NO_DATA, "--steps", "100", "--warmup", "200"], caplog)
    assert "--warmup 200" in text and "--steps 100" in text
    text = _refused(["train-vae", "--data", "fashion-mnist", "--warmup", "9000"], caplog)  # the preset's 8000 steps
    assert "--warmup 9000" in text and "--steps 8000" in text
    text = _refused(["train-vae", "--data", NO_DATA, "--finetune-decoder", NO_DATA, "--warmup", "2000"], caplog)
    assert "--warmup 2000" in text and "--steps 1500" in text


def test_patch_nums_and_max_scale_together_are_refused(caplog):
    """Both set a schedule: --max-scale was silently dropped for --patch-nums."""
    text = _refused(["train-vae", "--data", NO_DATA, "--preset", "custom", "--image-size", "32",
                     "--patch-nums", "1,2,4,8", "--max-scale", "6"], caplog)
    assert "--patch-nums" in text and "--max-scale" in text and "not both" in text


@pytest.mark.parametrize("option, value", [("--ch", "0"), ("--ch", "-32"), ("--z-channels", "0"),
                                           ("--vocab-size", "-1"), ("--channels", "2")])
def test_tokenizer_sizes_outside_their_range_are_usage_errors(option, value, capsys):
    """--ch 0 crashed with ZeroDivisionError; negative widths or codebooks were accepted into the config."""
    with pytest.raises(SystemExit) as e:
        cli(["train-vae", "--data", NO_DATA, "--preset", "custom", option, value])
    assert e.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_reference_presets_train_with_lin0_and_the_depths_final_lr_and_weight_decay(monkeypatch):
    large, cfg = _train_schedule(monkeypatch, ["--preset", "large"])              # depth 24
    assert cfg.depth == 24
    assert (large.lr_schedule, large.warmup, large.min_lr_ratio, large.final_weight_decay) == ("lin0", 120, 0.01, None)
    d30, _ = _train_schedule(monkeypatch, ["--preset", "large", "--depth", "30", "--steps", "1000"])
    assert (d30.lr_schedule, d30.warmup, d30.min_lr_ratio, d30.final_weight_decay) == ("lin0", 20, 0.01, 0.08)
    small, _ = _train_schedule(monkeypatch, ["--preset", "small"])              # depth 6: d16's
    assert (small.lr_schedule, small.min_lr_ratio, small.final_weight_decay) == ("lin0", 0.1, None)
    given, _ = _train_schedule(monkeypatch, ["--preset", "large", "--depth", "30", "--schedule", "cos", "--warmup", "7",
                                             "--min-lr-ratio", "0.2", "--final-weight-decay", "0.05"])
    assert (given.lr_schedule, given.warmup, given.min_lr_ratio, given.final_weight_decay) == ("cos", 7, 0.2, 0.05)


def test_the_bundled_recipe_keeps_its_cosine_schedule(monkeypatch):
    """fashion-mnist: the schedule the bundled model was trained with (its reproduction), lin0 on request."""
    bundled, _ = _train_schedule(monkeypatch, [])
    assert (bundled.lr_schedule, bundled.warmup, bundled.min_lr_ratio, bundled.final_weight_decay) == \
        ("cos", 150, 0.1, None)
    asked, _ = _train_schedule(monkeypatch, ["--schedule", "lin0"])
    assert (asked.lr_schedule, asked.min_lr_ratio) == ("lin0", 0.1)


def test_image_folder_end_to_end_gives_a_loadable_pipeline(folder, vae_run, tmp_path):
    rows = [json.loads(l) for l in (vae_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["heldout_psnr"] > 0 and "usage_s0" in rows[0] and (vae_run / "samples").is_dir()
    out = tmp_path / "var"
    assert cli(["train", "--data", str(folder), "--vae", str(vae_run), "--out", str(out), *VAR_ARGS,
                "--steps", "4", "--batch-size", "8", "--warmup", "2", "--log-every", "2", "--sample-every", "4",
                "--cache-dir", str(tmp_path / "cache"), "--ema", "0.9", "--flip"]) == 0
    assert len(list((tmp_path / "cache").glob("tokens_*.npy"))) == 1
    pipe = VARPipeline.from_pretrained(out)
    assert pipe.class_names == ["circles", "squares"]
    images = pipe(class_labels=[0, 1], seed=0).images
    assert images.shape == (2, 3, 16, 16)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "acc", "loss_s0", "acc_s3", "lr", "images_per_s"} <= set(rows[-1])
    assert cli(["plot", str(out)]) == 0 and (out / "loss.png").stat().st_size > 1000


def test_two_processes_train_one_model(folder, vae_run, tmp_path):
    """torchrun with 2 CPU processes (gloo): the run checks that the ranks hold the same weights, and the
    result equals one process on the same global batch."""
    # No label dropout: it is drawn per process, so only then is one process on the global batch the same.
    common = ["--data", str(folder), "--vae", str(vae_run), *VAR_ARGS, "--steps", "3", "--batch-size", "8", "--cond-drop", "0",
              "--warmup", "1", "--sample-every", "1000", "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: torchrun picks a free port itself (no window for another process to take it).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "var", "train", "--out", str(tmp_path / "ddp"), *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    assert cli(["train", "--out", str(tmp_path / "single"), *common]) == 0
    two = VARPipeline.from_pretrained(tmp_path / "ddp").var.state_dict()
    one = VARPipeline.from_pretrained(tmp_path / "single").var.state_dict()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4, msg=k)


def test_two_processes_train_a_tokenizer_with_its_discriminator(folder, tmp_path):
    """torchrun, 2 processes, GAN loss on, EMA weights, dead-code restarts: the discriminator is synchronised
    too, and every process restarts the same codes (so their Adam moments stay equal), so the replica check
    at every checkpoint passes and the run finishes. Three scales leave one of the 4 shared phi convs unused
    (no gradient), which DDP must not wait for."""
    out = tmp_path / "gan"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "var",
           "train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--patch-nums", "1,4,8",
           "--steps", "6", "--batch-size", "8",
           "--warmup", "1", "--adv-weight", "0.1", "--disc-start", "1", "--ema", "0.9", "--reinit-every", "2",
           "--save-every", "2", "--sample-every", "1000"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("d_loss" in r for r in rows)
    from var.training.runs import load_vqvae
    assert len(load_vqvae(out)[0].quantize.quant_resi.unused()) == 1


def test_tokenizer_betas_default_and_option(folder, vae_run, tmp_path):
    """The tokenizer's Adam uses (0.9, 0.95) unless --betas says otherwise (VQGAN's 0.5,0.9 reconstructed
    worse without a GAN loss); the discriminator keeps VQGAN's."""
    from var.training.common import load_checkpoint_file

    def betas(run):
        return tuple(load_checkpoint_file(run / "checkpoint.pt")["optimizers"]["vqvae"]["param_groups"][0]["betas"])

    assert betas(vae_run) == (0.9, 0.95)
    out = tmp_path / "vae"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", "1", "--batch-size", "8",
                "--warmup", "1", "--betas", "0.5,0.9", "--adv-weight", "0.1"]) == 0
    ckpt = load_checkpoint_file(out / "checkpoint.pt")
    assert betas(out) == (0.5, 0.9) and tuple(ckpt["optimizers"]["disc"]["param_groups"][0]["betas"]) == (0.5, 0.9)


def test_tokenizer_ema_weights_are_the_ones_evaluated_and_exported(folder, tmp_path):
    """--ema keeps an average that differs from the trained weights; the export and the held-out PSNR
    are the average's, and a dead-code restart moves the EMA's code too."""
    from safetensors.torch import load_file
    from var.training.common import load_checkpoint_file
    out = tmp_path / "ema"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", "6", "--batch-size", "8",
                "--warmup", "1", "--ema", "0.9", "--reinit-every", "3", "--save-every", "6",
                "--sample-every", "6"]) == 0
    ckpt = load_checkpoint_file(out / "checkpoint.pt")
    exported = load_file(out / "vqvae.safetensors")
    trained, ema = ckpt["models"]["vqvae"], ckpt["models"]["ema"]
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert not torch.equal(trained["decoder.conv_out.weight"], ema["decoder.conv_out.weight"])
    assert (out / "samples" / "recon_0000006.png").is_file()


def test_tokenizer_recipe_defaults_gan_from_a_quarter_of_the_steps_and_ema(folder, tmp_path):
    """With no loss options, var train-vae trains the GAN loss from steps // 4 on and keeps EMA weights."""
    from var.training.common import load_checkpoint_file
    out = tmp_path / "defaults"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", "8", "--batch-size", "8",
                "--warmup", "1", "--log-every", "1", "--save-every", "8", "--sample-every", "8"]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    with_gan = sorted(r["step"] for r in rows if "d_loss" in r)
    without = sorted(r["step"] for r in rows if "rec_loss" in r and "d_loss" not in r)
    assert without and with_gan and max(without) < min(with_gan), (without, with_gan)
    assert min(with_gan) - min(without) == 2  # steps 0, 1 without; from step 2 (= 8 // 4) with
    assert "ema" in load_checkpoint_file(out / "checkpoint.pt")["models"]


def test_decoder_finetune_keeps_the_tokens_and_plugs_into_a_pipeline(folder, vae_run, tmp_path, caplog):
    """`var train-vae --finetune-decoder` trains the decoder alone: the token side of the exported tokenizer
    is bit-identical to its source's, so it decodes a pipeline's tokens (VARPipeline.use_decoder); a
    tokenizer with another token side is refused, as are model options and dead-code restarts."""
    from var import VAR, VARConfig
    from var.training.common import load_checkpoint_file
    from var.training.runs import _continue_discriminator, load_vqvae
    from var.training.trainers import PatchDiscriminator

    caplog.set_level(logging.INFO)
    out = tmp_path / "dec"
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), "--finetune-decoder", str(vae_run),
                "--steps", "4", "--batch-size", "8", "--warmup", "1", "--lr", "1e-3", "--sample-every", "4"]) == 0
    assert json.loads((out / "run.json").read_text())["finetune_decoder"] == str(vae_run)
    # the source run's discriminator is continued, not a fresh one
    assert f"discriminator continued from {vae_run / 'checkpoint.pt'}" in caplog.text
    disc = PatchDiscriminator(3)
    _continue_discriminator(disc, vae_run, DistInfo())
    source_disc = load_checkpoint_file(vae_run / "checkpoint.pt")["models"]["disc"]
    assert all(torch.equal(v, source_disc[k]) for k, v in disc.state_dict().items())
    source, _ = load_vqvae(vae_run)
    tuned, _ = load_vqvae(out)
    before, after = source.state_dict(), tuned.state_dict()
    assert set(VQVAE.TOKEN_SIDE + VQVAE.DECODER_SIDE) == {name for name, _ in source.named_children()}
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"decoder", "post_quant_conv", "quantize"}  # quantize: its usage statistics only
    assert all(torch.equal(before[k], after[k]) for k in before
               if k.startswith(("encoder.", "quant_conv.", "quantize.")) and k != "quantize.ema_vocab_hit_SV")

    torch.manual_seed(0)
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=2, depth=1, embed_dim=32, num_heads=2,
                        patch_nums=(1, 2, 4, 8)))
    pipe = VARPipeline(source, var)
    images = image_folder_dataset(folder, 16).batch(np.arange(4))[0]
    tokens = pipe.encode(images)
    old = pipe.decode(tokens)
    assert pipe.use_decoder(out) is pipe
    assert [torch.equal(a, b) for a, b in zip(pipe.encode(images), tokens)] == [True] * len(tokens)
    new = pipe.decode(tokens)
    expected = (tuned.eval().indices_to_img(tokens) + 1) / 2
    torch.testing.assert_close(new, expected, atol=1e-5, rtol=0)
    assert (new - old).abs().max() > 1e-3
    with torch.inference_mode():  # weights loaded into inference tensors move no version counter
        frozen = VARPipeline(load_vqvae(vae_run)[0], var)
        torch.testing.assert_close(frozen.decode(tokens), old, atol=1e-5, rtol=0)  # fills the kernel caches
        torch.testing.assert_close(frozen.use_decoder(out).decode(tokens), expected, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match="encoder"):
        pipe.use_decoder(VQVAE(TINY_VAE))
    assert cli(["train-vae", "--data", str(folder), "--out", str(tmp_path / "x"), "--finetune-decoder",
                str(vae_run), "--ch", "64"]) == 2
    assert "--ch: --finetune-decoder keeps the model" in caplog.text
    assert cli(["train-vae", "--data", str(folder), "--out", str(tmp_path / "y"), "--finetune-decoder",
                str(vae_run), "--reinit-every", "5", "--steps", "1", "--batch-size", "8"]) == 2
    assert "reinit_every=5" in caplog.text


def test_train_says_whether_it_tokenizes_or_uses_the_cache_with_the_data_s_chunk_counts(folder, vae_run, tmp_path,
                                                                                           caplog):
    """The first run tokenizes (and says how many images, in chunks that match the data); a later run with the
    same tokenizer and images says the cache is used, and says nothing of tokenizing."""
    common = ["--data", str(folder), "--vae", str(vae_run), *VAR_ARGS, "--steps", "1", "--batch-size", "8",
              "--warmup", "1", "--sample-every", "1000", "--cache-dir", str(tmp_path / "cache"), "--flip"]
    with caplog.at_level("INFO"):
        assert cli(["train", "--out", str(tmp_path / "first"), *common]) == 0
    n = len(image_folder_dataset(folder, 16, 3))
    assert f"var train tokenizes the {n} images and their mirrored copies, once" in caplog.text
    assert f"tokenizing 2 of the 2 chunk(s) left, {2 * n} images (originals and mirrored copies)" in caplog.text
    assert "using the cached tokens" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert cli(["train", "--out", str(tmp_path / "again"), *common]) == 0
    assert f"using the cached tokens of the {n} images and their mirrored copies" in caplog.text
    assert "tokenizes the" not in caplog.text and "tokenizing " not in caplog.text


def test_the_quick_recipe_trains_a_small_colour_folder_with_its_default_options(tmp_path, caplog, monkeypatch):
    """The README's recipe for your own images, on 38 images: the quick preset is chosen for a folder, at the
    images' colour and size, and a budget in minutes sets the steps. (The first try of a new user failed at
    once, "batch size 64 is larger than the data set", then trained 28px greyscale.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # the token cache
    data = shapes_folder(tmp_path / "shapes", 19)
    vae, run = tmp_path / "vae", tmp_path / "var"
    with caplog.at_level(logging.INFO):
        assert cli(["train-vae", "--data", str(data), "--out", str(vae), "--minutes", "0.01"]) == 0
        assert cli(["train", "--data", str(data), "--vae", str(vae), "--out", str(run), "--minutes", "0.01"]) == 0
    assert caplog.text.count("--preset quick") == 2 and "32x32 images in colour (RGB)" in caplog.text
    for folder in (vae, run):
        assert json.loads((folder / "budget.json").read_text())["steps"] == MIN_STEPS   # 0.6 s: the fewest
        assert json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["step"] == MIN_STEPS
    pipe = VARPipeline.from_pretrained(run)
    assert pipe.class_names == ["discs", "squares"]
    assert (pipe.vqvae.config.in_channels, pipe.vqvae.config.patch_nums) == (3, (1, 2, 3, 4, 6, 8))
    assert pipe(class_labels=[0, 1], seed=0).images.shape == (2, 3, 32, 32)
    report = tmp_path / "eval.json"   # var eval judges it on the data the pipeline names, without a classifier
    assert cli(["eval", "--model", str(run), "--per-class", "2", "--batch-size", "4", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert (r["data"], r["num_samples"], r["heldout_images"], r["frechet_samples_heldout"]) == (str(data), 4, 1, None)
    assert r["frechet_samples_train"] > 0 and sum(r["nearest_real_same_class_per_class"].values()) <= 4


def test_a_preset_batch_larger_than_the_data_is_reduced_and_a_long_warmup_shortened(tmp_path, caplog, monkeypatch):
    from var.training import runs
    seen = {}
    monkeypatch.setattr(runs, "train_vqvae", lambda *a, **k: seen.update(schedule=a[3]) or {})
    data = shapes_folder(tmp_path / "shapes", 5)     # 10 images, 1 held out: 9 to train on
    with caplog.at_level(logging.INFO):
        assert cli(["train-vae", "--data", str(data), "--out", str(tmp_path / "vae"), "--steps", "30"]) == 0
    assert (seen["schedule"].batch_size, seen["schedule"].warmup) == (9, 3)
    assert "batch 9: the preset's 16 is more than the 9 training images" in caplog.text
    assert cli(["train-vae", "--data", str(data), "--out", str(tmp_path / "vae"), "--steps", "30",
                "--batch-size", "4", "--warmup", "20"]) == 0           # given: kept
    assert (seen["schedule"].batch_size, seen["schedule"].warmup) == (4, 20)


def test_the_fashion_mnist_preset_given_a_colour_folder_says_it_converts_it(tmp_path, caplog, monkeypatch):
    from var.training import runs
    monkeypatch.setattr(runs, "train_vqvae", lambda *a, **k: {})
    data = shapes_folder(tmp_path / "shapes", 2)
    with caplog.at_level(logging.WARNING):
        assert cli(["train-vae", "--data", str(data), "--out", str(tmp_path / "vae"), "--preset", "fashion-mnist",
                    "--steps", "2", "--batch-size", "2"]) == 0
    assert "trains on 28x28 greyscale images" in caplog.text and "colour, 32x32" in caplog.text
