"""Checks of the inverse-CDF sampler on logits it cannot draw from, and of `var train` / `var train-vae`
option validation (bad values are refused, named, before any data is read)."""
import pytest
import torch

from var.cli import main as cli
from var.sampling import sample_tokens
from conftest import small_pipe


NO_DATA = "/nonexistent/var-test-data"  # every check below must fire before the data is looked at


@pytest.mark.parametrize("row", [[0.0, float("inf"), 1.0], [float("nan"), 2.0, -3.0],
                                 [-float("inf")] * 3, [float("inf"), float("inf"), 1.0]])
@pytest.mark.parametrize("top_k", [0, 2])
def test_a_draw_from_nan_or_inf_logits_is_refused_not_an_id_past_the_vocabulary(row, top_k):
    """The cdf of such logits is NaN (or all zero): the search then returned id V (3 here), which is no token."""
    logits = torch.tensor([[row, [0.0, 1.0, 2.0]]])
    with pytest.raises(ValueError, match="cannot draw from logits whose largest value is"):
        sample_tokens(logits, top_k=top_k, generator=torch.Generator().manual_seed(0))


def test_a_temperature_so_small_that_the_logits_overflow_is_named():
    """temperature 1e-40 passes the option check (finite, > 0) but overflows float32 logits to +inf: generation
    stopped with "index 48 is out of bounds" / "index out of range in self" instead of a message saying why."""
    pipe = small_pipe()
    for kw in (dict(top_k=0, top_p=0.0), dict(top_k=5, top_p=0.0), dict()):
        with pytest.raises(ValueError, match="temperature or cfg so extreme that float32 overflows"):
            pipe(class_labels=[0, 1], seed=0, temperature=1e-40, **kw)


def _refused(argv: list[str], caplog) -> str:
    """Run ``var ARGV`` (which must fail as a usage error, exit 2) and return what it logged."""
    caplog.clear()
    with caplog.at_level("ERROR"):
        assert cli(argv) == 2
    return caplog.text


def test_an_explicit_warmup_longer_than_the_run_is_refused(caplog):
    """--warmup 200 --steps 100: the lr would never reach --lr nor decay (min-lr-ratio unused); say so."""
    text = _refused(["train", "--data", NO_DATA, "--steps", "100", "--warmup", "200"], caplog)
    assert "--warmup 200" in text and "--steps 100" in text
    text = _refused(["train-vae", "--data", NO_DATA, "--warmup", "9000"], caplog)  # the preset's 8000 steps
    assert "--warmup 9000" in text and "--steps 8000" in text
    text = _refused(["train-vae", "--data", NO_DATA, "--finetune-decoder", NO_DATA, "--warmup", "2000"], caplog)
    assert "--warmup 2000" in text and "--steps 1500" in text


def test_patch_nums_and_max_scale_together_are_refused(caplog):
    """Both set a schedule: --max-scale was silently dropped for --patch-nums."""
    text = _refused(["train-vae", "--data", NO_DATA, "--preset", "custom", "--image-size", "32",
                     "--patch-nums", "1,2,4,8", "--max-scale", "6"], caplog)
    assert "--patch-nums" in text and "--max-scale" in text and "not both" in text


@pytest.mark.parametrize("option, value", [("--ch", "0"), ("--ch", "-32"), ("--z-channels", "0"),
                                           ("--vocab-size", "-1"), ("--channels", "2")])
def test_tokenizer_sizes_outside_their_range_are_usage_errors(option, value, capsys):
    """--ch 0 crashed with ZeroDivisionError; negative widths or codebooks were accepted into the config."""
    with pytest.raises(SystemExit) as e:
        cli(["train-vae", "--data", NO_DATA, "--preset", "custom", option, value])
    assert e.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [2 ** 64, -2 ** 63 - 1])
def test_a_seed_out_of_torchs_range_is_named(seed):
    from var.sampling import make_generator

    with pytest.raises(ValueError, match=rf"seed must be an integer in \[-2\*\*63, 2\*\*64\), got {seed}"):
        make_generator(seed, "cpu")
    make_generator(2 ** 64 - 1, "cpu")  # the ends of the range are seeds
    make_generator(-2 ** 63, "cpu")
