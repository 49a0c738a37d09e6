"""Explanation cost: Grad-CAM against pytorch-grad-cam and captum, and seconds per image of every measure.

    python benchmarks/bench_explain.py [--size 224] [--batch 16] [--repeats 5] [--archs resnet50 densenet121]
                                       [--device cuda|cpu] [--steps 20] [--orders 4] [--measure-images 2]
                                       [--skip-cams]

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
- deletion+insertion: :func:`cxrexplain.explain.measures.faithfulness.deletion_insertion` of the batch's Grad-CAM
  maps with ``--steps`` steps and ``--orders`` tie orders (up to 2 × (steps + 1) × orders forward passes per image,
  batched; steps that split no group of tied pixels are shared by the orders); divide ms/batch by the batch.
Every method explains each image for its predicted class (computed once, outside the timings, for the two libraries).

The second table times each entry of the measure registry (:data:`cxrexplain.explain.measures.registry.MEASURES`)
on the Grad-CAM maps of ``--measure-images`` random images with one random box each, as the explain stage calls it
(one call after a warm-up call), plus the sanity check (one randomisation mode of Grad-CAM: one explain pass per
block) and the consistency measures (rank correlation and tie-broken top-20 % IoU of two maps), in seconds per image.
Nothing here is asserted by the tests; numbers depend on the machine (on a shared CPU, keep it otherwise idle).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from captum.attr import LayerGradCam
from pgc_adapters import Logits
from pytorch_grad_cam import GradCAM
from rich.console import Console
from rich.table import Table
from timing import timed
from torch import nn

from cxrexplain.config import ARCHS
from cxrexplain.explain.cam import class_scores, compute_cams, normalise, upsample
from cxrexplain.explain.measures import consistency, localisation, sanity
from cxrexplain.explain.measures.faithfulness import deletion_insertion
from cxrexplain.explain.measures.registry import MEASURES, MeasureBatch, MeasureOptions
from cxrexplain.models.backbones import build_classifier
from cxrexplain.names import PATCH_SIZES


def median_seconds(call: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``call`` (:func:`timing.timed`) over ``repeats`` runs after one warm-up run."""
    return float(np.median([timed(call, device) for _ in range(repeats + 1)][1:]))


def bench_arch(
    arch: str, size: int, batch: int, repeats: int, device: str, steps: int = 20, orders: int = 4
) -> dict[str, float]:
    """Seconds per batch for the forward pass, each Grad-CAM implementation, and deletion/insertion scoring."""
    torch.manual_seed(0)
    model = build_classifier(arch, image_size=size).to(device).eval()
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
        return deletion_insertion(model, images, maps, classes, steps=steps, batch_size=batch * 4, orders=orders)

    seconds[f"deletion+insertion, {steps} steps, {orders} tie orders"] = median_seconds(
        faithfulness, max(2, repeats // 2), device
    )
    return seconds


def once(call: Callable[[], object], device: str) -> float:
    """Wall time of one call after one warm-up call."""
    call()
    return timed(call, device)


def bench_measures(arch: str, size: int, n: int, device: str, steps: int, orders: int) -> list[tuple[str, str, float]]:
    """(family, measure, seconds per image) for every registered measure, the sanity check and consistency."""
    torch.manual_seed(0)
    model = build_classifier(arch, image_size=size).to(device).eval()
    images = torch.randn(n, 1, size, size, device=device)
    rng = np.random.default_rng(0)
    boxes = [[[float(v) for v in (*rng.integers(0, size // 2, 2), size // 4, size // 4)]] for _ in range(n)]
    result = compute_cams(model, images, ("gradcam",))
    options = MeasureOptions(steps=steps, orders=orders, batch_size=64)
    batch = MeasureBatch(
        model=model,
        images=images,
        maps=result.maps["gradcam"],
        classes=result.classes,
        masks=localisation.box_masks(boxes, size, size).to(device),
        boxes=boxes,
        options=options,
        raw=result.raw["gradcam"],
    )
    rows = [(m.family, m.name, once(lambda m=m: m.compute(batch), device) / n) for m in MEASURES.values()]

    def explain(model_: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return compute_cams(model_, x, ("gradcam",), classes=c).maps["gradcam"]

    curve = once(
        lambda: sanity.randomisation_curve(model, images, result.classes, explain, modes=("top_down",)), device
    )
    rows.append(("sanity", "one randomisation mode (Grad-CAM)", curve / n))
    raw = {"gradcam": result.raw["gradcam"].cpu().numpy()}
    rows.append(
        (
            "consistency",
            "Spearman + top-20 % IoU",
            once(lambda: consistency.consistency(raw, raw, (size, size), orders=orders), device) / n,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    parser.add_argument("--orders", type=int, default=4, help="random tie orders of the ranking measures")
    parser.add_argument("--measure-images", type=int, default=2, help="images for the per-measure table")
    parser.add_argument("--skip-cams", action="store_true", help="only the per-measure table")
    # the ViT's CAM layer is inside its last block, where these libraries' hooks on `model.features` do not reach:
    # benchmarks/bench_backbones.py times its native Grad-CAM
    cnns = [a for a in ARCHS if a not in PATCH_SIZES]
    parser.add_argument("--archs", nargs="+", default=cnns, choices=cnns)
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
    if not args.skip_cams:
        for arch in args.archs:
            seconds = bench_arch(arch, args.size, args.batch, args.repeats, args.device, args.steps, args.orders)
            forward = seconds["forward (no_grad)"]
            for method, value in seconds.items():
                table.add_row(arch, method, f"{value * 1e3:.1f}", f"{args.batch / value:.1f}", f"{value / forward:.2f}")
            table.add_section()
        console.print(table)
    measures = Table(
        title=f"Measures at {args.size} px on Grad-CAM maps, {args.measure_images} images, {where}: seconds per image "
        f"(deletion/insertion {args.steps} steps; ranking measures {args.orders} tie orders)"
    )
    for column in ("arch", "family", "measure", "s / image"):
        measures.add_column(column, justify="right" if column == "s / image" else "left")
    for arch in args.archs:
        for family, name, value in bench_measures(
            arch, args.size, args.measure_images, args.device, args.steps, args.orders
        ):
            measures.add_row(arch, family, name, f"{value:.3g}")
        measures.add_section()
    console.print(measures)


if __name__ == "__main__":
    main()
