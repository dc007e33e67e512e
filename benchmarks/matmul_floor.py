"""The matmul floor of the comparisons in benchmarks/README.md: the linear layers' GEMMs alone, fp32.

A training step or a generation with the same math as the reference cannot skip any of its linear layers'
matrix products, so the time of those products alone, at the same shapes and on this machine, is a floor
for any implementation; the reference's measured time divided by it bounds the speed-up that work on
everything else (attention, element-wise ops, the optimizer, Python) could give. Each layer gets its own
weights, so the small scales read them from memory as a real pass does.

    python benchmarks/matmul_floor.py train      # d8 shape, batch 4: forward and both gradients
    python benchmarks/matmul_floor.py generate   # d16 shape, B = 2 with guidance: one pass per scale
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from var import VARConfig
from var.cpu.packed_linear import PackedLinear, packing_available
from var.transformer import Linear

D16_PATCH_NUMS = VARConfig().patch_nums  # the released models' 10 scales, 680 tokens at 256 px


def block_shapes(width: int) -> list[tuple[int, int]]:
    """(in, out) of one block's linear layers: fused q/k/v, attention output, the two FFN layers."""
    return [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-touch of the outputs, oneDNN's kernel choice
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_floor(depth: int, width: int, batch: int, vocab: int, repeats: int) -> float:
    """Seconds of one training step's GEMMs: per linear layer the forward, the input gradient and the
    weight gradient (the first layer's input gradient included: an upper bound by one small product)."""
    n = batch * sum(p * p for p in D16_PATCH_NUMS)
    layers = [(torch.randn(o, i) / i ** 0.5, torch.randn(n, i), torch.randn(n, o))
              for _ in range(depth) for i, o in block_shapes(width)]
    layers.append((torch.randn(vocab, width) / width ** 0.5, torch.randn(n, width), torch.randn(n, vocab)))

    def step():
        for w, x, dy in layers:
            torch.mm(x, w.t())      # forward
            torch.mm(dy, w)         # gradient of the input
            torch.mm(dy.t(), x)     # gradient of the weight
    return median_time(step, repeats)


def generate_floor(depth: int, width: int, rows_per_token: int, vocab: int, repeats: int,
                   packed: bool) -> dict[int, float]:
    """Seconds of each scale's GEMMs in one generation pass (every block, then the head), with plain
    F.linear or with the packed oneDNN weights the pipeline uses on CPU."""
    def linear(i: int, o: int) -> Linear:
        layer = (PackedLinear if packed else Linear)(i, o).requires_grad_(False)
        if packed:
            layer.pack()
        return layer

    layers = [linear(i, o) for _ in range(depth) for i, o in block_shapes(width)]
    head = linear(width, vocab)
    per_scale = {}
    with torch.inference_mode():
        for p in D16_PATCH_NUMS:
            x = torch.randn(rows_per_token * p * p, width)
            h = torch.randn(rows_per_token * p * p, 4 * width)

            def one_pass():
                for layer in layers:
                    layer(h if layer.in_features == 4 * width else x)
                head(x)
            per_scale[p] = median_time(one_pass, repeats)
    return per_scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["train", "generate"])
    ap.add_argument("--depth", type=int, help="blocks (default: 8 for train, 16 for generate)")
    ap.add_argument("--batch-size", type=int, help="images (default: 4 for train, 2 for generate)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.mode == "train":
        depth, batch = a.depth or 8, a.batch_size or 4
        t = train_floor(depth, 64 * depth, batch, a.vocab, a.repeats)
        print(f"training step, depth {depth}, width {64 * depth}, batch {batch}: GEMMs alone {t:.3f} s")
        return
    depth, batch = a.depth or 16, a.batch_size or 2
    plain = generate_floor(depth, 64 * depth, 2 * batch, a.vocab, a.repeats, packed=False)
    packed = generate_floor(depth, 64 * depth, 2 * batch, a.vocab, a.repeats, packed=True) \
        if packing_available() else plain
    print(f"generation, depth {depth}, width {64 * depth}, batch {batch} with guidance ({2 * batch} rows per token)")
    print("scale  plain F.linear  packed oneDNN")
    for p in D16_PATCH_NUMS:
        print(f"{p:>5}  {plain[p]:>12.3f} s  {packed[p]:>11.3f} s")
    floor = sum(min(plain[p], packed[p]) for p in D16_PATCH_NUMS)
    print(f"total  {sum(plain.values()):>12.3f} s  {sum(packed.values()):>11.3f} s   floor (faster of the two "
          f"per scale) {floor:.3f} s")


if __name__ == "__main__":
    main()
