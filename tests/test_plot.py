"""`var plot` and reading metrics.jsonl (var.training.plot)."""
import pytest

from var.cli import main as cli
from var.training.plot import read_metrics
from conftest import error_lines


def test_plot_skips_a_last_line_cut_short_and_names_the_file_and_line_of_a_bad_one(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    good = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    path.write_text(good + '{"step": 3, "lo')  # the run was killed while writing step 3
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert f"{path}: its last line is cut short" in caplog.text
    assert cli(["plot", str(tmp_path), "--out", str(tmp_path / "loss.png")]) == 0
    for bad, reason in (("not json\n", "not JSON"), ("[1, 2]\n", "expected a JSON object with an integer step"),
                        ('{"loss": 1.0}\n', "expected a JSON object with an integer step")):
        path.write_text('{"step": 1, "loss": 2.0}\n' + bad + '{"step": 3, "loss": 1.0}\n')
        with pytest.raises(ValueError, match=rf"^{path}, line 2: {reason}"):
            read_metrics(tmp_path)
    caplog.clear()
    assert cli(["plot", str(tmp_path)]) == 2
    assert error_lines(caplog)[0].startswith(f"error: {path}, line 2: expected a JSON object")
