"""Agreement of two maps of the same image: rank correlation and overlap of their top regions.

Used to compare the two architectures' explanations of the same images (are ResNet-50's and DenseNet-121's Grad-CAMs
of an image alike?) and, through :mod:`cxrexplain.explain.measures.sanity`, a model's maps before and after its
weights are randomised.

- :func:`rank_correlation`: Spearman's ρ over the pixels, ties given average ranks (as ``scipy.stats.spearmanr``),
  except that a constant map has ρ = 0 with any map (scipy: NaN).
- :func:`top_region_iou`: IoU of the two maps' top-``top`` pixels, the ties at the region's edge broken at random
  (:func:`~cxrexplain.explain.measures.ordering.tie_broken_order`) and the IoU averaged over ``orders`` such draws.
- :func:`consistency`: both, per method and image, for two models' raw CAMs, with each map's share of tied pixels.

Maps are (B, H, W) tensors; a single (H, W) map gives 0-d results.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from cxrexplain.explain import cam
from cxrexplain.explain.measures.ordering import TIE_ORDERS, tie_broken_order, tied_share

TOP = 0.2
"""Default share of the pixels in a map's top region."""


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1 … N along the last dimension, ties given their average rank (``scipy.stats.rankdata``'s default).

    float64, shape of ``values``. A group of ``g`` equal values occupying sorted positions ``f … f + g − 1`` (0-based)
    all get rank ``f + (g + 1) / 2``.
    """
    shape = values.shape
    flat = values.reshape(-1, shape[-1])
    rows, n = flat.shape
    sorted_values, order = flat.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = new_group.cumsum(dim=1) - 1 + torch.arange(rows, device=flat.device)[:, None] * n
    position = torch.arange(n, device=flat.device, dtype=torch.float64).expand(rows, n).reshape(-1)
    group = group.reshape(-1)
    first = torch.full((rows * n,), float(n), dtype=torch.float64, device=flat.device)
    first = first.scatter_reduce(0, group, position, reduce="amin")
    last = torch.zeros(rows * n, dtype=torch.float64, device=flat.device).scatter_reduce(
        0, group, position, reduce="amax"
    )
    sorted_ranks = ((first + last) / 2 + 1)[group].view(rows, n)
    ranks = torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)
    return ranks.view(shape)


def rank_correlation(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between paired maps, per image: float64 of shape (B,).

    ``ρ = Σ (r_a − r̄_a)(r_b − r̄_b) / sqrt(Σ (r_a − r̄_a)² · Σ (r_b − r̄_b)²)`` over the H·W pixels, ``r`` the average
    ranks (:func:`average_ranks`), as ``scipy.stats.spearmanr`` (Spearman 1904).

    Convention: when either map is constant its ranks have no variance and ρ is 0/0; here it is **0** ("no rank
    association": a map that randomisation flattened to a constant has fully changed), where scipy returns NaN.
    Two constant maps also give 0. NaN is never returned, so a mean over images counts every image.
    """
    ra = average_ranks(maps_a.flatten(-2).to(torch.float64))
    rb = average_ranks(maps_b.flatten(-2).to(torch.float64))
    ra = ra - ra.mean(dim=-1, keepdim=True)
    rb = rb - rb.mean(dim=-1, keepdim=True)
    denominator = (ra.square().sum(dim=-1) * rb.square().sum(dim=-1)).sqrt()
    numerator = (ra * rb).sum(dim=-1)
    defined = denominator > 0
    return torch.where(defined, numerator / torch.where(defined, denominator, 1.0), 0.0)


def top_count(pixels: int, top: float = TOP) -> int:
    """Number of pixels in a top region: ``k = max(1, round(top · N))`` (Python's round: half to even)."""
    return max(1, round(top * pixels))


def top_region(maps: torch.Tensor, top: float = TOP, orders: int = TIE_ORDERS, seed: int = 0) -> torch.Tensor:
    """The ``k`` (:func:`top_count`) highest pixels of each map, ties broken at random: bool of shape (orders, B, H, W).

    Region ``o`` of image ``b`` holds the first ``k`` pixels of :func:`tie_broken_order` (order ``o``, seeded with
    ``seed``). When the ``k``-th value is tied (the zeros of a mostly-zero ReLU map) the pixels taken among the tied
    ones are a uniformly random subset, not the first ones in row-major order. A (H, W) map gives (orders, H, W).
    """
    single = maps.ndim == 2
    batch = maps.unsqueeze(0) if single else maps
    n = batch.shape[-2] * batch.shape[-1]
    order = tie_broken_order(batch, orders, seed)[..., : top_count(n, top)]
    region = torch.zeros(orders, batch.shape[0], n, dtype=torch.bool, device=maps.device).scatter_(-1, order, True)
    region = region.view(orders, *batch.shape)
    return region[:, 0] if single else region


def top_region_iou(
    maps_a: torch.Tensor, maps_b: torch.Tensor, top: float = TOP, orders: int = TIE_ORDERS, seed: int = 0
) -> torch.Tensor:
    """IoU of the two maps' top-``top`` regions, averaged over ``orders`` random tie orders: float of shape (B,).

    ``IoU = (1/O) Σ_o |A_o ∩ B_o| / |A_o ∪ B_o|`` with ``A_o``, ``B_o`` the :func:`top_region` of each map. The tie
    orders of ``maps_a`` and ``maps_b`` are drawn independently (one :func:`tie_broken_order` call on both batches, so
    every image of either side gets its own permutation): were they shared, the same tied pixels would be picked in
    both maps and the IoU would again be inflated. Without ties the result is exact and the same for every seed.

    Why: with a stable sort, two maps with *disjoint* 4-pixel blobs on an otherwise zero 10×10 background both fill
    their top 20 pixels with the same first 16 zeros, IoU = 16 / 24 = 0.67; with random ties the expected IoU is
    ≈ 0.11 (tests/explain/measures/test_consistency.py computes it exactly).
    """
    single = maps_a.ndim == 2
    a = maps_a.unsqueeze(0) if single else maps_a
    b = maps_b.unsqueeze(0) if single else maps_b
    if a.shape != b.shape:
        raise ValueError(f"maps_a and maps_b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    regions = top_region(torch.cat([a, b]), top, orders, seed)
    ra, rb = regions[:, : len(a)], regions[:, len(a) :]
    inter = (ra & rb).sum(dim=(-2, -1)).to(torch.float64)
    union = (ra | rb).sum(dim=(-2, -1)).to(torch.float64)
    iou = (inter / union).mean(dim=0).to(torch.float32)  # union ≥ k ≥ 1
    return iou[0] if single else iou


CONSISTENCY_COLUMNS = ["method", "index", "spearman", "top_iou", "tied_a", "tied_b"]


def consistency(
    raw_a: Mapping[str, np.ndarray],
    raw_b: Mapping[str, np.ndarray],
    size: tuple[int, int],
    top: float = TOP,
    orders: int = TIE_ORDERS,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method and image: rank correlation and top-region IoU of two models' maps of the same images.

    ``raw_a[method]`` and ``raw_b[method]`` are (N, h, w) raw CAMs of the same N images, in the same order, at each
    model's feature resolution (the grids may differ). Each is upsampled (bilinear) to ``size`` and min-max normalised
    (:func:`cxrexplain.explain.cam.upsample`, :func:`cxrexplain.explain.cam.normalise`), then compared:
    ``spearman`` = :func:`rank_correlation`, ``top_iou`` = :func:`top_region_iou` (``top``, ``orders``, ``seed``), and
    ``tied_a``/``tied_b`` = each map's share of tied pixels (:func:`~cxrexplain.explain.measures.ordering.tied_share`:
    how much of its ranking the random tie-breaking decided). Methods present in only one mapping are skipped.

    The maps compared must explain the *same class*: a map for Pneumonia and one for No Finding are not comparable.
    Callers pass class-1 (Pneumonia) maps of both models, whatever each model predicted.

    Returns columns ``method, index, spearman, top_iou, tied_a, tied_b`` (``index``: the image's position).
    """
    frames = []
    for method in [m for m in raw_a if m in raw_b]:
        a = cam.normalise(cam.upsample(torch.as_tensor(raw_a[method]).float(), size))
        b = cam.normalise(cam.upsample(torch.as_tensor(raw_b[method]).float(), size))
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "index": np.arange(len(a)),
                    "spearman": rank_correlation(a, b).numpy(),
                    "top_iou": top_region_iou(a, b, top=top, orders=orders, seed=seed).numpy(),
                    "tied_a": tied_share(a).numpy(),
                    "tied_b": tied_share(b).numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CONSISTENCY_COLUMNS)
