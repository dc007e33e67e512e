"""Batch streams: a batch split into parts that run concurrently, each on its share of the CPU threads.

With several intra-op threads, PyTorch runs each op over the whole batch on all of them, and the threads
meet at a barrier after every op. Whenever another process holds a core (a shared machine, a training
run beside the generation), each meeting waits for a descheduled thread. Streams of the batch, each
single-threaded (or with its share of the threads), only meet when their results are gathered. Only used
on CPU; one stream runs inline, in the caller's thread.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")


def stream_count(device: torch.device, batch: int, requested: int | None = None) -> int:
    """How many streams to split ``batch`` items into: ``requested``, or by default one per CPU thread
    (at most one per item, and one for an empty batch) on CPU and one on other devices."""
    if requested is None:
        return min(max(batch, 1), torch.get_num_threads()) if device.type == "cpu" else 1
    if not 1 <= requested <= max(batch, 1):
        raise ValueError(f"streams must be in [1, {batch}] (the batch size), got {requested}")
    return requested


@contextmanager
def thread_pool(workers: int, threads_each: int, name: str = "var") -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads whose PyTorch ops run on ``threads_each`` intra-op threads each.

    A thread of the pool running ops on all of the process's threads would start a second OpenMP team beside
    the caller's, whose workers, spinning after each op, take cores from the caller's. ``torch.set_num_threads``
    in a worker also sets the default of threads started later, so leaving the pool (which waits for running
    work and drops pending work) restores it."""
    threads = torch.get_num_threads()  # read first: this also fixes the calling thread's own count
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=torch.set_num_threads,
                              initargs=(threads_each,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


class Streams:
    """``count`` workers sharing this process's intra-op threads; a context manager.

    :meth:`map` runs a function once per stream and returns the results in stream order, each call
    under the caller's grad mode, inference mode and autocast (all three are per thread in PyTorch).
    """

    def __init__(self, count: int, device_type: str = "cpu"):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.count = count
        self.device_type = device_type
        self.threads = torch.get_num_threads()
        self.pool: ThreadPoolExecutor | None = None
        self._exit = ExitStack()

    def __enter__(self) -> "Streams":
        if self.count > 1:
            each = max(1, self.threads // self.count)
            self.pool = self._exit.enter_context(thread_pool(self.count, each, "var-stream"))
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()
        self.pool = None

    def map(self, fn: Callable[[int], T]) -> list[T]:
        """``[fn(0), ..., fn(count - 1)]``, concurrently when there are several streams."""
        if self.pool is None:
            return [fn(i) for i in range(self.count)]
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        autocast = torch.is_autocast_enabled(self.device_type)
        dtype = torch.get_autocast_dtype(self.device_type)

        def run(i: int) -> T:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                    torch.autocast(self.device_type, dtype=dtype, enabled=autocast):
                return fn(i)

        return list(self.pool.map(run, range(self.count)))


def split_batch(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, streams: int | None = None) -> torch.Tensor:
    """``fn(x)`` computed as ``fn`` over parts of the batch ``x`` in concurrent streams, concatenated."""
    count = stream_count(x.device, x.shape[0], streams)
    if count == 1:
        return fn(x)
    parts: Sequence[torch.Tensor] = x.tensor_split(count)
    with Streams(count, x.device.type) as pool:
        return torch.cat(pool.map(lambda i: fn(parts[i])))
