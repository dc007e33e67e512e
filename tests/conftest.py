import argparse
import errno
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

from var import VAR, VARConfig, VARPipeline, VQVAE, VQVAEConfig
from var.cli import build_parser, main as cli
from var.data import ImageArrayDataset
from var.training import common
from var.training.common import Schedule


# The test models are tiny: one thread is as fast, and a second one only spins (badly so on a busy CPU).
torch.set_num_threads(1)

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official"
DATA = Path(__file__).resolve().parent / "data"
# The reference fixture the repository carries (made by tests/make_fixture.py), and the larger shared one.
CARRIED_FIXTURE = DATA / "ref_fixture.pt"
SHARED_FIXTURE = "tiny_fixture.pt"


def official_dir() -> Path:
    return Path(os.environ.get("VAR_OFFICIAL_DIR", OFFICIAL))


def official_file(name: str) -> Path:
    """A file of ../shared/official ($VAR_OFFICIAL_DIR overrides), else the copy in tests/data: skipped when
    neither exists (the repository carries every file its tests read, so that happens only by mistake)."""
    for folder in (official_dir(), DATA):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"{name} not found in {official_dir()} or {DATA}")


def reference_fixtures() -> list[Path]:
    """Every reference fixture present: the carried one always, the shared one where it exists. Tests run
    once per fixture, so the carried one is checked on every machine and a fresh clone skips nothing."""
    shared = official_dir() / SHARED_FIXTURE
    return [CARRIED_FIXTURE] + ([shared] if shared.exists() else [])


@pytest.fixture(scope="session", params=reference_fixtures(), ids=lambda p: p.stem)
def fixture(request):
    return torch.load(request.param, weights_only=True)


@pytest.fixture(scope="session")
def tiny_pipe(fixture):
    return VARPipeline.from_official(fixture["vae_state_dict"], fixture["var_state_dict"])


# ------------------------------------------------------------------ helpers shared by the test files


def mnist_sized_pipe() -> VARPipeline:
    torch.manual_seed(0)
    patch_nums = (1, 2, 3, 7)   # 28 / 4 = 7
    vae = VQVAE(VQVAEConfig(in_channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, vocab_size=32,
                            patch_nums=patch_nums, using_sa=False))
    var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=10, depth=1, embed_dim=64, num_heads=2,
                        patch_nums=patch_nums))
    return VARPipeline(vae, var, class_names=[f"class {i}" for i in range(10)])


def random_dataset(n_per_class: int, seed: int) -> ImageArrayDataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    return ImageArrayDataset(rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def tiny_trainer():
    from var.training.runs import VQVAE_BETAS, make_optimizer
    from var.training.trainers import VQVAETrainer

    torch.manual_seed(0)
    m = VQVAE(TINY_VAE)
    return VQVAETrainer(m, make_optimizer(m, Schedule(steps=4, batch_size=2), VQVAE_BETAS))


def batch(step: int) -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(step))


TINY_VAE = VQVAEConfig(in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=32,
                       patch_nums=(1, 2, 4, 8), using_sa=False, using_mid_sa=False)


VAE_ARGS = ["--preset", "custom", "--image-size", "16", "--channels", "3", "--ch", "32", "--ch-mult", "1,2",
            "--z-channels", "8", "--vocab-size", "32", "--patch-nums", "1,2,4,8", "--no-attn"]


VAR_ARGS = ["--preset", "small", "--depth", "1", "--embed-dim", "32", "--num-heads", "2"]


def shapes_folder(root: Path, per_class: int) -> Path:
    """The two-class folder of examples/make_shapes.py (coloured discs and squares, 32x32), as the docs make it."""
    import runpy
    make_shapes = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "make_shapes.py"))["make_shapes"]
    return make_shapes(root, per_class)


