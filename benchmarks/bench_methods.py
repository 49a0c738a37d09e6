"""Cost of every explanation method per image against Grad-CAM: the perturbation CAMs and the captum attributions.

    python benchmarks/bench_methods.py [--size 64] [--images 4] [--batch 16] [--archs resnet18 densenet121]
                                       [--methods ...] [--samples 8] [--ig-steps 32] [--device cpu|cuda]

For each architecture (random weights, eval mode, ``--images`` random images, half of them explained as Pneumonia and
half as No Finding) every method runs once as a warm-up (Score-CAM: only its forward shapes), then ``--repeats`` times
(median; Score-CAM once); the table
gives seconds per image, the ratio to native Grad-CAM, and what each costs in passes of the model per image (K: the
CAM layer's channels). CAMs go through :func:`cxrexplain.explain.cam.compute_cams` (``--batch`` perturbed copies per
forward pass), attributions through :func:`cxrexplain.explain.attributions.compute_attributions` (``--batch`` images
per forward pass; SmoothGrad with ``--samples`` noisy copies, integrated gradients with ``--ig-steps`` steps).
Nothing here is asserted by the tests; on a shared CPU say how loaded the machine was (``uptime``).
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table
from timing import timed

from cxrexplain import names
from cxrexplain.config import ARCHS
from cxrexplain.explain.attributions import compute_attributions
from cxrexplain.explain.cam import compute_cams
from cxrexplain.models.backbones import build_classifier

DEFAULT_METHODS = (
    "gradcam",
    "scorecam",
    "ablationcam",
    "saliency",
    "input_x_gradient",
    "guided_backprop",
    "guided_gradcam",
    "deeplift",
    "integrated_gradients",
    "saliency_smoothgrad",
    "deeplift_smoothgrad",
)


def passes(method: str, channels: int, samples: int, ig_steps: int) -> str:
    """What one image costs, in forward (F) and backward (B) passes of the model."""
    if method.endswith("_smoothgrad"):
        return f"{samples} × ({passes(method.removesuffix('_smoothgrad'), channels, samples, ig_steps)})"
    return {
        "forward": "1 F",
        "gradcam": "1 F + head B",
        "scorecam": f"1 F + {channels} F (K)",
        "ablationcam": f"1 F + {channels} head F (K)",
        "saliency": "1 F + 1 B",
        "input_x_gradient": "1 F + 1 B",
        "guided_backprop": "1 F + 1 B",
        "guided_gradcam": "2 F + 1 B + head B",
        "deeplift": "2 F + 2 B (input, baseline)",
        "integrated_gradients": f"{ig_steps} F + {ig_steps} B",
    }.get(method, "")


def bench_arch(
    arch: str,
    size: int,
    n: int,
    batch: int,
    methods: list[str],
    samples: int,
    ig_steps: int,
    device: str,
    repeats: int = 3,
) -> tuple[int, dict[str, float]]:
    """Channels of the CAM layer and seconds per image of each method (and of the forward pass)."""
    torch.manual_seed(0)
    model = build_classifier(arch).to(device).eval()
    x = torch.randn(n, 1, size, size, device=device)
    classes = torch.arange(n, device=device) % 2
    with torch.no_grad():
        channels = model.features(x[:1]).shape[1]
    options = {name: {"samples": samples} for name in names.ATTRIBUTIONS if name.endswith("_smoothgrad")}
    options["integrated_gradients"] = {"n_steps": ig_steps}
    options["integrated_gradients_smoothgrad"]["n_steps"] = ig_steps

    def run(method: str, images: torch.Tensor, c: torch.Tensor) -> object:
        if method == "forward":
            with torch.no_grad():
                return model(images)
        if method in names.CAMS:
            return compute_cams(model, images, (method,), classes=c, batch_size=batch)
        return compute_attributions(model, images, c, (method,), batch_size=batch, options=options)

    seconds = {}
    for method in ["forward", *methods]:
        if method == "scorecam":  # warm-up of its forward shapes only: the method itself is n·K forward passes
            with torch.no_grad():
                for rows in {batch, (n * channels) % batch or batch}:
                    model(torch.zeros(rows, 1, size, size, device=device))
        else:
            run(method, x, classes)  # warm-up with the timed shapes (oneDNN prepares its kernels per shape)
        times = [
            timed(lambda m=method: run(m, x, classes), device) for _ in range(1 if method == "scorecam" else repeats)
        ]
        seconds[method] = sorted(times)[len(times) // 2] / n
    return channels, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad: noisy copies per image")
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method, median (Score-CAM: one)")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "densenet121"], choices=list(ARCHS))
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), choices=[*names.CAMS, *names.ATTRIBUTIONS]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    console = Console()
    for arch in args.archs:
        channels, seconds = bench_arch(
            arch,
            args.size,
            args.images,
            args.batch,
            args.methods,
            args.samples,
            args.ig_steps,
            args.device,
            args.repeats,
        )
        table = Table(
            title=f"{arch}: {args.size} px, {args.images} images, batch {args.batch}, {args.device}, K = {channels}"
        )
        for column in ("method", "s / image", "× Grad-CAM", "passes per image"):
            table.add_column(column, justify="left" if column in ("method", "passes per image") else "right")
        grad = seconds.get("gradcam", float("nan"))
        for method, s in seconds.items():
            table.add_row(method, f"{s:.4f}", f"{s / grad:.1f}", passes(method, channels, args.samples, args.ig_steps))
        console.print(table)


if __name__ == "__main__":
    main()
