"""Non-square images: (h, w) scale schedules through the tokenizer, editing, saving, training and the CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from var import VAR, VARConfig, VARPipeline, VQVAEConfig
from var.cli import main as cli
from var.editing import area_weights, keep_masks_from_mask
from var.schedule import patch_nums_from_max_scale, schedule_for
from conftest import small_pipe


WIDE = ((1, 2), (2, 4), (3, 6), (4, 8))          # 8x16 images with the test models' 2x down-sampling


# ---------------------------------------------------------------------------------------- schedules
def test_schedules_normalise_and_square_ones_keep_their_int_spelling():
    assert VQVAEConfig(patch_nums=[[1, 2], [2, 4]]).patch_nums == ((1, 2), (2, 4))       # JSON lists
    assert VQVAEConfig(patch_nums=[(1, 1), 2, [4, 4]]).patch_nums == (1, 2, 4)           # square: ints
    assert VARConfig(patch_nums=[1, (2, 3), (3, 4)]).patch_nums == ((1, 1), (2, 3), (3, 4))
    cfg = VQVAEConfig(ch=32, ch_mult=(1, 2, 2), patch_nums=((1, 2), (2, 4), (4, 8), (8, 16)))
    assert cfg.image_hw == (32, 64) and cfg.scales[-1] == (8, 16)
    with pytest.raises(ValueError, match="32x64 .*not square: use image_hw"):
        cfg.image_size
    assert VQVAEConfig(ch=32, ch_mult=(1, 2, 2), patch_nums=(1, 2, 4, 8)).image_size == 32


def test_the_schedule_of_any_aspect_ratio_steps_the_short_side():
    assert schedule_for((32, 64), 4) == ((1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12), (7, 14), (8, 16))
    assert schedule_for(32, 4) == (1, 2, 3, 4, 5, 6, 7, 8) == patch_nums_from_max_scale(8)
    assert patch_nums_from_max_scale((6, 8)) == ((1, 1), (2, 3), (3, 4), (4, 5), (5, 7), (6, 8))
    assert patch_nums_from_max_scale((4, 2)) == ((2, 1), (4, 2))                         # portrait
    assert VAR(vocab_size=48, d_model=64, n_layers=1, n_heads=2, max_scale=(2, 4)).patch_nums == ((1, 2), (2, 4))
    with pytest.raises(ValueError, match="30x64 is not a multiple of the tokenizer's 4x"):
        schedule_for((30, 64), 4)


@pytest.mark.parametrize("patch_nums, message", [
    (((1, 2), (2, 2), (4, 8)), r"scale \(2, 2\) does not have the aspect ratio of the last scale \(4, 8\)"),
    ((1, 2, (4, 8)), r"scale \(2, 2\) does not have the aspect ratio"),                 # square then wide
    (((1, 3), (2, 4)), r"scale \(1, 3\) does not have the aspect ratio"),
    (((2, 4), (2, 4)), r"must grow .*\(2, 4\) is followed by \(2, 4\)"),
    (((2, 4), (1, 8)), r"must grow"),
    ((1, (2, 3, 4)), r"a side p or a pair \(h, w\) of ints, got \(2, 3, 4\)"),
    (((0, 1), (1, 2)), r"sides must be >= 1"),
])
def test_bad_schedules_are_named(patch_nums, message):
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(patch_nums=patch_nums)


# ---------------------------------------------------------------------------------------- tokenizer
def test_a_non_square_tokenizer_round_trips_shapes_and_every_scale_improves_the_reconstruction():
    pipe = small_pipe(patch_nums=WIDE)
    vae, quant = pipe.vqvae, pipe.vqvae.quantize
    images = torch.rand(3, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f_BCHW = vae.encode_latent(images * 2 - 1)
        quant.ema_vocab_hit_SV.zero_()                      # every code unused: moved onto latent vectors
        quant.reinit_dead_codes(f_BCHW.permute(0, 2, 3, 1).reshape(-1, quant.channels))
    tokens = pipe.encode(images)
    assert [t.shape for t in tokens] == [(3, h * w) for h, w in WIDE]
    assert pipe.decode(tokens).shape == (3, 3, 8, 16) and pipe.image_hw == (8, 16)
    assert quant.teacher_forcing_input(tokens).shape == (3, sum(h * w for h, w in WIDE[1:]), quant.channels)
    with torch.no_grad():
        errors = [float((quant.indices_to_latent(tokens[:k], upto=k) - f_BCHW).square().mean())
                  for k in range(1, len(WIDE) + 1)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert [x.shape for x in pipe.decode_per_scale(tokens)] == [(3, 3, 8, 16)] * len(WIDE)
    with pytest.raises(ValueError, match=r"images are 16x8, this model takes 8x16"):
        pipe.encode(torch.rand(1, 3, 16, 8))


def test_a_non_square_pipeline_saves_its_schedule_as_pairs_and_loads_it_back(tmp_path):
    pipe = small_pipe(patch_nums=WIDE)
    pipe.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["vqvae"]["patch_nums"] == saved["var"]["patch_nums"] == [list(s) for s in WIDE]
    again = VARPipeline.from_pretrained(tmp_path / "m")
    assert again.scales == WIDE and again.image_hw == (8, 16)
    assert torch.equal(pipe(class_labels=[1, 2], seed=1).images, again(class_labels=[1, 2], seed=1).images)


def test_the_bundled_square_config_round_trips_unchanged():
    from var.checkpoints import BUNDLED_DIR
    saved = json.loads((BUNDLED_DIR / "fashion-mnist" / "config.json").read_text())
    for key, cls in (("vqvae", VQVAEConfig), ("var", VARConfig)):
        again = json.loads(json.dumps(cls(**saved[key]).to_dict()))
        assert {k: again[k] for k in saved[key]} == saved[key]


# ------------------------------------------------------------------------------------------ editing
def test_keep_masks_weigh_each_axis_on_a_non_square_schedule():
    """A token is kept when more than half of its pixels are, its area measured per axis; a first scale
    of 1x2 is kept where any of its pixels is (the same rule as a 1x1 first scale)."""
    scales = ((1, 2), (2, 4), (3, 6), (6, 12))
    mask = torch.zeros(1, 1, 24, 48, dtype=torch.bool)
    mask[0, 0, 5:17, 9:30] = True
    mask[0, 0, :, 24:] = True                          # the right half: its first-scale token has nothing kept
    keep = keep_masks_from_mask(mask, scales)
    kept = ~mask[0, 0].numpy()
    assert keep[0].tolist() == [[True, False]]
    for k, (h, w) in enumerate(scales[1:], start=1):
        fine = np.kron(kept.astype(float), np.ones((h, w)))                          # (24h, 48w) sub-cells
        expected = fine.reshape(h, 24, w, 48).mean(axis=(1, 3)) > 0.5
        assert keep[k][0].tolist() == expected.flatten().tolist(), (h, w)
    assert torch.allclose(area_weights(3, 8).sum(1), torch.ones(3))


def test_inpainting_a_non_square_model_keeps_the_kept_tokens():
    pipe = small_pipe(patch_nums=WIDE)
    images = torch.rand(2, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8, 16)
    mask[2:6, 9:15] = 1
    out = pipe.inpaint(images, mask, class_labels=[0, 1], top_k=0, top_p=0, seed=0)
    source = pipe.encode(images)
    generated = mask.view(4, 2, 8, 2).mean(dim=(1, 3)).ge(0.5).flatten()   # half or more of a token's pixels
    quant = pipe.vqvae.quantize
    coarse = quant.indices_to_latent(out.tokens, upto=len(source) - 1)
    fitted = quant.codes_toward(len(source) - 1, coarse, quant.indices_to_latent(source),
                                ~generated.expand(2, -1), out.tokens[-1])
    assert torch.equal(out.tokens[-1], fitted)          # the kept tokens fit the image to what was generated
    assert not torch.equal(out.tokens[-1][:, generated], source[-1][:, generated])
    assert out.images.shape == (2, 3, 8, 16)
    with pytest.raises(ValueError, match=r"mask is 16x8, expected 8x16"):
        pipe.inpaint(images, torch.ones(16, 8))
    varied = pipe.vary(images, keep_scales=2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(varied.tokens[:2], source[:2]))


# ----------------------------------------------------------------------------- training and the CLI
@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny 32x64 model trained a few steps from a folder of non-square images through the CLI."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["dark", "light"]):
        (root / "data" / name).mkdir(parents=True)
        for i in range(6):
            size = (72, 40) if i % 2 else (90, 40)          # width x height: wider than 2:1, cropped to it
            Image.fromarray((rng.random(size[::-1] + (3,)) * 80 + 120 * c).astype(np.uint8)).save(
                root / "data" / name / f"{i}.png")
    common = ["--data", str(root / "data"), "--steps", "2", "--batch-size", "4", "--warmup", "1",
              "--log-every", "1", "--sample-every", "2", "--device", "cpu"]
    assert cli(["train-vae", *common, "--out", str(root / "vae"), "--preset", "custom", "--image-size", "32x64",
                "--ch", "16", "--ch-mult", "1,2,2", "--z-channels", "8", "--vocab-size", "32",
                "--patch-nums", "1x2,2x4,4x8,8x16", "--no-attn"]) == 0
    assert cli(["train", *common, "--vae", str(root / "vae"), "--out", str(root / "var"), "--preset", "small",
                "--depth", "1", "--embed-dim", "32", "--num-heads", "2", "--cache-dir", str(root / "cache")]) == 0
    return root


def test_a_non_square_model_trains_from_an_image_folder_and_generates_its_size(wide_model):
    pipe = VARPipeline.from_pretrained(wide_model / "var")
    assert pipe.scales == ((1, 2), (2, 4), (4, 8), (8, 16)) and pipe.class_names == ["dark", "light"]
    assert pipe(class_labels=[0, 1], seed=0).images.shape == (2, 3, 32, 64)


def test_sample_edit_and_vary_commands_work_on_a_non_square_model(wide_model, caplog):
    model, out = ["--model", str(wide_model / "var"), "--device", "cpu"], wide_model / "out"
    assert cli(["sample", *model, "--per-class", "1", "--out", str(out / "grid.png"),
                "--progression", str(out / "prog.png")]) == 0
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(wide_model / "square.png")
    caplog.set_level("INFO")
    assert cli(["edit", *model, "--image", str(wide_model / "square.png"), "--box", "0.25,0.5,0.75,1",
                "--out", str(out / "edit.png")]) == 0
    assert "from 40x40 to 64x32" in caplog.text and "aspect ratio changed" in caplog.text
    assert cli(["vary", *model, "--image", str(wide_model / "square.png"), "--keep-scales", "2",
                "--out", str(out / "vary.png")]) == 0
    for name in ("edit.png", "vary.png"):
        assert Image.open(out / name).size == (64, 32)


def test_train_vae_names_a_size_that_does_not_fit_the_schedule(tmp_path, caplog):
    args = ["train-vae", "--data", str(tmp_path), "--out", str(tmp_path / "vae"), "--preset", "custom",
            "--ch-mult", "1,2,2", "--device", "cpu"]
    assert cli([*args, "--image-size", "32x64", "--patch-nums", "1,2,4,8"]) == 2
    assert "--image-size 32x64 does not match the schedule: last scale 8x8 x 4 = 32x32" in caplog.text
    with pytest.raises(SystemExit):
        cli([*args, "--patch-nums", "1x2,2x2"])


def test_the_web_demo_says_it_takes_square_models_only():
    pytest.importorskip("gradio")
    from var.serve import build_app
    with pytest.raises(ValueError, match="8x16 .*not square.*square models only"):
        build_app(small_pipe(patch_nums=WIDE))
