"""VARPipeline (var.pipeline): generation, class labels and names, image and token inputs, sampling defaults."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from var import VARPipeline, VQVAE, VQVAEConfig, patch_nums_from_max_scale
from var.recipes import preset_config
from var.sampling import generate as sample_generate, make_generator
from conftest import FEW, small_pipe


NAMES = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]


@pytest.fixture(scope="module")
def pipe():
    p = small_pipe()
    return VARPipeline(p.vqvae, p.var, class_names=NAMES)


def test_seed_reproducible_and_different_seeds_differ():
    pipe = small_pipe()
    a = pipe(class_labels=[1, 2], seed=7, top_k=0, top_p=0.0)
    b = pipe(class_labels=[1, 2], seed=7, top_k=0, top_p=0.0)
    c = pipe(class_labels=[1, 2], seed=8, top_k=0, top_p=0.0)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    assert not torch.equal(a.tokens[-1], c.tokens[-1])
    d = pipe(num_samples=6, seed=3)
    e = pipe(num_samples=6, seed=3)
    assert torch.equal(d.labels, e.labels) and d.labels.shape == (6,)
    assert d.labels.min() >= 0 and d.labels.max() < pipe.num_classes


def test_batched_generation_matches_unbatched_when_greedy():
    pipe = small_pipe()
    full = pipe(class_labels=[0, 1, 2, 3, 4], cfg=1.5, top_k=1, seed=0)
    chunked = pipe(class_labels=[0, 1, 2, 3, 4], cfg=1.5, top_k=1, seed=0, batch_size=2)
    assert all(torch.equal(x, y) for x, y in zip(full.tokens, chunked.tokens))
    assert full.images.shape == (5, 3, 8, 8) and 0 <= full.images.min() and full.images.max() <= 1


def test_output_shapes_and_token_layout():
    pipe = small_pipe(patch_nums=patch_nums_from_max_scale(4), channels=1)
    out = pipe(class_labels=[0, 1], seed=0, smooth=True, temperature=0.8)
    assert [t.shape for t in out.tokens] == [(2, p * p) for p in (1, 2, 3, 4)]
    assert out.images.shape == (2, 1, 8, 8)
    assert all(t.dtype == torch.long for t in out.tokens)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_a_batch_size_that_is_not_a_positive_integer_is_named(batch_size):
    # -1 used to fail inside torch.cat, 1.5 to run as 1 and 0 as the whole batch, without a word
    with pytest.raises(ValueError, match=rf"batch_size must be an integer >= 1 .*got {batch_size!r}"):
        small_pipe()(class_labels=[0, 1], batch_size=batch_size)


def test_clear_errors():
    pipe = small_pipe()
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 5\) or 5 \(the null class\), got \[6\]"):
        pipe(class_labels=[6])                                  # 5, the null class, generates unconditionally
    with pytest.raises(ValueError, match="takes 8x8"):
        pipe.encode(torch.rand(1, 3, 20, 20))
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        pipe.encode(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pipe.encode(torch.rand(1, 3, 8, 8) * 255)
    tokens = pipe.encode(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="expected 4 token maps"):
        pipe.decode(tokens[:3])
    with pytest.raises(ValueError, match="scale 1 must have shape"):
        pipe.decode([tokens[0], tokens[1][:, :3], tokens[2], tokens[3]])
    with pytest.raises(ValueError, match="outside"):
        pipe.decode([tokens[0], tokens[1], tokens[2], tokens[3] + 100])
    with pytest.raises(ValueError, match="2 token maps"):
        pipe.logits(tokens, [0, 1, 2])
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
    other = VQVAE(VQVAEConfig(**{**pipe.vqvae.config.to_dict(), "vocab_size": 16}))
    with pytest.raises(ValueError, match=r"the tokenizer \(vocabulary, latent channels, scales\) \(16, "):
        VARPipeline(other, pipe.var)


def test_sampling_defaults_are_saved_with_the_model(tmp_path):
    pipe = small_pipe()
    assert pipe.sampling(cfg=None, top_k=5) == {"cfg": 1.5, "top_k": 5}      # the reference's, else given
    pipe.sampling_defaults["cfg"] = 4.0
    pipe.save_pretrained(tmp_path / "m")
    again = VARPipeline.from_pretrained(tmp_path / "m")
    assert again.sampling_defaults["cfg"] == 4.0
    a = again(class_labels=[1, 2], seed=3)                  # cfg from the model
    b = again(class_labels=[1, 2], seed=3, cfg=4.0)
    c = again(class_labels=[1, 2], seed=3, cfg=0.0)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match="unknown sampling defaults"):
        VARPipeline(pipe.vqvae, pipe.var, sampling_defaults={"cfgg": 2})


def test_the_null_class_generates_unconditionally_and_on_scale_reports_every_scale():
    pipe = small_pipe()
    null = pipe.num_classes
    seen = []
    out = pipe(class_labels=[null, null], seed=4, on_scale=seen.append)
    _, expected = sample_generate(pipe.var, pipe.vqvae, torch.full((2,), null), cfg=pipe.sampling_defaults["cfg"],
                                  top_k=900, top_p=0.96, generator=torch.Generator().manual_seed(4))
    assert out.labels.tolist() == [null, null] and all(torch.equal(a, b) for a, b in zip(out.tokens, expected))
    assert seen == list(range(len(pipe.patch_nums)))           # once per scale, in order
    assert pipe.label_name(null) == "null class" and pipe.label_name(2) == "class 2"
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 5\)"):
        pipe.class_ids([null])                                  # only generation takes the null class


@pytest.mark.parametrize("kw, message", [(dict(cfg=float("inf")), "cfg must be a finite number .*got inf"),
                                         (dict(cfg=float("nan")), "cfg must be a finite number"),
                                         (dict(top_k=-5), "top_k must be an integer >= 0"),
                                         (dict(top_k=2.5), "top_k must be an integer >= 0"),
                                         (dict(top_p=2), r"top_p must be in \[0, 1\]"),
                                         (dict(temperature=0), "temperature must be a finite number > 0")])
def test_pipeline_rejects_bad_sampling_options(pipe, kw, message):
    with pytest.raises(ValueError, match=message):
        pipe(class_labels=[0], **kw)


def test_empty_and_fractional_labels_are_errors(pipe):
    with pytest.raises(ValueError, match="class_labels is empty"):
        pipe(class_labels=[])
    with pytest.raises(ValueError, match="integers or class names, got 1.5"):
        pipe(class_labels=[1.5])
    with pytest.raises(ValueError, match="integers or class names, got 1.5"):
        pipe(class_labels=torch.tensor([1.5]))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
        pipe(num_samples=0)


def test_class_names_are_accepted_and_unknown_ones_listed(pipe):
    by_name = pipe(class_labels=["gamma", "Alpha"], seed=3, top_k=1)
    by_id = pipe(class_labels=[2, 0], seed=3, top_k=1)
    assert by_name.labels.tolist() == [2, 0] and torch.equal(by_name.images, by_id.images)
    with pytest.raises(ValueError, match=r"unknown class 'Zeta'; expected one of \['Alpha'.*'Epsilon'\]"):
        pipe(class_labels=["Zeta"])
    with pytest.raises(ValueError, match="this model has no class names"):
        small_pipe()(class_labels=["Alpha"])


@FEW
@given(st.lists(st.one_of(st.integers(-3, 8), st.sampled_from(NAMES + [n.upper() for n in NAMES] + ["nope"])),
                min_size=1, max_size=6))
def test_class_ids_maps_ids_and_names_or_names_the_bad_one(pipe, labels):
    lookup = {n.lower(): i for i, n in enumerate(NAMES)}
    expected = [lookup.get(c.lower(), None) if isinstance(c, str) else c for c in labels]
    if all(e is not None and 0 <= e < len(NAMES) for e in expected):
        assert pipe.class_ids(labels).tolist() == expected
    else:
        with pytest.raises(ValueError, match=r"unknown class 'nope'|class labels must be in \[0, 5\)"):
            pipe.class_ids(labels)


def test_non_finite_images_are_errors(pipe):
    images = torch.rand(2, 3, 8, 8)
    images[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite values"):
        pipe.encode(images)
    with pytest.raises(ValueError, match="64 non-finite values"):
        pipe.encode(torch.full((1, 1, 8, 8), float("inf")))   # also through the channel conversion


def test_rgb_and_grey_images_are_converted_to_the_models_channels(pipe, caplog):
    grey_pipe = small_pipe(channels=1)
    rgb = torch.rand(2, 3, 8, 8)
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    with caplog.at_level("INFO"):
        for ours, ref in zip(grey_pipe.encode(rgb), grey_pipe.encode(luma), strict=True):
            assert torch.equal(ours, ref)
    assert "converted RGB images to grey" in caplog.text
    for ours, ref in zip(pipe.encode(luma), pipe.encode(luma.repeat(1, 3, 1, 1)), strict=True):
        assert torch.equal(ours, ref)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        pipe.encode(torch.rand(1, 2, 8, 8))


@pytest.mark.parametrize("labels, shown", [([[1, 2], [3, 4]], "a nested sequence holding [1, 2]"),
                                           (torch.tensor([[1, 2], [3, 4]]), "an array of shape (2, 2)"),
                                           (np.array([[1], [2]]), "an array of shape (2, 1)")])
def test_class_labels_of_more_than_one_dimension_are_refused(pipe, labels, shown):
    with pytest.raises(ValueError, match=re.escape(f"class_labels must be one label or a 1-D sequence of labels, "
                                                   f"got {shown}")):
        pipe(class_labels=labels, seed=0)


def test_class_labels_that_are_not_ids_name_the_argument(pipe):
    with pytest.raises(ValueError, match=r"class_labels must hold integers or class names, got 1\.5"):
        pipe.class_ids([1.5])
    assert pipe.class_ids(torch.tensor(3)).tolist() == [3] and pipe.class_ids(np.array([1, 2])).tolist() == [1, 2]


@pytest.mark.parametrize("seed", ["x", 1.5, True, 2.0])
def test_a_seed_that_is_not_an_integer_is_named(pipe, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[-2\*\*63, 2\*\*64\), got "):
        make_generator(seed, "cpu")
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        pipe(class_labels=[0], seed=seed)
    assert make_generator(np.int64(3), "cpu").initial_seed() == 3


def test_token_ids_that_are_not_integers_are_named(pipe):
    tokens = pipe(class_labels=[0], seed=0).tokens
    for call in (pipe.decode, pipe.decode_per_scale):
        with pytest.raises(ValueError, match=r"token map of scale 0 must hold integer token ids \(int64\), "
                                             r"got torch.float32"):
            call([t.float() for t in tokens])
    assert torch.equal(pipe.decode([t.int() for t in tokens]), pipe.decode(tokens))


def test_reconstruction_check_says_when_the_model_does_not_know_an_image():
    """Noise is nothing the bundled model knows: the note names its data (and the grey conversion); a sample
    of its own it knows: no note. A model whose data is not recorded says that instead."""
    from var.pipeline import UNKNOWN_IMAGE_PSNR

    pipe = VARPipeline.from_pretrained("fashion-mnist")
    noise = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    db, note = pipe.reconstruction_check(noise, greyed=True)
    assert db < UNKNOWN_IMAGE_PSNR and note.startswith(f"note: the tokenizer reconstructs the image at {db:.1f} dB")
    assert "this model was trained on fashion-mnist; the image is outside what it knows: expect the kept part to " \
           "change too; the image was converted to greyscale" in note
    known = pipe(class_labels=[3], seed=0).images
    db, note = pipe.reconstruction_check(known)
    assert db >= UNKNOWN_IMAGE_PSNR and note is None
    unrecorded = VARPipeline(pipe.vqvae, pipe.var, class_names=pipe.class_names, pad=pipe.pad)
    assert "this model's training data is not recorded" in unrecorded.reconstruction_check(noise)[1]
    assert "greyscale" not in unrecorded.reconstruction_check(noise)[1]
    rgb = known.expand(-1, 3, -1, -1)  # a colour image for this 1-channel model: compared as the model sees it
    assert pipe.reconstruction_check(rgb)[0] == pytest.approx(pipe.reconstruction_check(known)[0], abs=1e-3)
