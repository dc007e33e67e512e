"""Bad input gets a clear error (one line and exit 2 on the command line), a full disk loses nothing, and an
interrupted training run says so in its exit status. Properties of the argument checks via Hypothesis."""
import errno
import json
import math
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from var import VARPipeline
from var.cli import main as cli
from var.editing import box_mask, check_mask
from var.sampling import check_sampling_options
from var.training import common
from var.training.common import CheckpointWriteFailed, DistInfo, Schedule, fit, load_checkpoint_file
from conftest import TINY_VAE, VAE_ARGS, batch, make_folder, small_pipe, tiny_trainer


NAMES = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]
FEW = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def pipe():
    p = small_pipe()
    return VARPipeline(p.vqvae, p.var, class_names=NAMES)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return pipe.save_pretrained(tmp_path_factory.mktemp("model"))


def sample_cli(saved, *argv) -> int:
    return cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", *argv])


def one_error_line(text: str) -> str:
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# ------------------------------------------------------------------------ sampling options
def test_cli_per_class_must_be_positive(saved, capsys):
    with pytest.raises(SystemExit) as e:
        sample_cli(saved, "--per-class", "-1")
    assert e.value.code == 2
    assert "--per-class: expected an integer >= 1, got '-1'" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [(["--cfg", "nan"], "cfg must be a finite number"),
                                           (["--top-p", "2"], r"top_p must be in [0, 1]"),
                                           (["--top-k", "-5"], "top_k must be an integer >= 0")])
def test_cli_sampling_options_are_checked_before_the_model_loads(tmp_path, caplog, argv, message):
    # The model folder does not exist: the option is reported first, so no model was loaded.
    assert cli(["sample", "--model", str(tmp_path / "none"), *argv]) == 2
    assert message in one_error_line(caplog.text)


@pytest.mark.parametrize("kw, message", [(dict(cfg=float("inf")), "cfg must be a finite number .*got inf"),
                                         (dict(cfg=float("nan")), "cfg must be a finite number"),
                                         (dict(top_k=-5), "top_k must be an integer >= 0"),
                                         (dict(top_k=2.5), "top_k must be an integer >= 0"),
                                         (dict(top_p=2), r"top_p must be in \[0, 1\]"),
                                         (dict(temperature=0), "temperature must be a finite number > 0")])
def test_pipeline_rejects_bad_sampling_options(pipe, kw, message):
    with pytest.raises(ValueError, match=message):
        pipe(class_labels=[0], **kw)


@FEW
@given(cfg=st.floats(allow_nan=True, allow_infinity=True), top_k=st.integers(-10**6, 10**6),
       top_p=st.floats(allow_nan=True), temperature=st.floats(allow_nan=True))
def test_sampling_options_are_accepted_exactly_in_their_ranges(cfg, top_k, top_p, temperature):
    checks = {"cfg": math.isfinite(cfg), "top_k": top_k >= 0, "top_p": 0 <= top_p <= 1,
              "temperature": 0 < temperature < math.inf}
    for name, ok in checks.items():
        value = dict(cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature)[name]
        if ok:
            check_sampling_options(**{name: value})
        else:
            with pytest.raises(ValueError, match=name):
                check_sampling_options(**{name: value})


# ------------------------------------------------------------------------------ class labels
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


def test_cli_classes_take_names(saved, tmp_path, caplog):
    with caplog.at_level("INFO"):
        assert sample_cli(saved, "--classes", "beta,Delta", "--out", str(tmp_path / "g.png")) == 0
    assert "2 classes x 1" in caplog.text
    caplog.clear()
    assert sample_cli(saved, "--classes", "Beta,Zeta", "--out", str(tmp_path / "g.png")) == 2
    assert "unknown class 'Zeta'" in one_error_line(caplog.text)


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


# ------------------------------------------------------------------------------------ images
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


def test_nan_weights_are_reported_at_the_first_scale():
    broken = small_pipe()
    with torch.no_grad():
        broken.var.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite logits \(NaN or inf\) at scale 0 \(1x1 tokens\)"):
        broken(class_labels=[0], seed=0)


