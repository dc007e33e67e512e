"""Batch streams: same results as one pass, caller's modes carried into the workers, threads restored."""
import threading

import pytest
import torch

from var.sampling import _BatchStreams, generate
from var.cpu.streams import Streams, split_batch, stream_count
from conftest import small_pipe


def _threads_seen_by_a_new_thread() -> int:
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.mark.parametrize("cfg", [0.0, 2.0])
@pytest.mark.parametrize("min_rows", [0, 6])  # every scale split / only the larger ones (the rest run together)
def test_generation_does_not_depend_on_the_streams(cfg, min_rows, monkeypatch):
    monkeypatch.setattr(_BatchStreams, "MIN_ROWS_PER_STREAM", min_rows)
    pipe = small_pipe()
    labels = torch.tensor([0, 1, 2, 3])
    n = 8 if cfg else 4
    runs = [generate(pipe.var, pipe.vqvae, labels, cfg=cfg, top_k=1, streams=s) for s in (1, 2, 3, n)]
    for f_hat, tokens in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(tokens, runs[0][1], strict=True))
        torch.testing.assert_close(f_hat, runs[0][0], atol=1e-5, rtol=0)


def test_decoding_does_not_depend_on_the_streams():
    pipe = small_pipe()
    f_hat = torch.randn(5, 8, 4, 4)
    with torch.no_grad():
        one = pipe.vqvae.decode_latent(f_hat)
        for s in (2, 5):
            torch.testing.assert_close(split_batch(pipe.vqvae.decode_latent, f_hat, streams=s), one, atol=1e-5, rtol=0)


def test_thread_settings_are_restored():
    before, before_new = torch.get_num_threads(), _threads_seen_by_a_new_thread()
    pipe = small_pipe()
    generate(pipe.var, pipe.vqvae, torch.tensor([0, 1]), streams=2)
    assert torch.get_num_threads() == before and _threads_seen_by_a_new_thread() == before_new


def test_workers_run_under_the_callers_modes():
    x = torch.randn(4, 3, requires_grad=True)
    y = split_batch(lambda part: part * 2, x, streams=2)
    assert y.requires_grad
    y.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    with torch.no_grad():
        assert not split_batch(lambda part: part * 2, x, streams=2).requires_grad
    with torch.inference_mode():
        assert split_batch(lambda part: part * 2, x, streams=2).is_inference()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert split_batch(lambda part: part @ torch.ones(3, 3), x, streams=2).dtype == torch.bfloat16


def test_stream_counts():
    assert stream_count(torch.device("cpu"), 1) == 1
    assert stream_count(torch.device("cpu"), 64) == torch.get_num_threads()
    assert stream_count(torch.device("meta"), 64) == 1
    with pytest.raises(ValueError, match=r"streams must be in \[1, 4\]"):
        stream_count(torch.device("cpu"), 4, requested=5)
    with pytest.raises(ValueError, match="count must be >= 1"):
        Streams(0)


def test_the_training_prefetch_thread_runs_single_threaded():
    """Its ops run on one intra-op thread (on all of them, its own OpenMP team took cores from the training
    step: 1.5x slower steps on 2 cores); the caller's count and the default of new threads are kept."""
    from var.training.common import Prefetcher
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with Prefetcher(lambda step: torch.get_num_threads(), end=3) as fetch:
            assert [fetch(s) for s in range(3)] == [1, 1, 1]
            assert torch.get_num_threads() == 2
        assert _threads_seen_by_a_new_thread() == 2
    finally:
        torch.set_num_threads(before)
