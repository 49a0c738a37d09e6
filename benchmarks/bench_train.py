"""Training throughput: train steps per architecture and input size, and the augmenting data loader per worker count.

    python benchmarks/bench_train.py [--sizes 64 128 224] [--batch 16] [--steps 3] [--workers 0 1 2] [--archs ...]

Prints three tables:
1. training images/s (forward + backward + Adam step) for every registered backbone on the CPU at each size;
2. data-loader images/s with the study's training augmentations (albumentations) per number of workers: it must
   exceed the training step rate, or a GPU would starve;
3. on a CUDA GPU (when one is present): training images/s at 224 px in fp32 and bf16-mixed with channels_last.
Nothing here is asserted by the tests; numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from cxrexplain.config import ARCHS, AugmentParams
from cxrexplain.data.datamodule import CacheDataset, train_transform
from cxrexplain.models.backbones import build_classifier


def train_rate(arch: str, size: int, batch: int, steps: int, device: str, bf16: bool, channels_last: bool) -> float:
    """Images per second of full training steps (the first, warm-up step is not counted)."""
    model = build_classifier(arch, image_size=size).to(device).train()
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        optimiser.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times[1:]))


def loader_rate(size: int, batch: int, workers: int, n: int = 512, cache_size: int = 256) -> float:
    """Images per second out of a DataLoader applying the training augmentations to 256 px cached images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n, cache_size, cache_size), dtype=np.uint8)
    dataset = CacheDataset(
        images, np.arange(n), np.zeros(n, dtype=int), train_transform(size, AugmentParams()), random=True
    )
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=True)
    iterator = iter(loader)
    next(iterator)  # start the workers
    start = time.perf_counter()
    count = sum(len(b["label"]) for b in iterator)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    args = parser.parse_args()
    console = Console()

    table = Table(title=f"CPU training images/s (batch {args.batch}, fp32, {torch.get_num_threads()} threads)")
    table.add_column("arch")
    for size in args.sizes:
        table.add_column(f"{size} px", justify="right")
    for arch in args.archs:
        rates = [train_rate(arch, s, args.batch, args.steps, "cpu", False, False) for s in args.sizes]
        table.add_row(arch, *(f"{r:.1f}" for r in rates))
    console.print(table)

    table = Table(title="data loader images/s with the training augmentations (256 px cache → 224 px)")
    table.add_column("workers", justify="right")
    table.add_column("images/s", justify="right")
    for workers in args.workers:
        table.add_row(str(workers), f"{loader_rate(224, args.batch, workers):.0f}")
    console.print(table)

    if torch.cuda.is_available():
        table = Table(title=f"GPU training images/s at 224 px, batch 64: {torch.cuda.get_device_name(0)}")
        for column in ("arch", "fp32", "bf16-mixed + channels_last"):
            table.add_column(column, justify="right")
        for arch in args.archs:
            fp32 = train_rate(arch, 224, 64, 10, "cuda", False, False)
            bf16 = train_rate(arch, 224, 64, 10, "cuda", True, True)
            table.add_row(arch, f"{fp32:.0f}", f"{bf16:.0f}")
        console.print(table)
    else:
        console.print("no CUDA GPU here: the GPU table is skipped")


if __name__ == "__main__":
    main()
