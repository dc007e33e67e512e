"""Model files (var.checkpoints): pipelines and tokenizers saved and loaded, half precision, damage, killed saves."""
import json

import pytest
import safetensors.torch
import torch

from var import VARPipeline, precision
from var.cli import main as cli
from conftest import image_folder, one_error_line, small_pipe


NAMES = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]


@pytest.fixture(scope="module")
def pipe():
    p = small_pipe()
    return VARPipeline(p.vqvae, p.var, class_names=NAMES)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return pipe.save_pretrained(tmp_path_factory.mktemp("model"))


def copy_model(saved, tmp_path):
    for f in saved.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


class Killed(BaseException):
    """Stands for the process being killed in the middle of writing a file."""


def kill_mid_write(monkeypatch) -> None:
    """safetensors' save_file writes half of its file, then the process 'dies'."""
    real = safetensors.torch.save_file

    def half_then_die(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        with open(filename, "rb") as f:
            data = f.read()
        with open(filename, "wb") as f:
            f.write(data[:len(data) // 2])
        raise Killed

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_die)


def test_saving_in_fp16_refuses_a_weight_float16_cannot_hold(tmp_path):
    pipe = small_pipe()
    with torch.no_grad():
        pipe.var.head.weight[0, 0] = 1e5  # float16 ends at 65504: it would be stored as inf
    with pytest.raises(ValueError, match=r"var.safetensors: head.weight holds 100000, beyond torch.float16"):
        pipe.save_pretrained(tmp_path / "m", weights_dtype="fp16")
    again = VARPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "m", weights_dtype="bf16"))
    assert again.var.head.weight[0, 0].item() == 1e5 - 1e5 % 512  # bf16 holds it (rounded)


def test_save_and_load_pretrained_roundtrip(tmp_path):
    pipe = small_pipe()
    pipe.class_names = [f"c{i}" for i in range(5)]
    pipe.save_pretrained(tmp_path / "m")
    again = VARPipeline.from_pretrained(tmp_path / "m")
    assert again.class_names == pipe.class_names and again.var.config == pipe.var.config
    a = pipe(class_labels=[1, 2], seed=1)
    b = again(class_labels=[1, 2], seed=1)
    assert torch.equal(a.images, b.images)
    with pytest.raises(FileNotFoundError, match="bundled"):
        VARPipeline.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("dtype", ["fp16", torch.bfloat16])
def test_half_precision_weights_take_half_the_space_and_load_as_float32(tmp_path, dtype):
    from safetensors import safe_open

    pipe = small_pipe()
    pipe.save_pretrained(tmp_path / "full")
    pipe.save_pretrained(tmp_path / "half", weights_dtype=dtype)
    for name in ("var.safetensors", "vqvae.safetensors"):
        full, half = (tmp_path / d / name for d in ("full", "half"))
        assert half.stat().st_size < 0.55 * full.stat().st_size
        with safe_open(str(half), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} <= {str(precision.resolve_dtype(dtype)), "torch.int64"}
    again = VARPipeline.from_pretrained(tmp_path / "half")
    for ours, theirs in ((again.var, pipe.var), (again.vqvae, pipe.vqvae)):
        for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert a.dtype == b.dtype, k                             # float32 again, ...
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-4)   # ... up to the half-precision rounding
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        pipe.save_pretrained(tmp_path / "bad", weights_dtype="int8")


def test_truncated_weights_name_the_file(saved, tmp_path):
    folder = copy_model(saved, tmp_path)
    data = (folder / "var.safetensors").read_bytes()
    (folder / "var.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"var.safetensors is truncated or corrupt"):
        VARPipeline.from_pretrained(folder)


def test_invalid_config_json_names_the_file_and_line(saved, tmp_path, caplog):
    folder = copy_model(saved, tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"var": {', '"var": {,', 1))
    line = next(i for i, l in enumerate(text.splitlines(), 1) if '"var": {' in l)
    with pytest.raises(ValueError, match=rf"config.json is not valid JSON: .* at line {line}, column"):
        VARPipeline.from_pretrained(folder)
    assert cli(["sample", "--model", str(folder)]) == 2 and "not valid JSON" in one_error_line(caplog.text)


def test_config_disagreeing_with_the_weights_names_key_and_shapes(saved, tmp_path):
    folder = copy_model(saved, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["var"]["embed_dim"] = 96
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"var.safetensors does not match .*config.json: wrong shapes "
                                         r"\['pos_start: file \(1, 1, 64\) vs expected \(1, 1, 96\)"):
        VARPipeline.from_pretrained(folder)


def test_a_tokenizer_folder_that_does_not_match_its_description_is_named(saved, tmp_path, caplog):
    """`--vae` / `--finetune-decoder` / use_decoder read a tokenizer the way pipelines are read."""
    from var.training.runs import export_vqvae, load_vqvae

    folder = tmp_path / "vae"
    folder.mkdir()
    export_vqvae(VARPipeline.from_pretrained(saved).vqvae, folder, NAMES, "data")
    assert load_vqvae(folder)[0].config.vocab_size == 48
    meta = json.loads((folder / "vqvae.json").read_text())
    (folder / "vqvae.json").write_text(json.dumps({**meta, "vqvae": {**meta["vqvae"], "vocab_size": 32}}))
    with pytest.raises(ValueError, match=r"vqvae.safetensors does not match .*vqvae.json: wrong shapes "
                                         r"\['quantize.ema_vocab_hit_SV: file \(4, 48\) vs expected \(4, 32\)"):
        load_vqvae(folder)
    (folder / "vqvae.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(ValueError, match=r"vqvae.json is not a var-vqvae config"):
        load_vqvae(folder)
    (folder / "vqvae.json").write_text("{")
    data = image_folder(tmp_path / "data")
    assert cli(["train", "--vae", str(folder), "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    assert "vqvae.json is not valid JSON: " in one_error_line(caplog.text)


def test_a_pipeline_save_killed_part_way_leaves_the_previous_weights_loadable(tmp_path, monkeypatch):
    """Training snapshots overwrite the run's pipeline; a kill during the write must not leave truncated
    weights (the exported model lost, and a VAR run unable to resume: it reads its saved tokenizer)."""
    pipe = small_pipe()
    folder = pipe.save_pretrained(tmp_path / "model")
    before = VARPipeline.from_pretrained(folder).var.state_dict()
    kill_mid_write(monkeypatch)
    with pytest.raises(Killed):
        pipe.save_pretrained(folder)
    after = VARPipeline.from_pretrained(folder).var.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_tokenizer_export_killed_part_way_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    from var.training.runs import export_vqvae, load_vqvae

    vqvae = small_pipe().vqvae
    export_vqvae(vqvae, tmp_path, None, "data")
    kill_mid_write(monkeypatch)
    with pytest.raises(Killed):
        export_vqvae(vqvae, tmp_path, None, "data")
    assert load_vqvae(tmp_path)[0].token_side_difference(vqvae) is None
