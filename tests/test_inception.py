"""Sample files for Inception metrics (var.inception): npz files errors must name."""
import numpy as np
import pytest

from var.cli import main as cli
from var.inception import load_npz_images
from conftest import error_lines


def test_an_npz_that_is_not_one_is_named(tmp_path, caplog):
    text, array, zipped = tmp_path / "text.npz", tmp_path / "array.npy", tmp_path / "objects.npz"
    text.write_text("hello")
    np.save(array, np.zeros(3))
    np.savez(zipped, arr_0=np.array([{"a": 1}], dtype=object))
    for path in (text, array):
        with pytest.raises(ValueError, match=rf"^{path} is not an npz file"):
            load_npz_images(path)
    with pytest.raises(ValueError, match=rf"^{zipped}: arr_0 cannot be read \(Object arrays"):
        load_npz_images(zipped)
    assert cli(["eval", "--per-class", "0", "--npz", str(text)]) == 2
    assert error_lines(caplog) == [f"error: {text} is not an npz file (a zip archive of .npy arrays, as numpy.savez "
                                   "writes)"]
