"""Zero-shot editing: inpainting, outpainting, variations, mask helpers and the ``edit`` / ``vary`` commands."""
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from PIL import Image

from var import VARPipeline, box_mask, generate, load_mask
from var.cli import main
from var.editing import check_mask, keep_masks_from_mask
from var.images import load_image
from conftest import FEW, small_pipe


def padded_pipe(pad: int, channels: int = 3) -> VARPipeline:
    """The tiny random pipeline (8x8 model images, scales 1-4), with ``pad`` pixels of model border."""
    pipe = small_pipe(channels=channels)
    return VARPipeline(pipe.vqvae, pipe.var, pad=pad)


def images_for(pipe: VARPipeline, n: int = 2) -> torch.Tensor:
    return torch.rand(n, pipe.channels, pipe.image_size, pipe.image_size, generator=torch.Generator().manual_seed(0))


def same_tokens(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def kept_share(mask_BHW: np.ndarray, pad: int, p: int) -> np.ndarray:
    """The kept share of each of p x p equal cells over a (padded, border copying the nearest pixel)
    pixel mask, by supersampling: each pixel is split into p x p sub-cells, each cell into P x P."""
    keep = ~np.pad(mask_BHW, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    B, P, _ = keep.shape
    fine = np.kron(keep.astype(float), np.ones((1, p, p)))          # (B, P*p, P*p)
    return fine.reshape(B, p, P, p, P).mean(axis=(2, 4)).reshape(B, -1)


def expected_keeps(mask_BHW: np.ndarray, patch_nums, pad: int = 0) -> list[np.ndarray]:
    """The editing rule, computed pixel by pixel: a token is kept when more than half of its pixels are,
    a first-scale token when any is; the finest tokens holding the largest share of a hole that is
    nowhere a majority are generated all the same."""
    keeps = []
    for k, p in enumerate(patch_nums):
        share = kept_share(mask_BHW, pad, p)
        keeps.append(share > (1e-9 if k == 0 else 0.5 + 1e-9))
    least = share.min(axis=1, keepdims=True)
    keeps[-1] &= ~((share <= least + 1e-9) & (least < 1))
    return keeps


# ------------------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize("pad", [0, 2])
def test_inpaint_regenerates_the_hole_and_keeps_the_rest(pad):
    pipe = padded_pipe(pad)
    S = pipe.image_size
    images = images_for(pipe)
    mask = torch.zeros(2, 1, S, S)
    mask[0, 0, :3, :3] = 1     # a corner: touches the border
    mask[1, 0, 2, 1] = 1       # one pixel inside: less than half of any token
    out = pipe.inpaint(images, mask, class_labels=[0, 1], top_k=0, top_p=0, seed=0)
    source = pipe.encode(images)
    keeps = expected_keeps(mask[:, 0].numpy().astype(bool), pipe.patch_nums, pad)
    generated = ~torch.from_numpy(keeps[-1])
    assert generated.sum(1).tolist()[1] >= 1                  # the one-pixel hole still regenerates a token
    assert not torch.equal(out.tokens[-1][generated], source[-1][generated])
    # Image 1 keeps every coarser token, so its kept finest tokens are the image's own.
    assert all(torch.equal(out.tokens[k][1], source[k][1]) for k in range(len(source) - 1))
    assert torch.equal(out.tokens[-1][1][~generated[1]], source[-1][1][~generated[1]])
    assert out.images.shape == images.shape and out.labels.tolist() == [0, 1]


@pytest.mark.parametrize("patch_nums", [(1, 2, 3, 4), (1, 2, 3, 5, 7)])
def test_keep_masks_follow_the_rule_pixel_by_pixel(patch_nums):
    S = 4 * patch_nums[-1]
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(5, 1, S, S, dtype=torch.bool)
    masks[0, 0, S // 3:2 * S // 3 + 1, S // 4:3 * S // 4] = True            # a centred hole
    masks[1, 0, :, S // 2:] = True                                           # the right half
    masks[2] = torch.rand(1, S, S, generator=g) > 0.97                      # scattered pixels
    masks[3] = True                                                          # everything
    masks[4, 0, 1, 1] = True                                                 # one pixel
    keep = keep_masks_from_mask(masks, patch_nums)
    for k, expected in enumerate(expected_keeps(masks[:, 0].numpy(), patch_nums)):
        assert torch.equal(keep[k], torch.from_numpy(expected)), k
    assert not any(k[3].any() for k in keep)                                  # all generated
    assert (~keep[-1][4]).sum() == 1 and all(k[4].all() for k in keep[:-1])  # one token, and only it


def test_readme_box_keeps_the_ring_of_tokens_it_mostly_covers():
    """The bundled model's schedule and the README's box (0.25-0.75 of 28 px: 14 of 28 pixels a side):
    the 7x7 tokens it covers at least half of are the middle 3x3 (not the 5x5 it touches), and no
    coarse token is kept whose area is mostly hole."""
    hole = box_mask(28, 28, 0.25, 0.25, 0.75, 0.75).bool()[None, None]
    keep = keep_masks_from_mask(hole, (1, 2, 3, 4, 5, 7))
    assert [int(k.sum()) for k in keep] == [1, 4, 8, 12, 16, 40]


@pytest.fixture(scope="module")
def fashion_test_images():
    from var.data import fashion_mnist_dataset
    try:
        test = fashion_mnist_dataset(split="test")
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed (make data): {e}")
    return test.batch(np.arange(100, 116))


def test_inpainting_keeps_the_image_over_many_boxes(fashion_test_images):
    """Real test images through the public API with its defaults, the README's box and 12 seeded random
    boxes of 10-50% of the image: the kept region stays the image's own (PSNR against the tokenizer's
    reconstruction) at every box, and the hole is regenerated, not copied."""
    from var.editing import random_boxes
    from var.metrics import psnr
    pipe = VARPipeline.from_pretrained("fashion-mnist")
    images, _ = fashion_test_images
    S = pipe.image_size
    reconstruction = pipe.decode(pipe.encode(images))
    kept, in_hole = [], []
    for box in [(0.25, 0.25, 0.75, 0.75), *random_boxes(12, seed=0)]:
        hole = box_mask(S, S, *box)
        out = pipe.inpaint(images, hole, seed=0).images
        kept.append(psnr(out, reconstruction, where=1 - hole))
        in_hole.append(psnr(out, reconstruction, where=hole))
    assert kept[0] >= 26, f"the README's box kept {kept[0]:.1f} dB"
    assert np.median(kept[1:]) >= 24 and min(kept[1:]) >= 18, [round(k, 1) for k in kept]
    assert np.median(np.subtract(kept, in_hole)) > 4, "the holes look copied"


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


def test_outpainting_fits_the_box_to_what_was_generated_around_it():
    """The box's finest tokens are not sampled: they are the codes that bring the generated coarse
    content to the image's latent there (re-fitted, since the coarse content around them is new)."""
    pipe = padded_pipe(0)
    images = images_for(pipe)
    out = pipe.inpaint(images, 1 - box_mask(8, 8, 0.25, 0.25, 0.75, 0.75), top_k=0, top_p=0, seed=0)
    source = pipe.encode(images)
    quant = pipe.vqvae.quantize
    centre = torch.zeros(4, 4, dtype=torch.bool)
    centre[1:3, 1:3] = True
    keep = centre.flatten().expand(2, -1)
    coarse = quant.indices_to_latent(out.tokens, upto=len(out.tokens) - 1)
    fitted = quant.codes_toward(len(out.tokens) - 1, coarse, quant.indices_to_latent(source), keep, out.tokens[-1])
    assert torch.equal(out.tokens[-1], fitted)
    assert not torch.equal(out.tokens[-1][:, ~centre.flatten()], source[-1][:, ~centre.flatten()])


def test_fitted_codes_are_the_encoding_where_nothing_was_generated():
    """With the image's own coarser scales below it, fitting a scale toward the image's latent is
    encoding it: the ids are the tokenizer's (the coarse scales; the last also takes phi's neighbours
    into account and must not fit worse than the encoding's ids)."""
    pipe = padded_pipe(0)
    quant = pipe.vqvae.quantize
    with torch.no_grad():
        f_BCHW = pipe.vqvae.encode_latent(pipe._to_model_images(images_for(pipe)))
        source = quant.latent_to_indices(f_BCHW)
        everywhere = [torch.ones_like(t, dtype=torch.bool) for t in source]
        K = len(source)
        for k in range(K - 1):
            prefix = quant.indices_to_latent(source, upto=k) if k else torch.zeros_like(f_BCHW)
            assert torch.equal(quant.codes_toward(k, prefix, f_BCHW, everywhere[k], source[k]), source[k])
        prefix = quant.indices_to_latent(source, upto=K - 1)
        fitted = quant.codes_toward(K - 1, prefix, f_BCHW, everywhere[-1], source[-1])
        error = lambda ids: float((prefix + quant.code_map_to_residual(
            K - 1, quant.embedding(ids).transpose(1, 2).reshape(f_BCHW.shape)) - f_BCHW).square().mean())
        assert error(fitted) <= error(source[-1]) + 1e-7


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


@pytest.fixture(scope="module")
def pipe():
    """The tiny random one-channel pipeline (8x8 images, scales 1-4)."""
    return small_pipe(channels=1)


@FEW
@given(h=st.integers(1, 40), w=st.integers(1, 40),
       ys=st.tuples(st.floats(0, 1), st.floats(0, 1)), xs=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_box_mask_is_the_rectangle_of_the_pixels_the_box_touches(h, w, ys, xs):
    (y0, y1), (x0, x1) = sorted(ys), sorted(xs)
    if not (y0 < y1 and x0 < x1):
        with pytest.raises(ValueError, match="y0 < y1 and x0 < x1"):
            box_mask(h, w, y0, x0, y1, x1)
        return
    mask = box_mask(h, w, y0, x0, y1, x1)
    rows, cols = mask.any(1).nonzero().flatten().tolist(), mask.any(0).nonzero().flatten().tolist()
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() == len(rows) * len(cols)  # one rectangle
    assert set(rows) <= set(range(math.floor(y0 * h), math.ceil(y1 * h)))     # never beyond what it touches
    assert set(cols) <= set(range(math.floor(x0 * w), math.ceil(x1 * w)))
    assert rows and cols                                                        # however thin the box
    assert set(range(math.ceil(y0 * h), math.floor(y1 * h))) <= set(rows)      # rows wholly inside the box
    assert set(range(math.ceil(x0 * w), math.floor(x1 * w))) <= set(cols)


@FEW
@given(v=st.floats(allow_nan=True, allow_infinity=True))
def test_box_fractions_outside_zero_one_are_named(v):
    if 0 <= v <= 1:
        return
    with pytest.raises(ValueError, match=r"box x1=.* is not a fraction in \[0, 1\]"):
        box_mask(8, 8, 0, 0, 1, v)


@FEW
@given(batch=st.integers(1, 3), shared=st.booleans(), seed=st.integers(0, 2**16),
       bad=st.one_of(st.none(), st.sampled_from([0.5, -1.0, 2.0, float("nan")])))
def test_check_mask_expands_zero_one_masks_and_names_other_values(batch, shared, seed, bad):
    values = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, (1 if shared else batch, 1, 6, 6))).float()
    if bad is None:
        out = check_mask(values, batch, 6)
        assert out.dtype == torch.bool and out.shape == (batch, 1, 6, 6)
        assert torch.equal(out, (values != 0).expand(batch, 1, 6, 6))
    else:
        values[0, 0, seed % 6, 0] = bad
        with pytest.raises(ValueError, match=r"mask values must be 0 \(keep\) or 1 \(generate\), got"):
            check_mask(values, batch, 6)


@pytest.mark.parametrize("keep", [2.5, True, None, "2"])
def test_vary_names_a_keep_scales_that_is_not_an_integer(pipe, keep):
    """2.5 used to keep 3 scales and True 1 without a word; None and "2" failed with a TypeError."""
    images = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"keep_scales must be an integer in \[0, 4\].*got {keep!r}"):
        pipe.vary(images, keep)


def test_vary_accepts_numpy_and_tensor_integers(pipe):
    images = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    source = pipe.encode(images)
    for keep in (np.int64(4), torch.tensor(4)):
        out = pipe.vary(images, keep, seed=0)
        assert all(torch.equal(a, b) for a, b in zip(out.tokens, source))