def make_folder(root: Path, n_per_class: int = 12, corrupt: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["circles", "squares"]):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n_per_class):
            arr = (rng.random((20, 24, 3)) * 80 + 100 * c).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    if corrupt:
        (root / "circles" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def vae_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    assert cli(["train-vae", "--data", str(folder), "--out", str(out), *VAE_ARGS, "--steps", "4",
                "--batch-size", "8", "--warmup", "2", "--log-every", "2", "--sample-every", "4"]) == 0
    return out


def small_schedule(steps=6, **kw):
    return Schedule(steps=steps, batch_size=8, lr=1e-3, warmup=2, save_every=100, sample_every=10_000, log_every=1, **kw)


def interrupt_at(step_to_stop: int, get_batch):
    def get(step):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)  # handled as a stop request: finish the step, save, return
        return get_batch(step)
    return get


def other_tokenizer(vae_run: Path, data: Path, out: Path) -> Path:
    """``vae_run``'s tokenizer with its first encoder conv negated (other tokens), exported into ``out``."""
    from var.training.runs import export_vqvae, load_vqvae

    other = load_vqvae(vae_run)[0]
    with torch.no_grad():
        other.encoder.conv_in.weight.mul_(-1)
    out.mkdir()
    export_vqvae(other, out, None, str(data))
    return out


def linear_reference(layer, x: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    """What a transformer ``Linear`` call ``layer(x, bias=bias, gelu=gelu)`` computes, by F.linear."""
    y = torch.nn.functional.linear(x, layer.weight, layer.bias if bias is None else bias)
    return torch.nn.functional.gelu(y, approximate="tanh") if gelu else y


def small_pipe(shared_aln=False, attn_l2_norm=True, share_quant_resi=4, patch_nums=(1, 2, 3, 4), channels=3, seed=0):
    torch.manual_seed(seed)
    vae = VQVAE(VQVAEConfig(in_channels=channels, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                            vocab_size=48, patch_nums=patch_nums, share_quant_resi=share_quant_resi))
    var = VAR(VARConfig(vocab_size=48, latent_channels=8, num_classes=5, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=patch_nums, shared_aln=shared_aln, attn_l2_norm=attn_l2_norm))
    # Random (not near-zero) AdaLN gates so every block really contributes.
    for name, p in var.named_parameters():
        if "ada_lin" in name or "ada_gss" in name:
            torch.nn.init.normal_(p, std=0.2)
    return VARPipeline(vae, var)


FEW = settings(max_examples=40, deadline=None)


def one_error_line(text: str) -> str:
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


class RunsCode:
    """Unpickling this would call a function: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


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


def savez_then_full_disk(f, **arrays):
    """np.savez on a disk that fills up part way through the file."""
    f.write(b"PK\x03\x04 partial")
    raise OSError(28, "No space left on device")


def logged_error(caplog) -> str:
    """The one error the command logged, which is one line, with no traceback."""
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and not errors[0].exc_info, caplog.text
    return one_error_line(errors[0].getMessage())


def no_work(*args, **kwargs):
    pytest.fail("started the work before checking the options")


def image_folder(root: Path, classes=("a", "b")) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 40 * i).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def unreadable(monkeypatch):
    """Makes a folder unreadable: chmod 000, which binds every user but root; as root (who reads it anyway)
    its listing fails with the error chmod 000 gives other users."""
    blocked, changed, real_scandir = set(), [], os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(path) in blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0)
            changed.append(folder)
        else:
            blocked.add(os.path.abspath(folder))

    monkeypatch.setattr(os, "scandir", scandir)
    yield make
    for folder in changed:
        folder.chmod(0o755)


@pytest.fixture
def small_disk(tmp_path):
    """``make(size)``: a folder on a new tmpfs of ``size`` (e.g. "64k"), or None where this process cannot
    mount one (not root, no mount command): the test then injects the fault instead."""
    mounted = []

    def make(size: str) -> Path | None:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if shutil.which("mount") is None:
            return None
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            return None
        mounted.append(folder)
        return folder

    yield make
    gc.collect()  # a failed run's frames (memory maps of files on the disk among them) may sit in reference cycles
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)  # detached now, freed when unused


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


HOLD = "import sys, time; from var.files import FolderLock; FolderLock(sys.argv[1]).acquire(); print('held', " \
       "flush=True); time.sleep(120)"


def hold_lock(path) -> subprocess.Popen:
    """Another process holding the lock ``path`` (until killed)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder
