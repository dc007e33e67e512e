"""Prepared data sets (var.prepare_data): round trip, resume, training from them, token caches split over processes."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from var.cli import main as cli
from var.data import build_dataset, image_folder_dataset, split_holdout
from var.data import open_prepared
from var.prepare_data import prepare_dataset
from var.training import common as training_common
from var.training import runs
from var.training.common import DistInfo, batch_indices
from conftest import TINY_VAE, VAE_ARGS, VAR_ARGS, interrupt_at, make_folder, small_schedule


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "images", corrupt=True)


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "ds"
    assert cli(["prepare-data", str(folder), "--image-size", "16", "--out", str(out), "--workers", "2"]) == 0
    return out


def test_prepared_data_set_round_trips_pixels_labels_and_names_and_lists_the_corrupt_file(folder, prepared, caplog):
    ds, mem = open_prepared(prepared), image_folder_dataset(folder, 16)
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    assert np.array_equal(np.asarray(ds.images), mem.images) and np.array_equal(ds.labels, mem.labels)
    assert ds.class_names == mem.class_names == ["circles", "squares"]
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["skipped"] == [str(folder / "circles" / "broken.png")] == ds.skipped
    assert (manifest["count"], manifest["image_size"], manifest["channels"]) == (24, [16, 16], 3)
    assert sorted(os.listdir(prepared)) == ["images.npy", "labels.npy", "manifest.json"]  # no leftovers
    assert build_dataset(str(prepared)).fingerprint == manifest["digest"]
    caplog.set_level("INFO")
    assert cli(["prepare-data", str(folder), "--image-size", "16", "--out", str(prepared)]) == 0
    assert "already prepared" in caplog.text
    assert cli(["prepare-data", str(folder), "--image-size", "8", "--out", str(prepared)]) == 2  # other options
    assert "image_size [16, 16] (asked: [8, 8])" in caplog.text


class InterruptingPool:
    """ProcessPoolExecutor stand-in, in this process: each task runs when its result is asked for (in the order
    given, with ``as_completed`` replaced by ``iter``); task ``stop_after`` raises KeyboardInterrupt instead (as
    Ctrl-C would). Records the tasks run."""

    def __init__(self, stop_after=None):
        self.stop_after, self.starts, self.given = stop_after, [], 0

    def __call__(self, workers):
        return self

    def submit(self, fn, task):
        index, self.given = self.given, self.given + 1
        return SimpleNamespace(result=lambda: self._run(index, fn, task))

    def _run(self, index, fn, task):
        if index == self.stop_after:
            raise KeyboardInterrupt
        self.starts.append(task[1])
        return fn(task)

    def shutdown(self, **options):
        pass


def test_interrupted_prepare_data_resumes_where_it_stopped(folder, prepared, tmp_path, monkeypatch):
    import var.prepare_data as prep
    monkeypatch.setattr(prep, "CHUNK", 5)  # 25 files: chunks starting at 0, 5, 10, 15, 20
    monkeypatch.setattr(prep, "as_completed", iter)
    first, second = InterruptingPool(stop_after=2), InterruptingPool()
    monkeypatch.setattr(prep, "ProcessPoolExecutor", first)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(folder, 16, tmp_path / "ds")
    assert not (tmp_path / "ds" / "manifest.json").exists()
    monkeypatch.setattr(prep, "ProcessPoolExecutor", second)
    prepare_dataset(folder, 16, tmp_path / "ds")
    assert first.starts == [0, 5] and second.starts == [10, 15, 20]  # nothing decoded twice
    resumed, whole = open_prepared(tmp_path / "ds"), open_prepared(prepared)
    assert np.array_equal(resumed.images, whole.images) and np.array_equal(resumed.labels, whole.labels)
    assert resumed.skipped == whole.skipped and resumed.fingerprint == whole.fingerprint


def test_training_from_a_prepared_data_set_equals_training_from_memory(folder, prepared, tmp_path):
    args = [*VAE_ARGS, "--steps", "3", "--batch-size", "8", "--warmup", "1", "--sample-every", "3", "--flip"]
    assert cli(["train-vae", "--data", str(folder), "--out", str(tmp_path / "mem"), *args]) == 0
    assert cli(["train-vae", "--data", str(prepared), "--out", str(tmp_path / "disk"), *args]) == 0
    mem, disk = load_file(tmp_path / "mem" / "vqvae.safetensors"), load_file(tmp_path / "disk" / "vqvae.safetensors")
    for k in mem:
        assert torch.equal(mem[k], disk[k]), k


def test_resume_from_a_prepared_data_set_is_bit_for_bit(prepared, tmp_path, monkeypatch):
    args = ["train-vae", "--data", str(prepared), *VAE_ARGS, "--steps", "5", "--batch-size", "8", "--warmup", "1",
            "--sample-every", "100", "--save-every", "100"]
    assert cli([*args, "--out", str(tmp_path / "full")]) == 0
    with monkeypatch.context() as m:  # Ctrl-C as step 2 is read (ahead): checkpoint at the step then done, exit 130
        m.setattr(runs, "Prefetcher", lambda get, **kw: training_common.Prefetcher(interrupt_at(2, get), **kw))
        assert cli([*args, "--out", str(tmp_path / "resumed")]) == 130
    assert cli([*args, "--out", str(tmp_path / "resumed")]) == 0
    full, resumed = (load_file(tmp_path / d / "vqvae.safetensors") for d in ("full", "resumed"))
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_each_process_reads_a_disjoint_share_of_the_global_batch(prepared):
    """What torchrun's ranks read: every row of the global batch once, no row by two ranks; the subset made
    by split_holdout shares the memory map instead of copying it."""
    train, _ = split_holdout(open_prepared(prepared))
    assert isinstance(train.images, np.memmap) and train.rows is not None
    read = {}
    for rank in (0, 1):
        def ds_batch(idx, flips, rank=rank):
            read[rank] = set(train.image_rows(np.asarray(idx)).tolist())
            return train.batch(idx, flips)
        runs._batch_getter(ds_batch, len(train), small_schedule(), DistInfo(rank, 2), flip=True)(7)
    whole = set(train.image_rows(batch_indices(7, len(train), 8, 0)).tolist())
    assert read[0].isdisjoint(read[1]) and read[0] | read[1] == whole and len(read[0]) == len(read[1]) == 4


def test_prefetching_delivers_the_same_batch_for_every_step():
    calls = []

    def get(step):
        calls.append(step)
        return step * 10
    with training_common.Prefetcher(get, depth=2, end=7) as fetch:
        assert [fetch(s) for s in (0, 1, 2, 5, 6)] == [0, 10, 20, 50, 60]
    assert {0, 1, 2, 5, 6} <= set(calls) and max(calls) == 6  # nothing read past the last step
    assert fetch.pool._shutdown  # leaving the block stopped the thread


def test_an_interrupted_token_cache_resumes_and_equals_an_uninterrupted_one(prepared, tmp_path):
    torch.manual_seed(0)
    vqvae = runs.VQVAE(TINY_VAE)
    ds = open_prepared(prepared)
    whole = runs.tokenize_dataset(vqvae, ds, tmp_path / "a", DistInfo(), flip=True, batch_size=8)
    assert isinstance(whole, np.memmap) and whole.shape == (2, 24, 1 + 4 + 16 + 64)

    class Failing:  # the data set, failing at its 4th chunk of 6 (the mirrored pass's first)
        def __init__(self):
            self.calls = 0

        def __getattr__(self, name):
            return getattr(ds, name)

        def __len__(self):
            return len(ds)

        def batch(self, idx, flips=None):
            self.calls += 1
            if self.calls == 4:
                raise KeyboardInterrupt
            return ds.batch(idx, flips)
    failing = Failing()
    with pytest.raises(KeyboardInterrupt):
        runs.tokenize_dataset(vqvae, failing, tmp_path / "b", DistInfo(), flip=True, batch_size=8)
    assert list((tmp_path / "b").glob("tokens_*")) and not list((tmp_path / "b").glob("tokens_????????????????????.npy"))
    failing.calls = 10  # no more failures: the 3 chunks left are computed, the 3 done are not
    again = runs.tokenize_dataset(vqvae, failing, tmp_path / "b", DistInfo(), flip=True, batch_size=8)
    assert failing.calls == 13 and np.array_equal(again, whole)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(p.name for p in (tmp_path / "a").iterdir())


def test_a_data_set_prepared_for_crops_feeds_var_train_crop_only(folder, tmp_path, caplog):
    """Stored at 1.125x (18 px for a 16 px model): --crop cuts its windows from it as stored; the tokenizer
    and the token cache, which take the model's size, refuse it naming the reason."""
    ds = tmp_path / "crop-ds"
    assert cli(["prepare-data", str(folder), "--image-size", "16", "--crop", "--out", str(ds)]) == 0
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["image_size"] == [18, 18] and manifest["crop_size"] == 16
    # the images var train --crop decodes in memory from the same folder: 1.125x, the crops' Lanczos filter
    assert np.array_equal(open_prepared(ds).images, build_dataset(str(folder), 16, 3, for_crop=True).images)
    vae = tmp_path / "vae"
    assert cli(["train-vae", "--data", str(folder), "--out", str(vae), *VAE_ARGS, "--steps", "1", "--batch-size", "8",
                "--warmup", "1", "--sample-every", "1"]) == 0
    args = ["--data", str(ds), "--vae", str(vae), *VAR_ARGS, "--steps", "2", "--batch-size", "8", "--warmup", "1",
            "--sample-every", "2", "--cache-dir", str(tmp_path / "cache")]
    caplog.set_level("INFO")
    assert cli(["train", "--out", str(tmp_path / "crop"), *args, "--crop"]) == 0
    assert "random 16px crops of 18px images" in caplog.text
    caplog.clear()
    assert cli(["train", "--out", str(tmp_path / "tokens"), *args]) == 2
    assert "serves var train --crop only" in caplog.text
    assert not (tmp_path / "tokens" / "run.json").exists()  # refused before the run folder is started


