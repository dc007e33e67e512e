"""The reference's recipe details: AdaLN gate scale, final learning rate and weight decay by depth, the lin0
learning-rate schedule, and random crops cut from images decoded at 1.125x from their source."""
import gzip
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from var import VAR, VARConfig, VQVAE
from var.cli import main as cli
from var.training.common import Schedule
from conftest import TINY_VAE, small_schedule


# The reference's README training commands: depth -> (--alng, --wpe, --twde; None: the weight decay stays).
REFERENCE_README = {16: (1e-3, 0.1, None), 20: (1e-3, 0.1, None), 24: (1e-4, 0.01, None), 30: (1e-5, 0.01, 0.08),
                    36: (5e-6, 0.01, 0.08)}


# ------------------------------------------------------------------------------------ depth table
@pytest.mark.parametrize("depth, gamma", [(16, 1e-3), (20, 1e-3), (24, 1e-4), (30, 1e-5), (36, 5e-6),
                                          (8, 1e-3), (22, 1e-3), (27, 1e-4), (33, 1e-5), (40, 5e-6)])
def test_adaln_gates_start_at_the_reference_scale_for_the_depth(depth, gamma):
    """The listed depths take the README's --alng; the others that of the deepest listed depth at or below."""
    from var.transformer import default_adaln_gamma
    assert default_adaln_gamma(depth) == gamma


def test_a_deep_model_is_initialised_with_its_depths_gate_scale():
    torch.manual_seed(0)
    C = 64
    var = VAR(VARConfig(vocab_size=16, latent_channels=4, num_classes=2, depth=30, embed_dim=C, num_heads=2,
                        patch_nums=(1, 2)))
    gates = var.blocks[0].ada_lin[1].weight[:2 * C]
    assert gates.std().item() == pytest.approx(1e-5 * (1 / C / 3) ** 0.5, rel=0.2)


def test_the_recipe_table_is_the_reference_readmes():
    from var.recipes import reference_recipe
    for depth, (alng, wpe, twde) in REFERENCE_README.items():
        recipe = reference_recipe(depth)
        assert (recipe.adaln_gamma, recipe.final_lr_ratio, recipe.final_weight_decay) == (alng, wpe, twde)
    with pytest.raises(ValueError, match="depth=0"):
        reference_recipe(0)


def _train_schedule(monkeypatch, argv: list[str]):
    """The Schedule and options `var train ARGV` would train with (the run itself replaced)."""
    from var.training import runs
    seen = {}
    monkeypatch.setattr(runs, "train_var", lambda *a, **k: seen.update(schedule=a[4], cfg=a[3]))
    assert cli(["train", "--data", "unused", *argv]) == 0
    return seen["schedule"], seen["cfg"]


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


# ------------------------------------------------------------------------------------ lin0 schedule
def test_lin0_starts_at_0_005x_holds_the_peak_then_falls_linearly_to_wpe():
    """221 steps, 20 of warm-up: the decay phase runs over steps 20..220 (200 intervals); its first 5% (steps
    20..29) holds the peak; step 125 is halfway down from 1 (at 5%) to wpe (at the last step)."""
    s = Schedule(steps=221, warmup=20, lr=2.0, lr_schedule="lin0", min_lr_ratio=0.01)
    expected = {0: 0.005, 10: 0.005 + 0.995 * 0.5, 19: 0.005 + 0.995 * 19 / 20, 20: 1.0, 25: 1.0, 29: 1.0,
                30: 1.0, 31: 0.01 + 0.99 * 0.945 / 0.95, 125: 0.01 + 0.99 * 0.5, 220: 0.01}
    for step, multiplier in expected.items():
        assert s.lr_at(step) == pytest.approx(2.0 * multiplier, rel=1e-12), step
    assert all(s.lr_at(t) > s.lr_at(t + 1) for t in range(30, 220))   # strictly falling after the hold
    assert Schedule(steps=10, warmup=0, lr=1.0, lr_schedule="lin0").lr_at(0) == 1.0


def test_the_cosine_schedule_is_unchanged():
    """The bundled recipe's curve: (step + 1) / warmup, then cosine to min_lr_ratio at step `steps`."""
    s = Schedule(steps=1000, warmup=100, lr=1.0, min_lr_ratio=0.1)
    assert s.lr_at(0) == pytest.approx(0.01) and s.lr_at(99) == pytest.approx(1.0)
    assert s.lr_at(550) == pytest.approx(0.55) and s.lr_at(1000) == pytest.approx(0.1)


def test_weight_decay_anneals_by_a_half_cosine_to_its_final_value():
    s = Schedule(steps=221, weight_decay=0.05, final_weight_decay=0.08)
    assert s.weight_decay_at(0) == 0.05 and s.weight_decay_at(110) == pytest.approx(0.065)
    assert s.weight_decay_at(220) == pytest.approx(0.08)
    assert all(Schedule(steps=221).weight_decay_at(t) == 0.05 for t in (0, 110, 220))
    with pytest.raises(ValueError, match="lr_schedule='lin'"):
        Schedule(lr_schedule="lin")
    with pytest.raises(ValueError, match="weight_decay 0"):
        Schedule(weight_decay=0.0, final_weight_decay=0.08)


