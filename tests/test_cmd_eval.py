"""`var eval`: input files named before the evaluation's long work."""
import numpy as np
import pytest

from var.cli import main as cli


@pytest.mark.parametrize("flag", ["--npz", "--npz-ref"])
def test_eval_names_a_missing_npz_before_evaluating_the_model(tmp_path, caplog, monkeypatch, flag):
    """A typo in --npz / --npz-ref was found only after the whole model evaluation (an hour at 50 samples
    per class), whose results, --json included, were then lost."""
    import var.cmd.evaluate
    monkeypatch.setattr(var.cmd.evaluate, "load_pipeline", lambda args: pytest.fail("loaded a model first"))
    real = tmp_path / "real.npz"
    np.savez(real, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    files = {"--npz": str(real), "--npz-ref": str(real), flag: str(tmp_path / "typo.npz")}
    argv = ["eval", "--per-class", "1", "--json", str(tmp_path / "r.json")]
    assert cli([*argv, *(x for kv in files.items() for x in kv)]) == 2
    assert f"{flag} {tmp_path / 'typo.npz'}: no such file" in caplog.text
    caplog.clear()
    assert cli([*argv, "--npz-ref", str(real)]) == 2     # a reference with nothing to compare: not ignored
    assert "--npz-ref" in caplog.text and "give --npz too" in caplog.text


def test_eval_npz_may_be_the_file_this_run_saves(tmp_path, monkeypatch):
    """var eval --save-npz s.npz --npz s.npz: the samples of this run, through Inception."""
    import var.cmd.evaluate
    npz = tmp_path / "s.npz"
    made = {}
    monkeypatch.setattr(var.cmd.evaluate, "_evaluate_model",
                        lambda args: made.update(model=True) or np.savez(npz, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
                        or {})
    monkeypatch.setattr(var.cmd.evaluate, "_inception", lambda args: made.update(inception=args.npz) or {})
    assert cli(["eval", "--per-class", "1", "--save-npz", str(npz), "--npz", str(npz)]) == 0
    assert made == {"model": True, "inception": str(npz)}