def test_two_processes_split_the_token_cache_and_train_as_one(prepared, tmp_path):
    """torchrun, 2 processes, a prepared data set of 2 tokenizing chunks (256 + 44 images): each process
    tokenizes one, the cache equals one process's, and so do the trained weights."""
    big = make_folder(tmp_path / "big", n_per_class=150)
    prepare_dataset(big, 16, tmp_path / "big-ds", workers=1)
    vae = tmp_path / "vae"
    assert cli(["train-vae", "--data", str(prepared), "--out", str(vae), *VAE_ARGS, "--steps", "1",
                "--batch-size", "8", "--warmup", "1", "--sample-every", "1"]) == 0
    common = ["--data", str(tmp_path / "big-ds"), "--vae", str(vae), *VAR_ARGS, "--steps", "2", "--batch-size", "8",
              "--cond-drop", "0", "--warmup", "1", "--sample-every", "1000"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "var", "train",
           "--out", str(tmp_path / "ddp"), "--cache-dir", str(tmp_path / "c2"), *common]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(f"tokenizing 1 of the 2 chunk(s) left, {n} images, in process {r} of 2" in proc.stderr
               for r, n in ((1, 256), (2, 44)))
    assert cli(["train", "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1"), *common]) == 0
    (two_file,), (one_file,) = (tmp_path / "c2").glob("tokens_*.npy"), (tmp_path / "c1").glob("tokens_*.npy")
    two, one = np.load(two_file), np.load(one_file)
    assert two.shape == (300, 85) and np.array_equal(two, one)
    a = load_file(tmp_path / "ddp" / "var.safetensors")
    b = load_file(tmp_path / "one" / "var.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
