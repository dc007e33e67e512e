"""`var serve`: option checks made without Gradio."""
import pytest

from var.cli import main as cli
from conftest import one_error_line


@pytest.mark.parametrize("port", ["99999", "-1", "0", "http"])
def test_serve_port_out_of_range_is_a_usage_error(port, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["serve", "--port", port])
    assert e.value.code == 2
    assert f"argument --port: expected a port number in [1, 65535], got '{port}'" in \
        one_error_line(capsys.readouterr().err)
