"""The README's and docs/'s code as printed, and their links, so that the documentation cannot drift from the
code. Every ```python block runs in a fresh process in an empty folder; the ```python official block (the
released checkpoints) runs in a folder holding small files of the released layout under the released names;
a ```python no-run block (the web demo's client: it needs a running server) is only compiled. Every ``var``
command of the ```bash blocks parses with today's options, every relative link and image resolves, and every
``var.…`` name the text gives exists."""
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from var import VAR, VARConfig, VQVAE, VQVAEConfig
from var.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^ *```([^\n`]*)\n(.*?)^ *```", re.S | re.M)
RELEASED_KEYS = ROOT / "tests" / "data" / "keys.json"


def where(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT)}:{line}"


def blocks(info: str) -> list[tuple[str, str]]:
    """(page:line, code) of every fenced block whose info string is exactly ``info``, README first."""
    found = []
    for page in PAGES:
        text = page.read_text()
        found += [(where(page, text[:m.start()].count("\n") + 1), m.group(2)) for m in FENCE.finditer(text)
                  if m.group(1).strip() == info]
    return found


def params(info: str) -> list:
    """``blocks(info)`` as test parameters named by page and line; a block printed in several places (the
    README's and its page's) runs once, named by all of them."""
    places: dict[str, list[str]] = {}
    for where_, code in blocks(info):
        places.setdefault(code, []).append(where_)
    return [pytest.param(" = ".join(wheres), code, id=" = ".join(wheres)) for code, wheres in places.items()]


def test_the_pages_have_code_to_check():
    """Guards the extraction itself: a changed fence syntax must not silently leave nothing to run."""
    readme = lambda found: [b for b in found if b[0].startswith("README.md:")]
    assert len(readme(blocks("python"))) >= 3 and len(readme(blocks("python official"))) == 1
    assert len(blocks("python")) >= 5 and len(blocks("python no-run")) >= 1 and len(blocks("bash")) >= 10


def run_block(code: str, folder: Path, where_: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    (folder / "block.py").write_text(code)
    run = subprocess.run([sys.executable, "block.py"], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"{where_}: the block fails:\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("where_,code", params("python"))
def test_python_block_runs_as_pasted(where_, code, tmp_path):
    run_block(code, tmp_path, where_)


def _released_layout(keys: set[str], levels: str) -> set[str]:
    """Keys with the numbered parts that depend on the model's size (``levels``) taken out."""
    return {k for k in keys if not re.match(levels, k)}


def write_released_stand_ins(folder: Path) -> None:
    """``vae_ch160v4096z32.pth`` and ``var_d16.pth`` as the released files are laid out (a plain state dict each,
    saved with ``torch.save``), holding small random models: ImageNet's 1,000 classes, scales 1-4, 8 px images.
    Their keys are checked against the released files' (``tests/data/keys.json``) outside the size-dependent
    numbered levels and blocks, so the files are of the released layout, not only of ours."""
    torch.manual_seed(0)
    schedule = (1, 2, 3, 4)
    vqvae = VQVAE(VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=64,
                              patch_nums=schedule))
    var = VAR(VARConfig(vocab_size=64, latent_channels=8, depth=2, embed_dim=64, num_heads=2, patch_nums=schedule))
    released = json.loads(RELEASED_KEYS.read_text())["var_d16"]
    vae_levels, var_blocks = r"(encoder\.down|decoder\.up)\.\d+\.", r"blocks\.([2-9]|\d\d)\."
    assert _released_layout(set(vqvae.state_dict()), vae_levels) == _released_layout(set(released["vae"]), vae_levels)
    assert set(var.state_dict()) == _released_layout(set(released["var"]), var_blocks)
    torch.save(vqvae.state_dict(), folder / "vae_ch160v4096z32.pth")
    torch.save(var.state_dict(), folder / "var_d16.pth")


@pytest.mark.parametrize("where_,code", params("python official"))
def test_released_checkpoints_block_runs_on_files_of_the_released_layout(where_, code, tmp_path):
    """The block as printed, in a folder holding the two files under the names it gives. The check appended
    to it asks for the three ImageNet classes it requests, generated at the stand-ins' 8 px."""
    write_released_stand_ins(tmp_path)
    check = "\nassert out.labels.tolist() == [207, 360, 387] and tuple(out.images.shape) == (3, 3, 8, 8), out.images.shape\n"
    run_block(code + check, tmp_path, where_)


@pytest.mark.parametrize("where_,code", params("python no-run"))
def test_no_run_block_compiles(where_, code):
    compile(code, where_, "exec")


def var_commands() -> list[tuple[str, list[str]]]:
    """Every ``var ...`` command line of the bash blocks, continuation lines joined, comments dropped."""
    found = []
    for where_, code in blocks("bash"):
        for cmd in code.replace("\\\n", " ").splitlines():
            words = shlex.split(cmd, comments=True)
            while words and "=" in words[0]:        # environment assignments such as OMP_NUM_THREADS=1
                words.pop(0)
            if words[:1] == ["var"]:
                found.append((where_, words[1:]))
    return found


def test_every_var_command_of_the_pages_parses():
    commands = var_commands()
    assert len(commands) >= 30
    parser = build_parser()
    for where_, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"block at {where_}: `var {' '.join(argv)}` does not parse")


def prose(text: str) -> str:
    """The text without fenced blocks and inline code spans (where brackets are code, not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    made, count = set(), {}
    for heading in re.findall(r"^#+ +(.+?) *#*$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        made.add(f"{slug}-{count[slug]}" if slug in count else slug)
        count[slug] = count.get(slug, 0) + 1
    return made


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    """Links and images to files of the repository, and their #anchors in Markdown pages."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?: \"[^\"]*\")?\)", prose(page.read_text())):
        if re.match(r"[a-z]+:", target):                 # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_anchors_are_githubs():
    page = ROOT / "docs" / "editing.md"
    assert {"the-rule-vareditingkeep_masks_from_mask", "from-the-command-line"} <= anchors(page)


# ``var.…`` in the text that is not a name of the package: a file, and the transformer instance of the
# educational README's quick start (``var = VAR(...)``).
NOT_PACKAGE_NAMES = {"var.safetensors", "var.num_classes"}


def resolves(name: str) -> bool:
    """Whether a dotted name is a module or an attribute reachable from one."""
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            return False
    return True


def test_every_name_of_the_package_the_pages_give_exists():
    """Modules move: ``var.data.open_prepared`` in a page must still be there."""
    missing = []
    for page in PAGES:
        for name in re.findall(r"(?<![\w.])var(?:\.[A-Za-z_]\w*)+", page.read_text()):
            if name not in NOT_PACKAGE_NAMES and not resolves(name):
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, f"names the documentation gives that the package does not have: {missing}"
