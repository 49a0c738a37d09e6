"""Every backbone: parameters, training images/s, forward ms/image and the cost of Grad-CAM relative to a forward.

    python benchmarks/bench_backbones.py [--size 128] [--batch 4] [--repeats 5] [--train-steps 3]
                                         [--archs resnet50 ... vit_b_16] [--threads N] [--device cpu|cuda]

For each registered backbone (random weights, the study's head, one-channel input of ``--size`` px; a multiple of 16
for the ViT) and one batch of ``--batch`` random images:
- parameters: of the :class:`~cxrexplain.models.backbones.Classifier` (millions; VGG16's torchvision classifier,
  123 M of its 138 M, is replaced by the study's head);
- training images/s: forward + backward + Adam step in train mode (median of ``--train-steps`` steps after one
  warm-up step);
- forward ms/image: ``model(x)`` under ``torch.no_grad`` in eval mode;
- Grad-CAM ms/image: :func:`cxrexplain.explain.cam.compute_cams` with Grad-CAM (features without autograd, the
  gradient from the logit to the CAM layer only, maps upsampled and normalised), each image for its predicted class;
- Grad-CAM / forward: the ratio of the two medians; the issue's target is at most 1.15.
Forward and Grad-CAM are timed interleaved (forward, Grad-CAM, forward, ...) over ``--repeats`` rounds after one
warm-up round, so that a change of load on a shared machine hits both alike; medians. Nothing here is asserted by the
tests; numbers depend on the machine and its load (on a shared CPU, say how loaded it was: ``uptime``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from timing import timed

from cxrexplain.config import ARCHS
from cxrexplain.explain.cam import compute_cams
from cxrexplain.models.backbones import build_classifier

TARGET = 1.15  # the bound on Grad-CAM's cost in forward passes


def train_rate(arch: str, size: int, batch: int, steps: int, device: str) -> float:
    """Images per second of full training steps (median after one warm-up step)."""
    torch.manual_seed(0)
    model = build_classifier(arch, image_size=size).to(device).train()
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        optimiser.step()

    times = [timed(step, device) for _ in range(steps + 1)]
    return batch / float(np.median(times[1:]))


def inference_costs(arch: str, size: int, batch: int, repeats: int, device: str) -> tuple[int, float, float]:
    """(parameters, forward seconds per batch, Grad-CAM seconds per batch): interleaved medians."""
    torch.manual_seed(0)
    model = build_classifier(arch, image_size=size).to(device).eval()
    images = torch.randn(batch, 1, size, size, device=device)

    def forward() -> object:
        with torch.no_grad():
            return model(images)

    def gradcam() -> object:
        return compute_cams(model, images, ("gradcam",)).maps["gradcam"]

    forwards, cams = [], []
    for _ in range(repeats + 1):
        forwards.append(timed(forward, device))
        cams.append(timed(gradcam, device))
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, float(np.median(forwards[1:])), float(np.median(cams[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        where = torch.cuda.get_device_name(0)
    else:
        one, five, fifteen = os.getloadavg()
        where = f"CPU, {torch.get_num_threads()} threads, load average {one:.1f} {five:.1f} {fifteen:.1f} at start"
    table = Table(
        title=f"Backbones at {args.size} px, batch {args.batch}, fp32, {where} (training: median of "
        f"{args.train_steps} steps; forward and Grad-CAM: interleaved, median of {args.repeats}, after a warm-up)"
    )
    columns = ("arch", "parameters (M)", "train images/s", "forward ms/image", "Grad-CAM ms/image", "Grad-CAM / fwd")
    for column in columns:
        table.add_column(column, justify="left" if column == "arch" else "right")
    misses = []
    for arch in args.archs:
        rate = train_rate(arch, args.size, args.batch, args.train_steps, args.device)
        parameters, forward, gradcam = inference_costs(arch, args.size, args.batch, args.repeats, args.device)
        ratio = gradcam / forward
        if ratio > TARGET:
            misses.append(arch)
        table.add_row(
            arch,
            f"{parameters / 1e6:.1f}",
            f"{rate:.1f}",
            f"{forward / args.batch * 1e3:.1f}",
            f"{gradcam / args.batch * 1e3:.1f}",
            f"{ratio:.2f}" + (" (> 1.15)" if ratio > TARGET else ""),
        )
    Console(width=160).print(table)
    print(f"over the {TARGET}x target: {', '.join(misses) if misses else 'none'}")


if __name__ == "__main__":
    main()
