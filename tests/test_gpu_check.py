"""benchmarks/gpu_check.sh: its CPU dry run runs every step (the CUDA tests on the CPU, the benchmark at tiny
sizes) and writes the report a GPU run would."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    """About 30 s on a 2-core CPU: the CUDA tests on the CPU, then every benchmark row at tiny sizes."""
    done = _run("--dry-run", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["cuda_tests.log", "cuda_tests.xml", "gpu_bench.json",
                                                      "gpu_bench.md"]
    report = json.loads((out / "gpu_bench.json").read_text())
    assert report["dry_run"] and report["plan"]["device"] == "cpu"
    tests = report["cuda_tests"]
    assert tests["tests"] >= 4 and tests["failures"] == tests["errors"] == tests["skipped"] == 0
    rows = {(r["batch_size"], r["dtype"], r["cfg_scales"]) for r in report["generation"]}
    assert rows == {(b, d, n) for b in (2, 4) for d in ("fp32", "bf16") for n in (None, 2)}
    for row in report["generation"] + report["training"]:
        assert set(row["seconds"]) == {"eager", "compiled"} and all(s > 0 for s in row["seconds"].values())
    assert [r["dtype"] for r in report["training"]] == ["fp32", "bf16"]
    for row in report["training"]:  # the same weights and batch: compiling changes no loss
        assert row["first_step_loss"]["compiled"] == pytest.approx(row["first_step_loss"]["eager"], rel=1e-5)
    table = (out / "gpu_bench.md").read_text()
    assert "dry run on the CPU" in table and "CUDA tests (pytest -m cuda): " in table
    assert table.count("| fp32 |") == 5 and table.count("| bf16 |") == 5  # 4 generation rows + 1 training row each
    assert "Reference: not timed: no --ref checkout" in table


def test_the_script_names_what_is_missing(tmp_path):
    done = _run()
    assert done.returncode == 2 and "usage:" in done.stderr
    done = _run("--dry-run", str(tmp_path), "--bogus")
    assert done.returncode == 2 and "unknown option --bogus" in done.stderr
    if not torch.cuda.is_available():
        done = _run(str(tmp_path / "out"))
        assert done.returncode == 2 and "no CUDA device: run this on a GPU machine, or with --dry-run" in done.stderr
        assert not (tmp_path / "out" / "gpu_bench.json").exists()