# ------------------------------------------------------------------------------- model files
def copy_model(saved, tmp_path):
    for f in saved.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


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
    assert cli(["train", "--vae", str(folder), "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "vqvae.json is not valid JSON: " in one_error_line(caplog.text)


def test_from_official_on_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.pth").write_bytes(b"these are notes, not tensors\n" * 20)
    with pytest.raises(ValueError, match="notes.pth is not a PyTorch checkpoint / state dict"):
        VARPipeline.from_official(tmp_path / "notes.pth", tmp_path / "notes.pth")
    torch.save({"x": RunsCode()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="code.pth is refused: it holds Python objects other than tensors"):
        VARPipeline.from_official(tmp_path / "code.pth", tmp_path / "code.pth")


class RunsCode:
    """Unpickling this would call a function: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


# ---------------------------------------------------------------------------- masks and boxes
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


# ------------------------------------------------------------------------------------ training


def full_disk_after(saves: int, monkeypatch) -> None:
    """torch.save, as training calls it, writes part of the file and fails with ENOSPC after ``saves`` saves."""
    real, calls = torch.save, []

    def save(obj, path):
        calls.append(path)
        if len(calls) <= saves:
            return real(obj, path)
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(common.torch, "save", save)


def test_full_disk_removes_the_partial_file_and_names_the_intact_step(tmp_path, monkeypatch):
    full_disk_after(1, monkeypatch)
    sched = Schedule(steps=4, batch_size=2, warmup=1, save_every=2, sample_every=100, log_every=100)
    with pytest.raises(CheckpointWriteFailed, match=r"cannot write .*checkpoint.pt: No space left on device, .* free on "
                                                    r"its disk \(the checkpoint of step 4\); the checkpoint of step 2 is "
                                                    r"intact"):
        fit(tiny_trainer(), sched, tmp_path, DistInfo(), batch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
    assert load_checkpoint_file(tmp_path / "checkpoint.pt")["step"] == 2


def test_cli_training_on_a_full_disk_exits_non_zero_with_one_line(tmp_path, monkeypatch, caplog):
    full_disk_after(0, monkeypatch)
    data = make_folder(tmp_path / "data", n_per_class=4)
    rc = cli(["train-vae", "--data", str(data), "--out", str(tmp_path / "run"), *VAE_ARGS, "--steps", "2",
              "--batch-size", "4", "--warmup", "1", "--sample-every", "100"])
    assert rc == 1
    assert "No space left on device" in caplog.text and "no checkpoint exists yet" in caplog.text
    assert "Traceback" not in caplog.text and not list((tmp_path / "run").glob("*.tmp"))


def test_sigterm_saves_and_exits_143(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", n_per_class=4)
    real, sent = common.append_metrics, []

    def metrics_then_sigterm(out, record):  # the first logged step: as if a scheduler stopped the job
        real(out, record)
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(common, "append_metrics", metrics_then_sigterm)
    rc = cli(["train-vae", "--data", str(data), "--out", str(tmp_path / "run"), *VAE_ARGS, "--steps", "20",
              "--batch-size", "4", "--warmup", "1", "--log-every", "1", "--sample-every", "100"])
    assert rc == 128 + signal.SIGTERM
    assert load_checkpoint_file(tmp_path / "run" / "checkpoint.pt")["step"] == 1


def test_checkpoints_load_without_running_code_and_old_ones_still_load(tmp_path):
    trainer = tiny_trainer()
    trainer.save_checkpoint(tmp_path / "new.pt")
    assert torch.load(tmp_path / "new.pt", weights_only=True)["step"] == 0
    old = trainer.state()  # as the previous code wrote it: numpy's state tuple, with an array inside
    np.random.seed(7)
    old["rng_per_rank"] = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}]
    expected = np.random.rand(3)
    torch.save(old, tmp_path / "old.pt")
    np.random.seed(1)
    common.set_rng_state(load_checkpoint_file(tmp_path / "old.pt")["rng_per_rank"][0])
    assert np.array_equal(np.random.rand(3), expected)
    torch.save({"step": 1, "x": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt holds Python objects other than tensors"):
        load_checkpoint_file(tmp_path / "evil.pt")


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path, caplog):
    assert cli(["-v", "sample", "--model", str(tmp_path / "none"), "--cfg", "inf"]) == 2
    assert "Traceback" in caplog.text and "cfg must be a finite number" in caplog.text


# ------------------------------------------------------------------------ schedules and configs
@pytest.mark.parametrize("field, value, expected", [
    ("steps", 0, "integer >= 1"), ("batch_size", -4, "integer >= 1"), ("save_every", 0, "integer >= 1"),
    ("sample_every", 0, "integer >= 1"), ("log_every", 0, "integer >= 1"), ("warmup", -1, "integer >= 0"),
    ("lr", 0.0, "learning rate > 0"), ("min_lr_ratio", 1.5, r"ratio in \[0, 1\]"), ("grad_clip", -1.0, ">= 0")])
def test_a_schedule_names_a_bad_value_when_made(field, value, expected):
    with pytest.raises(ValueError, match=rf"{field}={value!r}.*expected .*{expected}"):
        Schedule(**{field: value})


@pytest.mark.parametrize("flag", ["--steps", "--batch-size", "--save-every", "--sample-every", "--log-every"])
def test_cli_training_counts_must_be_positive(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        cli(["train-vae", "--data", str(tmp_path), "--out", str(tmp_path / "run"), flag, "0"])
    assert e.value.code == 2 and f"{flag}: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_a_config_and_keyword_options_together_are_refused():
    from var import VAR, VQVAE

    with pytest.raises(TypeError, match=r"VAR\(\) takes a VARConfig or keyword options, not both .*\['depth'\]"):
        VAR(small_pipe().var.config, depth=4)
    with pytest.raises(TypeError, match=r"VQVAE\(\) takes a VQVAEConfig or keyword options, not both"):
        VQVAE(TINY_VAE, vocab_size=16)


def _fit_with_a_full_disk_on_rank_0(rank: int, init_file: str, out: str, results: dict) -> None:
    """One of two processes training with a checkpoint every 2 steps; the main process's disk is full."""
    from datetime import timedelta
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a hang fails the test instead of blocking it
    try:
        if rank == 0:
            real_save = torch.save

            def no_space(obj, f, *args, **kwargs):  # checkpoints only (collectives pickle with torch.save too)
                if str(f).endswith(".tmp"):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_save(obj, f, *args, **kwargs)
            common.torch.save = no_space
        sched = Schedule(steps=6, batch_size=2, warmup=1, save_every=2, sample_every=100, log_every=100)
        try:
            fit(tiny_trainer(), sched, Path(out), DistInfo(rank, 2), batch)
            results[rank] = "finished"
        except Exception as e:
            results[rank] = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()


def test_a_failed_checkpoint_on_the_main_process_stops_every_process(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_fit_with_a_full_disk_on_rank_0, args=(str(tmp_path / "init"), str(tmp_path / "run"), results),
                 nprocs=2)
        r0, r1 = results[0], results[1]
    assert r0.startswith("CheckpointWriteFailed") and "No space left on device" in r0, r0
    assert r1 == "TrainingStopped: process 1: stopping, the main process failed (its log says why)", r1