def test_trainers_step_under_their_schedule_decaying_only_the_decayed_groups():
    """VQVAETrainer / VARTrainer take ``schedule=``: each step sets the optimizer's learning rate and, on the
    groups made with weight decay, the weight decay of its step; biases and norms stay undecayed."""
    from var.training.runs import VAR_BETAS, make_optimizer
    from var.training.trainers import VARTrainer
    torch.manual_seed(0)
    vqvae = VQVAE(TINY_VAE).eval()
    var = VAR(VARConfig(vocab_size=TINY_VAE.vocab_size, latent_channels=TINY_VAE.z_channels, num_classes=2, depth=1,
                        embed_dim=32, num_heads=2, patch_nums=TINY_VAE.patch_nums))
    sched = small_schedule(steps=5, lr_schedule="lin0", min_lr_ratio=0.1, final_weight_decay=0.08)  # warm-up 2
    trainer = VARTrainer(var, vqvae, make_optimizer(var, sched, VAR_BETAS), schedule=sched)
    batch = (torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    decayed, undecayed = trainer.optimizers["var"].param_groups
    for step in range(3):
        trainer.train_step(batch)
        decayed, undecayed = trainer.optimizers["var"].param_groups
        assert decayed["lr"] == undecayed["lr"] == pytest.approx(sched.lr_at(step))
        assert decayed["weight_decay"] == pytest.approx(sched.weight_decay_at(step)) and undecayed["weight_decay"] == 0
    assert decayed["lr"] == pytest.approx(1e-3) and sched.lr_at(0) == pytest.approx(5e-6)


# ------------------------------------------------------------------------------------ random crops
def _sharp_folder(root, side: int = 40, n: int = 4):
    """Images with one-pixel detail: random black and white pixels (the hardest case for any resize)."""
    rng = np.random.default_rng(0)
    d = root / "a"
    d.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(((rng.random((side, side, 3)) > 0.5) * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def _detail(x: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels: what blurring takes away."""
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def test_crops_of_an_image_folder_are_the_sources_lanczos_resize_then_crop(tmp_path):
    """What --crop trains on equals Pillow's Lanczos resize of each file to 18 px (1.125 x 16) cut at the
    step's offsets: as sharp as the reference's crops, sharper than enlarging a 16 px decode."""
    from var.data import enlarge_for_crop, image_folder_dataset
    from var.training.runs import _transformer_images, random_crops
    folder = _sharp_folder(tmp_path / "sharp")
    ds = _transformer_images(str(folder), TINY_VAE, crop=True)
    offsets = torch.tensor([[0, 2], [1, 0], [2, 2], [1, 1]])
    got = random_crops(ds, 16)(np.arange(4), None, offsets)
    files = sorted((folder / "a").iterdir())
    want = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((18, 18), Image.LANCZOS)
                                                    .crop((j, i, j + 16, i + 16)), np.float32) / 255).permute(2, 0, 1)
                        for f, (i, j) in zip(files, offsets.tolist())])
    assert torch.equal(got, want)
    upsampled = enlarge_for_crop(image_folder_dataset(folder, 16).images, 18)   # a 16 px decode, enlarged
    soft = torch.from_numpy(upsampled[:, :16, :16]).permute(0, 3, 1, 2).float() / 255
    assert _detail(got) > 1.3 * _detail(soft)


def _idx_folder(root, images: np.ndarray):
    """A Fashion-MNIST-style folder of IDX files holding ``images`` (N, h, w) for both splits."""
    root.mkdir()
    labels = np.arange(len(images), dtype=np.uint8) % 2
    for split, (img_name, lbl_name) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        head = bytes([0, 0, 8, 3]) + np.array(images.shape, ">u4").tobytes()
        (root / (img_name + ".gz")).write_bytes(gzip.compress(head + images.tobytes()))
        (root / (lbl_name + ".gz")).write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + np.array([len(labels)], ">u4")
                                                              .tobytes() + labels.tobytes()))
    return root


def test_a_source_smaller_than_the_crops_is_enlarged_with_lanczos_and_a_warning_names_the_sizes(tmp_path, caplog):
    """Fashion-MNIST holds its images at the model's size (here 16 px for a 16 px model): nothing larger
    exists, so each is enlarged to 18 px with the crops' Lanczos filter, as the reference enlarges small
    images, and a warning names the images' size and the crops' (not refused: the reference trains so)."""
    import dataclasses

    from var.training.runs import _transformer_images, random_crops
    rng = np.random.default_rng(1)
    images = ((rng.random((4, 16, 16)) > 0.5) * 255).astype(np.uint8)
    folder = _idx_folder(tmp_path / "fmnist", images)
    gray = dataclasses.replace(TINY_VAE, in_channels=1)
    ds = _transformer_images(str(folder), gray, crop=True)
    assert ds.images.shape[1:] == (16, 16, 1)
    with caplog.at_level(logging.WARNING):
        crops = random_crops(ds, 16, str(folder))
    assert "16x16 images, smaller than the 18x18 that random 16x16 crops are cut from" in caplog.text
    assert str(folder) in caplog.text
    got = crops(np.arange(2), torch.tensor([True, False]), torch.tensor([[2, 1], [0, 0]]))
    want = [np.asarray(Image.fromarray(img).resize((18, 18), Image.LANCZOS), np.float32) / 255 for img in images[:2]]
    assert torch.equal(got[0, 0], torch.from_numpy(want[0][2:18, 1:17]).flip(-1))
    assert torch.equal(got[1, 0], torch.from_numpy(want[1][0:16, 0:16]))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        random_crops(_transformer_images(str(_sharp_folder(tmp_path / "large")), TINY_VAE, crop=True), 16)
    assert "smaller than" not in caplog.text   # decoded from larger files: no warning
