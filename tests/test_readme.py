"""The README's code as printed: every ```python block runs in a fresh process in an empty folder (a
```python no-run block, which needs the released checkpoints, is only compiled), and every ``var``
command of its ```bash blocks parses with today's options. So the README cannot drift from the code."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from var.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^ *```([^\n`]*)\n(.*?)^ *```", re.S | re.M)


def blocks(info: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block whose info string is exactly ``info``."""
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1).strip() == info]


def test_the_readme_has_code_to_check():
    """Guards the extraction itself: a changed fence syntax must not silently leave nothing to run."""
    assert len(blocks("python")) >= 2 and len(blocks("python no-run")) >= 1 and len(blocks("bash")) >= 4


@pytest.mark.parametrize("line,code", blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_block_runs_as_pasted(line, code, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    (tmp_path / "block.py").write_text(code)
    run = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"README.md line {line}: the block fails:\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("line,code", blocks("python no-run"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_no_run_block_compiles(line, code):
    compile(code, f"README.md:{line}", "exec")


def var_commands() -> list[tuple[int, str]]:
    """Every ``var ...`` command line of the bash blocks, continuation lines joined, comments dropped."""
    found = []
    for line, code in blocks("bash"):
        for cmd in code.replace("\\\n", " ").splitlines():
            words = shlex.split(cmd, comments=True)
            while words and "=" in words[0]:        # environment assignments such as OMP_NUM_THREADS=1
                words.pop(0)
            if words[:1] == ["var"]:
                found.append((line, words[1:]))
    return found


def test_every_var_command_of_the_readme_parses():
    commands = var_commands()
    assert len(commands) >= 15
    parser = build_parser()
    for line, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README.md block at line {line}: `var {' '.join(argv)}` does not parse")
