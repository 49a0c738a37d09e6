"""Grad-CAM cost: the native batched CAM against pytorch-grad-cam and captum, as a multiple of a plain forward pass.

    python benchmarks/bench_explain.py [--size 224] [--batch 16] [--repeats 5] [--archs resnet50 densenet121]
                                       [--device cuda|cpu] [--steps 20]

For each architecture (random weights, eval mode) and one batch of random images, times (median over ``--repeats``
after one warm-up call each):
- forward: ``model(x)`` under ``torch.no_grad`` (inference);
- native: :func:`cxrexplain.explain.cam.compute_cams` with Grad-CAM: features without autograd, back-propagation
  through the head only, upsampled and normalised maps (B, H, W) on the device;
- pytorch-grad-cam: ``GradCAM`` on the same layer (``model.features``) with one signed target per image
  (full backward through the backbone, maps resized with cv2 and normalised, as numpy on the CPU);
- captum: ``LayerGradCam`` on the same layer and signed per-image score, then the same upsampling and normalisation
  as the native path. Captum takes ``torch.autograd.grad`` with respect to the layer's output, so it does not
  back-propagate through the backbone either, but its forward pass records the backbone's autograd graph (time and
  the activation memory a backward would need).
- deletion+insertion: :func:`cxrexplain.explain.scores.deletion_insertion` of the batch's Grad-CAM maps with
  ``--steps`` steps (2 × (steps + 1) forward passes per image, batched); divide ms/batch by the batch for per image.
Every method explains each image for its predicted class (computed once, outside the timings, for the two libraries).
Nothing here is asserted by the tests; numbers depend on the machine (on a shared CPU, keep it otherwise idle).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from captum.attr import LayerGradCam
from cxrexplain.explain.scores import deletion_insertion
from pytorch_grad_cam import GradCAM
from rich.console import Console
from rich.table import Table
from torch import nn

from cxrexplain.config import ARCHS
from cxrexplain.explain.cam import class_scores, compute_cams, normalise, upsample
from cxrexplain.models.backbones import Classifier, build_classifier


class Logits(nn.Module):
    """pytorch-grad-cam expects (B, C) outputs: the classifier's logits as (B, 1)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).unsqueeze(1)


def median_seconds(call: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``call`` over ``repeats`` runs after one warm-up run."""
    times = []
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def bench_arch(arch: str, size: int, batch: int, repeats: int, device: str, steps: int = 20) -> dict[str, float]:
    """Seconds per batch for the forward pass, each Grad-CAM implementation, and deletion/insertion scoring."""
    torch.manual_seed(0)
    model = build_classifier(arch).to(device).eval()
    images = torch.randn(batch, 1, size, size, device=device)
    with torch.no_grad():
        classes = (model(images) > 0).long()

    def forward() -> object:
        with torch.no_grad():
            return model(images)

    def native() -> object:
        return compute_cams(model, images, ("gradcam",))

    targets = [(lambda out: out[0]) if c == 1 else (lambda out: -out[0]) for c in classes.tolist()]
    captum = LayerGradCam(lambda x: class_scores(model(x), classes), model.features)

    def captum_gradcam() -> object:
        maps = captum.attribute(images, relu_attributions=True)
        return normalise(upsample(maps[:, 0].detach(), (size, size)))

    seconds = {
        "forward (no_grad)": median_seconds(forward, repeats, device),
        "native Grad-CAM": median_seconds(native, repeats, device),
    }
    wrapped = Logits(model)
    with GradCAM(wrapped, [model.features]) as cam:
        seconds["pytorch-grad-cam GradCAM"] = median_seconds(lambda: cam(images, targets), repeats, device)
    model.zero_grad(set_to_none=True)
    seconds["captum LayerGradCam"] = median_seconds(captum_gradcam, repeats, device)
    model.zero_grad(set_to_none=True)
    maps = compute_cams(model, images, ("gradcam",), classes=classes).maps["gradcam"]

    def faithfulness() -> object:
        return deletion_insertion(model, images, maps, classes, steps=steps, batch_size=batch * 4)

    seconds[f"deletion+insertion, {steps} steps"] = median_seconds(faithfulness, max(2, repeats // 2), device)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    console = Console()
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    table = Table(
        title=f"Grad-CAM cost at {args.size} px, batch {args.batch}, fp32, {where} "
        f"(median of {args.repeats} after a warm-up)"
    )
    for column in ("arch", "method", "ms / batch", "images/s", "× forward"):
        table.add_column(column, justify="left" if column in ("arch", "method") else "right")
    for arch in args.archs:
        seconds = bench_arch(arch, args.size, args.batch, args.repeats, args.device, args.steps)
        forward = seconds["forward (no_grad)"]
        for method, value in seconds.items():
            table.add_row(arch, method, f"{value * 1e3:.1f}", f"{args.batch / value:.1f}", f"{value / forward:.2f}")
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
