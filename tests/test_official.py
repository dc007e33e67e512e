"""Conformance with the released architecture: keys, shapes and the reference outputs of the fixture."""
import json

import pytest
import torch

from var import VAR, VARConfig, VARPipeline, VQVAE, VQVAEConfig
from var.official import var_config_from_state_dict, vqvae_config_from_state_dict
from conftest import RunsCode, official_file


RELEASED = ["var_d16", "var_d20", "var_d24", "var_d30", "var_d36"]


@pytest.fixture(scope="module")
def keys():
    return json.loads(official_file("keys.json").read_text())


def _shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", RELEASED)
def test_released_keys_and_shapes(keys, name):
    entry = keys[name]
    cfg, depth = entry["config"], entry["config"]["depth"]
    with torch.device("meta"):
        vae = VQVAE(VQVAEConfig(patch_nums=cfg["patch_nums"]))
        var = VAR(VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, patch_nums=cfg["patch_nums"],
                            shared_aln=cfg["shared_aln"]))
    assert _shapes(vae) == entry["vae"]
    assert _shapes(var) == entry["var"]
    assert sum(p.numel() for p in var.parameters()) == entry["var_params"]


@pytest.mark.parametrize("name", RELEASED)
def test_config_is_read_from_the_state_dict(keys, name):
    entry = keys[name]
    var_sd = {k: torch.empty(s, device="meta") for k, s in entry["var"].items()}
    var_sd["lvl_1L"] = torch.cat([torch.full((p * p,), k) for k, p in enumerate(entry["config"]["patch_nums"])])[None]
    vcfg = var_config_from_state_dict(var_sd)
    assert vcfg.depth == entry["config"]["depth"] and vcfg.num_heads == entry["config"]["depth"]
    assert vcfg.patch_nums == tuple(entry["config"]["patch_nums"])
    assert vcfg.shared_aln == entry["config"]["shared_aln"] and vcfg.attn_l2_norm
    vae_sd = {k: torch.empty(s, device="meta") for k, s in entry["vae"].items()}
    acfg = vqvae_config_from_state_dict(vae_sd, vcfg.patch_nums)
    assert acfg == VQVAEConfig(patch_nums=vcfg.patch_nums)


def test_encode_matches_reference(fixture, tiny_pipe):
    tokens = tiny_pipe.encode((fixture["images"] + 1) / 2)
    for ours, ref in zip(tokens, fixture["expected"]["idx_per_scale"], strict=True):
        assert torch.equal(ours, ref)


def test_decode_matches_reference(fixture, tiny_pipe):
    exp = fixture["expected"]
    images = tiny_pipe.decode(exp["idx_per_scale"])
    torch.testing.assert_close(images, (exp["decoded_from_idx"] + 1) / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(images, (exp["reconstruction"] + 1) / 2, atol=1e-4, rtol=0)


def test_teacher_forcing_and_logits_match_reference(fixture, tiny_pipe):
    exp = fixture["expected"]
    tf = tiny_pipe.vqvae.quantize.teacher_forcing_input(exp["idx_per_scale"])
    torch.testing.assert_close(tf, exp["teacher_forcing_input"], atol=1e-4, rtol=0)
    logits = tiny_pipe.logits(exp["idx_per_scale"], fixture["labels"])
    torch.testing.assert_close(logits, exp["logits"], atol=1e-4, rtol=0)


def test_greedy_generation_matches_reference(fixture, tiny_pipe):
    exp = fixture["expected"]
    out = tiny_pipe(class_labels=fixture["labels"], cfg=fixture["config"]["cfg"], top_k=1, seed=0)
    for ours, ref in zip(out.tokens, exp["greedy_tokens_per_scale"], strict=True):
        assert torch.equal(ours, ref)
    torch.testing.assert_close(out.images, exp["greedy_image01"], atol=1e-4, rtol=0)


def test_loading_checks_the_architecture(fixture):
    var_sd = dict(fixture["var_state_dict"])
    with pytest.raises(ValueError, match="VQ-VAE first"):
        VARPipeline.from_official(var_sd, var_sd)
    broken = dict(var_sd)
    broken["head.weight"] = broken["head.weight"][:, :-1]
    with pytest.raises(ValueError, match="head.weight"):
        VARPipeline.from_official(fixture["vae_state_dict"], broken)
    vae_sd = dict(fixture["vae_state_dict"])
    vae_sd["quantize.embedding.weight"] = torch.zeros(32, 8)
    with pytest.raises(ValueError, match="do not belong together"):
        VARPipeline.from_official(vae_sd, var_sd)


def test_official_files_load_from_disk_without_code(fixture, tmp_path):
    torch.save(fixture["vae_state_dict"], tmp_path / "vae.pth")
    torch.save(fixture["var_state_dict"], tmp_path / "var.pth")
    pipe = VARPipeline.from_official(tmp_path / "vae.pth", tmp_path / "var.pth")
    assert pipe.patch_nums == (1, 2, 3, 4)
    with pytest.raises(FileNotFoundError):
        VARPipeline.from_official(tmp_path / "nope.pth", tmp_path / "var.pth")


def test_an_unstored_head_count_outside_the_released_family_is_a_named_guess(caplog):
    """Without L2-normalized attention the head count is not in the tensors: width 64 * depth follows the
    released rule quietly; any other width is guessed at head size 64 with a warning naming num_heads."""
    import logging

    def state_dict(depth, width):
        with torch.device("meta"):
            model = VAR(VARConfig(depth=depth, embed_dim=width, num_heads=4, patch_nums=(1, 2), attn_l2_norm=False))
        sd = {k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()}
        return sd | {"lvl_1L": torch.tensor([[0, 1, 1, 1, 1]])}  # read for the schedule: a real tensor

    with caplog.at_level(logging.WARNING):
        assert var_config_from_state_dict(state_dict(4, 256)).num_heads == 4
        assert not caplog.text
        assert var_config_from_state_dict(state_dict(4, 128)).num_heads == 2
        assert "assuming head size 64, 2 heads for width 128 and depth 4" in caplog.text
        assert var_config_from_state_dict(state_dict(4, 128), num_heads=4).num_heads == 4


def test_model_options_conflict_is_a_usage_error(tmp_path, capsys, caplog):
    from var.cli import main as cli
    with pytest.raises(SystemExit) as e:
        cli(["sample", "--model", "fashion-mnist", "--official", "a.pth", "b.pth"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert cli(["sample", "--num-heads", "4", "--out", str(tmp_path / "g.png")]) == 2
    assert "--num-heads is for --official checkpoints" in caplog.text


def test_from_official_on_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.pth").write_bytes(b"these are notes, not tensors\n" * 20)
    with pytest.raises(ValueError, match="notes.pth is not a PyTorch checkpoint / state dict"):
        VARPipeline.from_official(tmp_path / "notes.pth", tmp_path / "notes.pth")
    torch.save({"x": RunsCode()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="code.pth is refused: it holds Python objects other than tensors"):
        VARPipeline.from_official(tmp_path / "code.pth", tmp_path / "code.pth")
