"""Tokenizer training checks: what the multi-scale quantizer and its trainer keep must not depend on how
many processes train it."""
import torch

from var import VQVAE
from conftest import TINY_VAE


def _usage_after_steps(rank: int, world: int, init_file: str, results: dict) -> None:
    """Three tokenizer steps on this process's share of one fixed global batch of 8 images (all of it
    when ``world`` is 1); records the codebook-usage statistic. lr = 0 keeps the weights, so the tokens
    and hence the statistic are the same whatever the process count, up to how it is gathered."""
    import torch.distributed as dist
    from var.training.common import DistInfo
    from var.training.runs import _wrap
    from var.training.trainers import VQVAETrainer
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        m = VQVAE(TINY_VAE)
        trainer = VQVAETrainer(m, torch.optim.SGD(m.parameters(), lr=0.0), reinit_every=0, grad_clip=0,
                               ddp_model=_wrap(m, DistInfo(rank, world)))
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            trainer.train_step(x[rank::world])
        results[rank] = m.quantize.ema_vocab_hit_SV.clone()
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_codebook_usage_under_torchrun_counts_every_process_batches(tmp_path):
    """The usage statistic that decides which codes are dead must count the codes every process hit, as one
    process on the global batch does. DDP broadcasts rank 0's buffers at each forward, so a statistic
    updated from each process's own half of the batch held rank 0's hits alone."""
    import torch.multiprocessing as mp
    single: dict = {}
    _usage_after_steps(0, 1, "", single)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_usage_after_steps, args=(2, str(tmp_path / "init"), results), nprocs=2)
        per_rank = [results[0], results[1]]
    for rank, usage in enumerate(per_rank):
        torch.testing.assert_close(usage, single[0], atol=1e-6, rtol=0, msg=f"rank {rank}")
