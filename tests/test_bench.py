"""The benchmark (var.bench, `var bench`): analytic FLOP counts, the report's fields and the option checks."""
import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from var import VAR, VARConfig, VARPipeline, VQVAE, VQVAEConfig
from var.bench import (GenerationSettings, benchmark_pipeline, decoder_flops, format_table, generation_flops,
                       model_configs, transformer_flops)
from var import bench as bench_module
from var.recipes import CONFIGS
from var.cli import build_parser, main as cli


def tiny_var_config(**kw):
    return VARConfig(vocab_size=48, latent_channels=8, num_classes=5, depth=2, embed_dim=64, num_heads=2,
                     patch_nums=(1, 2), **kw)


def test_transformer_flops_match_a_hand_count():
    # B = 3 images with guidance: n = 6 sequences; C = 64, FFN 256, V = 48, Cv = 8, depth 2, scales 1 and 2x2.
    per_token_linear = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64          # qkv, proj, fc1, fc2 (multiply-adds)
    adaln = 2 * (6 * 64 * 384)                                              # 2 blocks, once per call
    scale1 = 2 * (6 * 1 * per_token_linear + 2 * 6 * 1 * 1 * 64)          # 1 token, attends to 1
    scale2 = 2 * (6 * 4 * per_token_linear + 2 * 6 * 4 * 5 * 64)          # 4 tokens, attend to 5
    heads = 2 * (6 * 64 * 128) + 6 * 1 * 64 * 48 + 6 * 4 * 64 * 48        # head AdaLN per scale, head per token
    word_embed = 3 * 4 * 8 * 64                                             # scale 2's input, unguided batch
    phi = 2 * (3 * 9 * 8 * 8 * 4)                                           # 3x3 conv on the 2x2 latent, per scale
    expected = 2 * (adaln + scale1 + scale2 + heads + word_embed + phi)
    assert transformer_flops(tiny_var_config(), batch=3, guided=True) == expected


def test_transformer_flops_without_guidance_and_with_shared_adaln():
    guided = transformer_flops(tiny_var_config(), batch=2, guided=True)
    # 4 unguided images run as many sequences as 2 guided ones; only per-image work (the word embedding
    # of scale 2 and the phi conv at both scales) grows with the 2 extra images.
    per_image = 2 * (4 * 8 * 64) + 2 * 2 * (9 * 8 * 8 * 4)
    assert transformer_flops(tiny_var_config(), batch=4, guided=False) - guided == 2 * per_image
    shared = transformer_flops(tiny_var_config(shared_aln=True), batch=2)
    assert guided - shared == 2 * (4 * 64 * 384)  # one AdaLN projection instead of two


def test_decoder_flops_match_the_traced_convolutions():
    cfg = VQVAEConfig(in_channels=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, vocab_size=48,
                      patch_nums=(1, 2, 4), using_sa=False, using_mid_sa=False)
    with torch.device("meta"):
        vae = VQVAE(cfg)
        f_hat = torch.empty(2, 8, 4, 4)
    with FlopCounterMode(display=False) as counter:
        vae.decode_latent(f_hat)
    assert decoder_flops(cfg, batch=2) == counter.get_total_flops()


def test_decoder_flops_count_attention():
    plain = dict(in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, patch_nums=(1, 2, 4))
    with_mid = decoder_flops(VQVAEConfig(**plain, using_sa=False, using_mid_sa=True), batch=1)
    without = decoder_flops(VQVAEConfig(**plain, using_sa=False, using_mid_sa=False), batch=1)
    c, n = 64, 16  # widest level, 4x4 latent
    assert with_mid - without == 2 * (n * c * 3 * c + n * c * c) + 2 * (2 * n * n * c)


def test_named_configs():
    assert {"d16", "fashion-mnist", "small"} <= set(CONFIGS)
    vae, var = model_configs("d16")
    assert (var.depth, var.embed_dim, vae.image_size) == (16, 1024, 256)
    flops = generation_flops(vae, var, batch=1)
    assert flops["total"] == flops["transformer"] + flops["decoder"] > 0
    with pytest.raises(ValueError, match="unknown config 'd17'"):
        model_configs("d17")


def test_report_fields_and_table(tmp_path):
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=48, patch_nums=(1, 2)))
    pipe = VARPipeline(vae, VAR(tiny_var_config()))
    settings = GenerationSettings(batch_size=2, top_k=5)
    before = {k: v.clone() for k, v in pipe.var.state_dict().items()}
    report = benchmark_pipeline(pipe, "tiny", settings, repeats=1, train_batch_size=1)
    assert all(torch.equal(v, before[k]) for k, v in pipe.var.state_dict().items())  # timed steps left no trace
    gen, train = report["generation"], report["training"]
    assert set(gen["seconds"]) == {"transformer", "decoder", "total"} == set(gen["share_of_ceiling"])
    assert gen["images_per_s"] > 0 and gen["flops"]["total"] > 0 and report["matmul_ceiling_gflops"] > 0
    assert train["tokens_per_s"] == pytest.approx(5 * train["images_per_s"])  # 1 + 4 tokens per image
    assert gen["peak_memory_bytes"] > 0 and train["peak_memory_bytes"] > 0
    assert report["settings"]["dtype"] == "fp32" and report["machine"]["torch"] == torch.__version__
    json.dumps(report)  # serialisable as it is
    table = format_table(report)
    assert "images/s" in table and "% of ceiling" in table and "tokens/s" in table
    assert not pipe.var.training  # the training step leaves the model in eval mode


def test_var_bench_fast_times_the_int8_transformer(monkeypatch):
    """--fast generates with the pipeline's fast transformer (the int8 twin), and the report says so."""
    from var.cpu import int8_available

    if not int8_available():
        pytest.skip("this PyTorch build has no int8 products on the CPU")
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=48, patch_nums=(1, 2)))
    pipe = VARPipeline(vae, VAR(tiny_var_config()))
    used = []
    real = bench_module.generate
    monkeypatch.setattr(bench_module, "generate", lambda model, *a, **k: used.append(model) or real(model, *a, **k))
    report = benchmark_pipeline(pipe, "tiny", GenerationSettings(batch_size=2, top_k=5, fast=True), repeats=1,
                                train_batch_size=0)
    assert used and all(m is pipe.fast_transformer() and m is not pipe.var for m in used)
    assert report["settings"]["fast"] and "fast (int8)" in format_table(report)


def test_bench_command_is_registered():
    args = build_parser().parse_args(["bench", "--config", "fashion-mnist", "--batch-size", "4", "--json", "x.json"])
    assert args.command == "bench" and args.batch_size == 4 and args.config == "fashion-mnist"


def test_random_weights_for_timing_are_seeded_and_leave_the_callers_random_state_alone():
    from var.bench import build_pipeline

    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    a = build_pipeline("small", "cpu", seed=3)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_pipeline("small", "cpu", seed=3)
    assert torch.equal(a.var.head.weight, b.var.head.weight)


def test_flops_and_a_benchmark_of_a_non_square_model():
    """Without attention every decoder layer is linear in the pixels: a 2x4 latent costs twice a 2x2 one."""
    convs_only = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=48, using_sa=False,
                      using_mid_sa=False)
    wide, square = VQVAEConfig(patch_nums=((1, 2), (2, 4)), **convs_only), VQVAEConfig(patch_nums=(1, 2), **convs_only)
    assert decoder_flops(wide, 3) == 2 * decoder_flops(square, 3)
    torch.manual_seed(0)
    var_cfg = dataclasses.replace(tiny_var_config(), patch_nums=wide.patch_nums)
    report = benchmark_pipeline(VARPipeline(VQVAE(wide), VAR(var_cfg)), "wide", GenerationSettings(batch_size=2),
                                repeats=1, train_batch_size=1)
    assert report["model"]["image_size"] == "4x8" and report["training"]["tokens_per_s"] > 0
    assert "(4x8 px" in format_table(report)


@pytest.mark.parametrize("option, value", [("--train-batch-size", "-1"), ("--batch-size", "0"), ("--repeats", "0"),
                                           ("--streams", "0")])
def test_var_bench_names_a_bad_count_before_building_a_model(monkeypatch, caplog, option, value):
    """--train-batch-size -1 crashed with torch's traceback after the whole generation benchmark; the other
    counts were named only after the (d16: ~10 GiB) model had been built."""
    import var.bench

    monkeypatch.setattr(var.bench, "build_pipeline", lambda *a, **k: pytest.fail("built a model before checking"))
    assert cli(["bench", "--config", "fashion-mnist", option, value]) == 2
    assert f"{option} must be" in caplog.text and f"got {value}" in caplog.text
