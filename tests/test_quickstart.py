"""The educational VAR README's API on our package: its keywords, VAR.generate, VQVAE.decode_from_indices."""
import copy
import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from var import VAR, VARPipeline, VQVAE, VQVAEConfig
from var.aliases import QUICKSTART_VQVAE, vqvae_config_kwargs
from var.quickstart import NO_TOKENIZER
from var.recipes import preset_config
from var.training import VARTrainer
from conftest import TINY_VAE, small_pipe


ROOT = Path(__file__).resolve().parents[1]

# The request's three model sizes, its estimate, and the parameter count our models have (README table).
REQUEST_PRESETS = {
    "small": (dict(vocab_size=512, d_model=256, n_layers=6, n_heads=8, max_scale=8), "~6.6M", 7_681_840),
    "medium": (dict(vocab_size=4096, d_model=512, n_layers=12, n_heads=8, d_ff=2048, max_scale=16), "~50M", 60_639_840),
    "large": (dict(vocab_size=4096, d_model=768, n_layers=24, n_heads=12, d_ff=3072, max_scale=16), "~300M", 261_349_408),
}


def tiny_models(seed=0):
    """A small transformer and tokenizer that fit each other, built with the request's keywords."""
    torch.manual_seed(seed)
    vqvae = VQVAE(num_embeddings=48, embedding_dim=8, max_scale=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    var = VAR(vocab_size=48, d_model=64, n_layers=2, n_heads=2, max_scale=4, num_classes=5, latent_channels=8)
    return var, vqvae


def test_request_quick_start_runs_and_gives_images():
    vqvae = VQVAE(num_embeddings=512)
    var = VAR(vocab_size=512, d_model=256, n_layers=6, n_heads=8, max_scale=8)
    tokens = var.generate(batch_size=4, temperature=1.0, top_k=100, top_p=0.95, device="cpu", vqvae=vqvae)
    assert tokens.shape == (4, 204) and tokens.dtype == torch.long      # 1 + 4 + ... + 64 tokens
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 512
    final_scale_tokens = tokens[:, -64:].reshape(4, 8, 8)
    for images in (vqvae.decode_from_indices(final_scale_tokens), vqvae.decode_from_indices(tokens)):
        assert images.shape == (4, 3, 32, 32)
        assert 0 <= float(images.min()) and float(images.max()) <= 1


def test_quick_start_example_runs_as_printed(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "generate_simple.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "samples" / "generate_simple.png").stat().st_size > 0


@pytest.mark.parametrize("name", sorted(REQUEST_PRESETS))
def test_request_presets_have_the_parameter_counts_in_the_readme(name):
    kwargs, estimate, count = REQUEST_PRESETS[name]
    with torch.device("meta"):
        model = VAR(**kwargs)
        preset = VAR(preset_config(name))
    assert model.config == preset.config
    assert sum(p.numel() for p in model.parameters()) == count
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| {name} |"))
    assert estimate in row and f"{count:,}" in row


def test_aliases_and_canonical_names_give_identical_models():
    torch.manual_seed(0)
    a = VAR(vocab_size=48, d_model=64, n_layers=2, n_heads=2, d_ff=96, max_scale=3, num_classes=5)
    torch.manual_seed(0)
    b = VAR(vocab_size=48, embed_dim=64, depth=2, num_heads=2, mlp_ratio=1.5, patch_nums=(1, 2, 3), num_classes=5)
    assert a.config == b.config and a.blocks[0].ffn.fc1.out_features == 96
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    quick = dict(QUICKSTART_VQVAE, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    torch.manual_seed(0)
    c = VQVAE(num_embeddings=48, embedding_dim=8, max_scale=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    torch.manual_seed(0)
    d = VQVAE(VQVAEConfig(**dict(quick, vocab_size=48, z_channels=8, patch_nums=(1, 2, 3, 4))))
    assert c.config == d.config
    assert all(torch.equal(x, y) for x, y in zip(c.state_dict().values(), d.state_dict().values(), strict=True))


def test_quick_start_tokenizer_fits_the_quick_start_transformer():
    with torch.device("meta"):
        vqvae = VQVAE(num_embeddings=512)
        var = VAR(vocab_size=512, d_model=256, n_layers=6, n_heads=8, max_scale=8)
    assert vqvae.config.z_channels == var.config.latent_channels
    assert vqvae.patch_nums == var.patch_nums and vqvae.patch_nums[-1] == 8
    assert vqvae.config.image_size == 32
    # Our own names keep our defaults (the released tokenizer): only the request's names pick the small one.
    assert vqvae_config_kwargs({"vocab_size": 512}) == {"vocab_size": 512}


def test_mixing_an_alias_with_its_own_name_and_bad_d_ff_are_errors():
    with pytest.raises(TypeError, match="d_model= is another name for embed_dim="):
        VAR(d_model=64, embed_dim=64)
    with pytest.raises(TypeError, match="max_scale= is another name for patch_nums="):
        VAR(max_scale=4, patch_nums=(1, 2))
    with pytest.raises(TypeError, match="num_embeddings= is another name for vocab_size="):
        VQVAE(num_embeddings=512, vocab_size=512)
    with pytest.raises(TypeError, match="needs d_model="):
        VAR(d_ff=2048)
    with pytest.raises(ValueError, match="d_ff must be a positive integer"):
        VAR(d_model=64, n_heads=2, d_ff=96.5)


def test_generate_without_a_tokenizer_names_the_fix():
    var, vqvae = tiny_models()
    with pytest.raises(ValueError, match=re.escape("Pass it: var.generate(..., vqvae=vqvae)")):
        var.generate(batch_size=2)
    assert var.generate(batch_size=2, vqvae=vqvae).shape == (2, 30)
    assert NO_TOKENIZER in (ROOT / "README.md").read_text()        # the README quotes it as it is


def test_pipeline_and_trainer_pair_the_tokenizer_weakly_and_outside_the_state_dict(tmp_path):
    var, vqvae = tiny_models()
    keys = set(var.state_dict())
    pipe = VARPipeline(vqvae, var)
    assert var.generate(batch_size=1, seed=0).shape == (1, 30)
    assert set(var.state_dict()) == keys
    assert copy.deepcopy(var).paired_tokenizer is vqvae           # e.g. a trainer's EMA copy
    torch.save(var, tmp_path / "var.pt")                            # whole-module pickles still work
    assert torch.load(tmp_path / "var.pt", weights_only=False).paired_tokenizer is None
    del pipe, vqvae
    gc.collect()
    with pytest.raises(ValueError, match="vqvae=vqvae"):            # the link did not keep the tokenizer alive
        var.generate(batch_size=1)

    other, vqvae = tiny_models()
    trainer = VARTrainer(other, vqvae, torch.optim.AdamW(other.parameters()), ema_decay=0.9)
    assert other.paired_tokenizer is vqvae and trainer.ema.paired_tokenizer is vqvae
    assert other.generate(batch_size=1, seed=0).shape == (1, 30)


def test_generate_matches_the_pipeline_and_decodes_every_form():
    var, vqvae = tiny_models()
    pipe = VARPipeline(vqvae, var)
    labels = [0, 3, 4]
    out = pipe(class_labels=labels, cfg=2.0, top_k=10, top_p=0.9, seed=7)
    tokens = var.generate(batch_size=3, class_labels=labels, cfg=2.0, top_k=10, top_p=0.9, seed=7)
    assert torch.equal(tokens, torch.cat(out.tokens, dim=1))
    torch.testing.assert_close(vqvae.decode_from_indices(tokens), out.images)
    torch.testing.assert_close(vqvae.decode_from_indices(out.tokens), out.images)
    maps = [t.view(3, p, p) for t, p in zip(out.tokens, var.patch_nums)]
    torch.testing.assert_close(vqvae.decode_from_indices(maps), out.images)

    # The last scale alone is the finest residual: all scales' latent minus the coarser scales' latent.
    q, K = vqvae.quantize, len(var.patch_nums)
    residual = q.indices_to_latent(out.tokens) - q.indices_to_latent(out.tokens[:K - 1], upto=K - 1)
    with torch.no_grad():
        want = (vqvae.decode_latent(residual) + 1) / 2
    torch.testing.assert_close(vqvae.decode_from_indices(maps[-1]), want)


def test_generate_seeds_labels_devices_and_mode():
    var, vqvae = tiny_models()
    var.train()
    a = var.generate(batch_size=4, seed=3, vqvae=vqvae)
    assert var.training                                              # its mode is given back
    assert torch.equal(a, var.generate(batch_size=4, seed=3, vqvae=vqvae))
    assert not torch.equal(a, var.generate(batch_size=4, seed=4, vqvae=vqvae))
    with pytest.raises(ValueError, match="2 class labels for batch_size=4"):
        var.generate(batch_size=4, class_labels=[1, 2], vqvae=vqvae)
    with pytest.raises(ValueError, match="device=cuda but the models are on cpu"):
        var.generate(batch_size=1, device="cuda", vqvae=vqvae)
    with pytest.raises(ValueError, match="does not fit"):
        var.generate(batch_size=1, vqvae=VQVAE(num_embeddings=64, embedding_dim=8, max_scale=4, ch=32,
                                               ch_mult=(1, 2), num_res_blocks=1))


def test_decode_from_indices_rejects_tokens_of_another_shape():
    _, vqvae = tiny_models()
    with pytest.raises(ValueError, match=r"L = 30 tokens"):
        vqvae.decode_from_indices(torch.zeros(2, 29, dtype=torch.long))
    with pytest.raises(ValueError, match=r"the last scale's, \(B, 4, 4\)"):
        vqvae.decode_from_indices(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \[0, 48\)"):
        vqvae.decode_from_indices(torch.full((2, 4, 4), 48))


def test_a_config_and_keyword_options_together_are_refused():
    from var import VAR, VQVAE

    with pytest.raises(TypeError, match=r"VAR\(\) takes a VARConfig or keyword options, not both .*\['depth'\]"):
        VAR(small_pipe().var.config, depth=4)
    with pytest.raises(TypeError, match=r"VQVAE\(\) takes a VQVAEConfig or keyword options, not both"):
        VQVAE(TINY_VAE, vocab_size=16)


@pytest.mark.parametrize("labels, shown", [([1.7, 2.0], "1.7"), (torch.tensor([0.5, 1.0]), "0.5"),
                                           ([True, False], "True"), (["Dress", "Bag"], "'Dress'")])
def test_quick_start_generate_refuses_class_labels_that_are_not_whole_ids(labels, shown):
    """VAR.generate(class_labels=[1.7, ...]) silently generated class 1 (the float was truncated); the pipeline
    refuses such a label by name, and so must the quick start's call (the same check: var.sampling.class_ids)."""
    var, vqvae = tiny_models()
    refused = f"class_labels must hold integers or class names, got {shown}|unknown class {shown}: this model"
    with pytest.raises(ValueError, match=refused):
        var.generate(batch_size=2, class_labels=labels, seed=0, vqvae=vqvae)
    # Whole numbers, as floats (JSON) or any integer type, are still ids.
    whole = var.generate(batch_size=2, class_labels=[1.0, np.int64(2)], seed=0, vqvae=vqvae)
    assert torch.equal(whole, var.generate(batch_size=2, class_labels=[1, 2], seed=0, vqvae=vqvae))
