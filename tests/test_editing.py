"""Zero-shot editing: inpainting, outpainting, variations, mask helpers and the ``edit`` / ``vary`` commands."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from var import VARPipeline, box_mask, generate, load_mask
from var.cli import main
from var.editing import check_mask, keep_masks_from_mask
from var.images import load_image

from test_model import small_pipe


def padded_pipe(pad: int, channels: int = 3) -> VARPipeline:
    """The tiny random pipeline (8x8 model images, scales 1-4), with ``pad`` pixels of model border."""
    pipe = small_pipe(channels=channels)
    return VARPipeline(pipe.vqvae, pipe.var, pad=pad)


def images_for(pipe: VARPipeline, n: int = 2) -> torch.Tensor:
    return torch.rand(n, pipe.channels, pipe.image_size, pipe.image_size, generator=torch.Generator().manual_seed(0))


def same_tokens(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def finest_generated(mask_BHW: np.ndarray, pad: int, cell: int) -> np.ndarray:
    """Which finest-scale tokens must be generated, computed pixel by pixel: a token is generated when
    any pixel of its cell x cell block is, the border copying the nearest image pixel."""
    padded = np.pad(mask_BHW, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    B, H, _ = padded.shape
    p = H // cell
    return np.array([[padded[b, i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].any()
                      for i in range(p) for j in range(p)] for b in range(B)])


# ------------------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize("pad", [0, 2])
def test_inpaint_keeps_every_token_outside_the_hole_and_regenerates_inside(pad):
    pipe = padded_pipe(pad)
    S = pipe.image_size
    images = images_for(pipe)
    mask = torch.zeros(2, 1, S, S)
    mask[0, 0, :3, :3] = 1     # a corner: touches the border
    mask[1, 0, 2, 1] = 1       # one pixel inside
    out = pipe.inpaint(images, mask, class_labels=[0, 1], top_k=0, top_p=0, seed=0)
    source = pipe.encode(images)
    generated = torch.from_numpy(finest_generated(mask[:, 0].numpy().astype(bool), pad, cell=2))
    kept = ~generated
    assert torch.equal(out.tokens[-1][kept], source[-1][kept])
    assert not torch.equal(out.tokens[-1][generated], source[-1][generated])
    assert out.images.shape == images.shape and out.labels.tolist() == [0, 1]


def kept_area_fraction(keep_PP: np.ndarray, p: int) -> np.ndarray:
    """The kept fraction of each of p x p equal cells over a P x P keep map, by supersampling: each
    finest cell is split into p x p sub-cells and each coarse cell into P x P of them."""
    P = keep_PP.shape[0]
    fine = np.kron(keep_PP, np.ones((p, p)))                      # (P*p, P*p)
    return fine.reshape(p, P, p, P).mean(axis=(1, 3))


@pytest.mark.parametrize("patch_nums", [(1, 2, 3, 4), (1, 2, 3, 5, 7)])
def test_keep_masks_follow_the_reference_rule(patch_nums):
    """Finest scale: generated when any pixel is; coarser: kept when more than half the area is kept at
    the finest scale; the 1x1 scale: kept when anything is."""
    S = 4 * patch_nums[-1]
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 1, S, S, dtype=torch.bool)
    masks[0, 0, S // 3:2 * S // 3 + 1, S // 4:3 * S // 4] = True            # a centred hole
    masks[1, 0, :, S // 2:] = True                                           # the right half
    masks[2] = torch.rand(1, S, S, generator=g) > 0.97                      # scattered pixels
    masks[3] = True                                                          # everything
    keep = keep_masks_from_mask(masks, patch_nums)
    P = patch_nums[-1]
    for b in range(4):
        finest_keep = ~finest_generated(masks[b:b + 1, 0].numpy(), 0, cell=4)[0].reshape(P, P)
        assert torch.equal(keep[-1][b], torch.from_numpy(finest_keep.flatten()))
        assert keep[0][b].item() == bool(finest_keep.any())
        for k, p in enumerate(patch_nums[1:-1], start=1):
            expected = kept_area_fraction(finest_keep.astype(float), p).flatten() > 0.5
            assert torch.equal(keep[k][b], torch.from_numpy(expected)), (b, p)
    assert not any(k[3].any() for k in keep)                                  # all generated


def test_centred_hole_keeps_the_reference_token_counts():
    """The bundled model's schedule and a centred box (0.3-0.7): the counts the reference's rule keeps."""
    hole = box_mask(28, 28, 0.3, 0.3, 0.7, 0.7).bool()[None, None]
    keep = keep_masks_from_mask(hole, (1, 2, 3, 4, 5, 7))
    assert [int(k.sum()) for k in keep] == [1, 4, 8, 12, 20, 40]


@pytest.fixture(scope="module")
def fashion_test_images():
    from var.data import fashion_mnist_dataset
    try:
        test = fashion_mnist_dataset(split="test")
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed (make data): {e}")
    return test.batch(np.arange(48))


def test_inpainting_keeps_the_pixels_outside_the_hole(fashion_test_images):
    """Real test images through the public API with its defaults: the kept region stays the image's own
    (PSNR against the tokenizer's reconstruction), and the hole is regenerated, not copied."""
    from var.evaluation import psnr
    pipe = VARPipeline.from_pretrained("fashion-mnist")
    images, _ = fashion_test_images
    S = pipe.image_size
    reconstruction = pipe.decode(pipe.encode(images))
    hole = box_mask(S, S, 0.3, 0.3, 0.7, 0.7)
    out = pipe.inpaint(images, hole, seed=0)
    kept_psnr, hole_psnr = psnr(out.images, reconstruction, where=1 - hole), psnr(out.images, reconstruction, where=hole)
    assert kept_psnr >= 24, f"kept region drifted: {kept_psnr:.1f} dB"
    assert hole_psnr < kept_psnr - 4, f"the hole looks copied: {hole_psnr:.1f} dB vs kept {kept_psnr:.1f} dB"


@pytest.mark.parametrize("pad", [0, 2])
def test_mask_of_zeros_returns_the_reconstruction(pad):
    pipe = padded_pipe(pad)
    images = images_for(pipe)
    out = pipe.inpaint(images, torch.zeros(pipe.image_size, pipe.image_size), seed=0)
    source = pipe.encode(images)
    assert same_tokens(out.tokens, source)
    torch.testing.assert_close(out.images, pipe.decode(source), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad", [0, 2])
def test_mask_of_ones_is_plain_generation_with_the_same_seed_and_label(pad):
    pipe = padded_pipe(pad)
    images = images_for(pipe)
    ones = torch.ones(2, 1, pipe.image_size, pipe.image_size)
    edited = pipe.inpaint(images, ones, class_labels=[1, 3], top_k=0, top_p=0, seed=5)
    plain = pipe(class_labels=[1, 3], top_k=0, top_p=0, seed=5)
    assert same_tokens(edited.tokens, plain.tokens)
    assert torch.equal(edited.images, plain.images)


def test_without_a_label_the_null_class_conditions_and_a_label_changes_the_result():
    pipe = padded_pipe(0)
    images = images_for(pipe)
    ones = torch.ones(pipe.image_size, pipe.image_size)
    unconditional = pipe.inpaint(images, ones, top_k=0, top_p=0, seed=2)
    null = torch.full((2,), pipe.num_classes)
    _, expected = generate(pipe.var, pipe.vqvae, null, top_k=0, top_p=0, generator=torch.Generator().manual_seed(2))
    assert unconditional.labels.tolist() == null.tolist() and same_tokens(unconditional.tokens, expected)
    conditional = pipe.inpaint(images, ones, class_labels=4, top_k=0, top_p=0, seed=2)
    _, expected = generate(pipe.var, pipe.vqvae, torch.full((2,), 4), top_k=0, top_p=0,
                           generator=torch.Generator().manual_seed(2))
    assert conditional.labels.tolist() == [4, 4] and same_tokens(conditional.tokens, expected)
    assert not same_tokens(conditional.tokens, unconditional.tokens)


def test_outpainting_keeps_the_box():
    pipe = padded_pipe(0)
    images = images_for(pipe)
    out = pipe.inpaint(images, 1 - box_mask(8, 8, 0.25, 0.25, 0.75, 0.75), top_k=0, top_p=0, seed=0)
    source = pipe.encode(images)
    centre = torch.zeros(4, 4, dtype=torch.bool)
    centre[1:3, 1:3] = True
    assert torch.equal(out.tokens[-1][:, centre.flatten()], source[-1][:, centre.flatten()])
    assert not torch.equal(out.tokens[-1][:, ~centre.flatten()], source[-1][:, ~centre.flatten()])


def test_edits_are_reproducible_with_a_seed_and_chunking_keeps_each_images_mask():
    pipe = padded_pipe(0)
    images = images_for(pipe, 3)
    mask = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    a = pipe.inpaint(images, mask, seed=3, top_k=0, top_p=0)
    b = pipe.inpaint(images, mask, seed=3, top_k=0, top_p=0)
    c = pipe.inpaint(images, mask, seed=4, top_k=0, top_p=0)
    assert same_tokens(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert not torch.equal(a.tokens[-1], c.tokens[-1])
    greedy = pipe.inpaint(images, mask, class_labels=[0, 1, 2], top_k=1)
    chunked = pipe.inpaint(images, mask, class_labels=[0, 1, 2], top_k=1, batch_size=1)
    assert same_tokens(greedy.tokens, chunked.tokens)


# -------------------------------------------------------------------------------------- variations
def test_vary_keeps_the_first_scales_and_regenerates_the_rest():
    pipe = padded_pipe(1)
    images = images_for(pipe)
    source = pipe.encode(images)
    K = len(pipe.patch_nums)
    full = pipe.vary(images, keep_scales=K, seed=0)
    assert same_tokens(full.tokens, source)
    torch.testing.assert_close(full.images, pipe.decode(source), atol=1e-5, rtol=0)
    none = pipe.vary(images, keep_scales=0, class_labels=[2, 2], top_k=0, top_p=0, seed=1)
    assert same_tokens(none.tokens, pipe(class_labels=[2, 2], top_k=0, top_p=0, seed=1).tokens)
    half = pipe.vary(images, keep_scales=2, top_k=0, top_p=0, seed=1)
    assert same_tokens(half.tokens[:2], source[:2]) and not torch.equal(half.tokens[-1], source[-1])
    with pytest.raises(ValueError, match=r"keep_scales must be an integer in \[0, 4\].*got 5"):
        pipe.vary(images, keep_scales=5)


# ------------------------------------------------------------------------------------ mask helpers
def test_box_mask_covers_every_pixel_the_box_touches():
    mask = box_mask(10, 10, 0.1, 0.0, 0.6, 0.25)
    expected = torch.zeros(10, 10)
    expected[1:6, 0:3] = 1
    assert torch.equal(mask, expected)
    # In floats 0.29 * 100 is 28.999999999999996 and 0.57 * 100 is 56.99999999999999: rows 29 to 56.
    assert box_mask(100, 1, 0.29, 0, 0.57, 1)[:, 0].nonzero().flatten().tolist() == list(range(29, 57))
    thin = box_mask(10, 10, 0.5, 0.999, 0.5 + 1e-12, 1.0)        # thinner than rounding noise: still a pixel
    assert thin.nonzero().tolist() == [[5, 9]]
    with pytest.raises(ValueError, match=r"y0=1.5 is not a fraction"):
        box_mask(10, 10, 1.5, 0, 1, 1)
    with pytest.raises(ValueError, match="y0 < y1"):
        box_mask(10, 10, 0.6, 0, 0.5, 1)


def test_load_mask_thresholds_checks_the_size_and_resizes_without_losing_the_hole(tmp_path):
    gray = np.zeros((12, 12), np.uint8)
    gray[1, 1], gray[6, 7], gray[10, 10] = 128, 255, 127   # 127 is below mid-grey: kept
    Image.fromarray(gray).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", expect=(12, 12))
    assert mask.nonzero().tolist() == [[1, 1], [6, 7]]
    small = load_mask(tmp_path / "m.png", size=4)   # 3x3 pixel cells
    assert small.nonzero().tolist() == [[0, 0], [2, 2]]
    with pytest.raises(ValueError, match=r"m.png is 12x12 .* its image is 10x12"):
        load_mask(tmp_path / "m.png", expect=(10, 12))
    inverse = load_mask(tmp_path / "m.png", size=4, invert=True)  # outpainting: the white is kept
    assert (inverse == 1).all()  # every 3x3 cell holds a black pixel, to be generated: none is lost to the resize
    assert load_mask(tmp_path / "m.png", invert=True).nonzero().shape[0] == 144 - 2
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read mask .*bad.png"):
        load_mask(tmp_path / "bad.png")


def test_bad_masks_are_clear_errors():
    pipe = padded_pipe(1)
    images = images_for(pipe)
    with pytest.raises(ValueError, match=r"mask is 8x8, expected 6x6"):
        pipe.inpaint(images, torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"0 \(keep\) or 1 \(generate\), got 0.5"):
        pipe.inpaint(images, torch.full((6, 6), 0.5))
    with pytest.raises(ValueError, match=r"\(2, 1, H, W\).*got \(3, 1, 6, 6\)"):
        pipe.inpaint(images, torch.ones(3, 1, 6, 6))
    with pytest.raises(ValueError, match="3 class labels for 2 images"):
        pipe.inpaint(images, torch.ones(6, 6), class_labels=[0, 1, 2])
    assert check_mask(torch.ones(6, 6, dtype=torch.bool), 2, 6).shape == (2, 1, 6, 6)


# ------------------------------------------------------------------------------- the command line
@pytest.fixture
def saved(tmp_path):
    """A tiny one-channel model saved to disk and a 12x12 input image (the model takes 8x8)."""
    pipe = padded_pipe(0, channels=1)
    pipe.save_pretrained(tmp_path / "model")
    gray = (np.random.default_rng(0).random((12, 12)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "in.png")
    return pipe, tmp_path


def run_cli(tmp_path, *argv) -> int:
    return main([*argv, "--model", str(tmp_path / "model"), "--device", "cpu"])


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.int16)


def as_png(images: torch.Tensor) -> np.ndarray:
    return images[0, 0].mul(255).round().to(torch.int16).numpy()


def test_cli_edit_matches_the_python_call_and_notes_the_resize(saved, caplog):
    pipe, tmp = saved
    hole = np.zeros((12, 12), np.uint8)
    hole[2:7, 3:9] = 255
    Image.fromarray(hole).save(tmp / "mask.png")
    caplog.set_level(logging.INFO)
    assert run_cli(tmp, "edit", "--image", str(tmp / "in.png"), "--mask", str(tmp / "mask.png"), "--class", "3",
                   "--seed", "4", "--top-k", "0", "--out", str(tmp / "out.png")) == 0
    assert "resized" in caplog.text and "12x12 to 8x8" in caplog.text
    image, _ = load_image(tmp / "in.png", 1, 8)
    expected = pipe.inpaint(image, load_mask(tmp / "mask.png", size=8), class_labels=3, seed=4, top_k=0)
    assert np.abs(png(tmp / "out.png") - as_png(expected.images)).max() <= 1


def test_cli_outpaint_around_the_whole_image_and_vary_all_scales_reconstruct(saved):
    pipe, tmp = saved
    image, _ = load_image(tmp / "in.png", 1, 8)
    reconstruction = as_png(pipe.decode(pipe.encode(image)))
    assert run_cli(tmp, "edit", "--image", str(tmp / "in.png"), "--box", "0,0,1,1", "--outpaint",
                   "--out", str(tmp / "outpaint.png")) == 0
    assert np.abs(png(tmp / "outpaint.png") - reconstruction).max() <= 1
    assert run_cli(tmp, "vary", "--image", str(tmp / "in.png"), "--keep-scales", "4",
                   "--out", str(tmp / "vary.png")) == 0
    assert np.abs(png(tmp / "vary.png") - reconstruction).max() <= 1


def test_cli_panel_puts_input_mask_and_result_side_by_side(saved):
    _, tmp = saved
    assert run_cli(tmp, "edit", "--image", str(tmp / "in.png"), "--box", "0.25,0.25,0.75,0.75", "--panel",
                   "--out", str(tmp / "panel.png")) == 0
    panel = png(tmp / "panel.png")
    assert 3 * 64 < panel.shape[1] < 4 * 64 and 64 < panel.shape[0] < 2 * 64  # three 64x64 tiles in a row
    assert run_cli(tmp, "vary", "--image", str(tmp / "in.png"), "--keep-scales", "2", "--panel",
                   "--out", str(tmp / "vpanel.png")) == 0
    assert 2 * 64 < png(tmp / "vpanel.png").shape[1] < 3 * 64


def test_cli_errors_are_clear(saved, caplog):
    _, tmp = saved
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp / "small.png")
    (tmp / "junk.png").write_text("not an image")
    args = ["--out", str(tmp / "never.png")]
    assert run_cli(tmp, "edit", "--image", str(tmp / "in.png"), "--mask", str(tmp / "small.png"), *args) == 2
    assert "small.png is 5x5" in caplog.text and "its image is 12x12" in caplog.text
    assert run_cli(tmp, "edit", "--image", str(tmp / "junk.png"), "--box", "0,0,1,1", *args) == 2
    assert "cannot read image" in caplog.text and "junk.png" in caplog.text
    assert run_cli(tmp, "edit", "--image", str(tmp / "in.png"), "--mask", str(tmp / "junk.png"), *args) == 2
    assert "cannot read mask" in caplog.text
    assert run_cli(tmp, "vary", "--image", str(tmp / "in.png"), "--keep-scales", "9", *args) == 2
    assert "keep_scales must be an integer in [0, 4]" in caplog.text
    assert not (tmp / "never.png").exists()
    with pytest.raises(SystemExit):
        run_cli(tmp, "edit", "--image", str(tmp / "in.png"), "--box", "0,0,1", *args)
