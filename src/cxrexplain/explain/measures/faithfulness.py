"""Faithfulness: does the model's confidence follow the map when the pixels it ranks are removed or kept?

Images are (B, 1, H, W) in normalised units on the model's device; maps are (B, H, W), non-negative and min-max
normalised per image; classes are (B,) with 1 for Pneumonia (score ``logit``) and 0 for No Finding (score
``-logit``). The explained probability is ``p = sigmoid(±logit)``. Perturbed images go through the model
``batch_size`` at a time, in eval mode (the modules' own modes are restored) and without gradients.

- :func:`deletion_insertion`: deletion and insertion AUCs (Petsiuk et al. 2018, RISE).
- :func:`confidence_change`, :func:`average_drop`, :func:`increase_in_confidence`: the map multiplies the image
  (Chattopadhay et al. 2018, Grad-CAM++).
- :func:`road`, :func:`noisy_linear_imputation`: RemOve And Debias (Rong et al. 2022).
- :func:`reference_images`, :func:`gaussian_blur`: what removed pixels are replaced with.

Every measure that ranks pixels takes its order from :func:`~cxrexplain.explain.measures.ordering.tie_broken_order`
and is averaged over ``orders`` random orders of the tied pixels (report
:func:`~cxrexplain.explain.measures.ordering.tied_share` beside it). Where a stable sort would decide ties by
row-major position, a map with 84 % zeros moved from a deletion AUC of 0.745 to 0.290 when only its ties were put
in another order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from cxrexplain.explain.attributions import BLACK, evaluating, signs
from cxrexplain.explain.measures.ordering import TIE_ORDERS, tie_broken_order

Baseline = Literal["mean", "blur", "black"] | float

ROAD_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""Percentages of the pixels removed at the points of a ROAD curve (Rong et al. 2022)."""

NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (1, 1, 1 / 12),
    (0, 1, 1 / 6),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (0, -1, 1 / 6),
    (-1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
)
"""``(row offset, column offset, weight)`` of the 8 neighbours in noisy linear imputation (Rong et al. 2022)."""


# --------------------------------------------------------------------------------------------------- references


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images: radius ``ceil(3σ)`` (capped by the image), reflect padding."""
    height, width = images.shape[-2:]
    radius = min(int(np.ceil(3 * sigma)), height - 1, width - 1)
    if sigma <= 0 or radius < 1:
        return images.clone()
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = torch.nn.functional.pad(images, (radius, radius, 0, 0), mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = torch.nn.functional.pad(x, (0, 0, radius, radius), mode="reflect")
    return torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def reference_images(images: torch.Tensor, baseline: Baseline = "mean", sigma: float | None = None) -> torch.Tensor:
    """The images that removed pixels are replaced with, shape of ``images`` (B, 1, H, W).

    ``mean``: each image's own mean intensity (a flat image: local evidence such as an opacity is gone, the
    intensity stays in range); ``blur``: a Gaussian blur with ``sigma`` pixels (default ``H / 16``; a mild blur keeps
    the low-frequency density that is the evidence for Pneumonia); ``black``: :data:`BLACK`; a float: that value.
    """
    if isinstance(baseline, int | float):
        return torch.full_like(images, float(baseline))
    if baseline == "mean":
        return images.mean(dim=(-3, -2, -1), keepdim=True).expand_as(images).clone()
    if baseline == "blur":
        return gaussian_blur(images, images.shape[-2] / 16 if sigma is None else sigma)
    if baseline == "black":
        return torch.full_like(images, BLACK)
    raise ValueError(f"baseline must be 'mean', 'blur', 'black' or a number, got {baseline!r}")


def _probabilities(model: nn.Module, images: torch.Tensor, sign: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``sigmoid(sign · logit)`` for (N, 1, H, W) images, batch by batch, without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            out.append(torch.sigmoid(model(images[part]).reshape(-1) * sign[part]))
    return torch.cat(out) if out else images.new_zeros(0)


def _ranks(order: torch.Tensor) -> torch.Tensor:
    """The inverse permutations of ``order`` (..., N): ``rank[..., order[..., i]] = i``."""
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def _cuts_a_tie(maps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: whether the top ``counts[k]`` pixels of map ``b`` end inside a group of equal values.

    Where they do not, every tie order removes the same pixels and one order's result stands for all.
    """
    flat = maps.reshape(maps.shape[0], -1)
    n = flat.shape[1]
    values = flat.sort(dim=1, descending=True).values
    inside = (counts > 0) & (counts < n)
    last = values[:, (counts - 1).clamp(0, n - 1)]
    following = values[:, counts.clamp(0, n - 1)]
    return inside[None, :] & (last == following)


# ------------------------------------------------------------------------------------------- deletion / insertion


class DeletionInsertion(NamedTuple):
    """Per-image deletion and insertion AUCs (B,), the curves (B, steps + 1), and the fractions they are taken at.

    Curves and AUCs are means over the random tie orders (the AUC of the mean curve is the mean of the AUCs).
    """

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    fractions: torch.Tensor


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    steps: int = 20,
    baseline: Baseline = "mean",
    batch_size: int = 32,
    orders: int = TIE_ORDERS,
    seed: int = 0,
) -> DeletionInsertion:
    """Deletion and insertion AUCs (Petsiuk et al. 2018, RISE) of the explained class's probability.

    Pixels are ranked by decreasing map value, ties in a random order (:func:`tie_broken_order` with ``orders`` and
    ``seed``). At step ``k = 0 … steps`` the top ``n_k = round(k · HW / steps)`` pixels are *deleted* (set to the
    reference image, see :func:`reference_images`, default each image's mean) or *inserted* (copied from the image
    into the reference). The curve is ``p_k = sigmoid(±logit)`` of the class being explained, averaged over the tie
    orders; the AUC is the trapezoid rule over the fraction ``f_k = n_k / HW`` from 0 to 1. A faithful map has a low
    deletion AUC and a high insertion AUC.

    Petsiuk et al. delete pixels in decreasing order of saliency and do not say how ties are ordered; a stable sort
    would order them by row-major position, which decides the AUC for a ReLU map with many zeros. Here the tied
    pixels are ordered at random and the curves averaged; on a map without ties every order is the same and the
    result is exact. A step whose ``n_k`` does not cut through a group of equal values removes the same pixels in
    every order and is evaluated once, so a map without ties costs one pass, as a single order would.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n_images, _, height, width = images.shape
    pixels = height * width
    device = images.device
    k = torch.arange(steps + 1, device=device)
    counts = (k * pixels + steps // 2) // steps  # round(k · HW / steps), exact in integers
    fractions = counts.to(images.dtype) / pixels
    sign = signs(classes, images)
    ranks = _ranks(tie_broken_order(maps, orders, seed))  # (orders, B, N)
    cuts = _cuts_a_tie(maps, counts)  # (B, K)
    # Jobs (order, image, step): every step of order 0, and the other orders only where n_k cuts through a tie.
    first = torch.nonzero(torch.ones(1, n_images, steps + 1, dtype=torch.bool, device=device))
    others = torch.nonzero(cuts[None].expand(orders - 1, -1, -1))
    others[:, 0] += 1
    jobs = torch.cat([first, others])
    refs = reference_images(images, baseline)
    per_chunk = max(1, batch_size // 2)
    probs = []
    with evaluating(model):
        for start in range(0, len(jobs), per_chunk):
            o, b, s = jobs[start : start + per_chunk].unbind(1)
            removed = (ranks[o, b] < counts[s][:, None]).view(-1, 1, height, width)
            x, ref = images[b], refs[b]
            batch = torch.cat([torch.where(removed, ref, x), torch.where(removed, x, ref)])
            p = _probabilities(model, batch, sign[b].repeat(2), batch_size)
            probs.append(p.view(2, -1).T)
    job_probs = torch.cat(probs) if probs else images.new_zeros(0, 2)
    curves = images.new_empty(orders, n_images, steps + 1, 2)
    n_first = len(first)
    curves[:] = job_probs[:n_first].view(1, n_images, steps + 1, 2)
    o, b, s = others.unbind(1)
    curves[o, b, s] = job_probs[n_first:]
    curve = curves[0] + (curves - curves[0]).mean(dim=0)  # exact where every order agrees
    deletion_curve, insertion_curve = curve[..., 0], curve[..., 1]
    return DeletionInsertion(
        deletion=torch.trapezoid(deletion_curve, fractions, dim=1),
        insertion=torch.trapezoid(insertion_curve, fractions, dim=1),
        deletion_curve=deletion_curve,
        insertion_curve=insertion_curve,
        fractions=fractions,
    )


# ---------------------------------------------------------------------------------------------- confidence change


class ConfidenceChange(NamedTuple):
    """Per-image probabilities on the image and on the map-masked image, their change, relative drop and rise flag."""

    original: torch.Tensor
    masked: torch.Tensor
    change: torch.Tensor
    drop: torch.Tensor
    increase: torch.Tensor


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    reference: float = BLACK,
    batch_size: int = 32,
) -> ConfidenceChange:
    """Change in the explained class's probability when the image is masked by its map (Chattopadhay et al. 2018).

    The map multiplies the image in pixel space: ``x̃ = r + map · (x − r)`` with ``r`` = :data:`BLACK` by default
    (in normalised units, so a pixel keeps ``map`` times its [0, 1] intensity). With ``Y = sigmoid(±logit(x))`` and
    ``O`` the same on ``x̃``: ``change = O − Y``, ``drop = max(0, Y − O) / Y`` and ``increase = O > Y``; their means
    over images are :func:`average_drop` and :func:`increase_in_confidence`.

    pytorch-grad-cam's ``CamMultImageConfidenceChange`` multiplies the *normalised* tensor, ``x · map``: that is
    ``reference=0`` here (the dataset's mean grey, not black). Its ``DropInConfidence`` is the absolute drop
    ``max(0, Y − O)``, not divided by ``Y`` as in the paper's Average Drop (followed here).
    """
    sign = signs(classes, images)
    masked_images = reference + maps[:, None].to(images.dtype) * (images - reference)
    with evaluating(model):
        both = _probabilities(model, torch.cat([images, masked_images]), sign.repeat(2), batch_size)
    original, masked = both[: len(images)], both[len(images) :]
    drop = (original - masked).clamp_min(0) / original.clamp_min(torch.finfo(original.dtype).tiny)
    return ConfidenceChange(original, masked, masked - original, drop, masked > original)


def average_drop(change: ConfidenceChange) -> float:
    """Average Drop % (Chattopadhay et al. 2018): ``100 / N · Σ max(0, Y − O) / Y`` over the N images; lower is better.

    NaN for no images.
    """
    return float(100 * change.drop.to(torch.float64).mean()) if len(change.drop) else float("nan")


def increase_in_confidence(change: ConfidenceChange) -> float:
    """Increase in Confidence % (Chattopadhay et al. 2018): ``100 / N · Σ 1[O > Y]``; higher is better. NaN for none."""
    return float(100 * change.increase.to(torch.float64).mean()) if len(change.increase) else float("nan")


# ---------------------------------------------------------------------------------------------------------- ROAD


def _imputation_system(removed: np.ndarray, image: np.ndarray) -> tuple[csc_matrix, np.ndarray, np.ndarray]:
    """The linear system ``A v = b`` of one image's removed pixels, its right-hand sides (n, C) and their indices.

    ``removed`` is (H, W) bool, ``image`` (C, H, W). Each removed pixel equals the weighted mean of its neighbours
    inside the image (:data:`NEIGHBOUR_WEIGHTS`): ``Σ_valid w_j v_j − (Σ_valid w_j) v_i = 0``, known neighbours moved
    to the right-hand side, as in Rong et al.'s ``NoisyLinearImputer.setup_sparse_system``.
    """
    height, width = removed.shape
    flat = removed.ravel()
    unknown = np.flatnonzero(flat)
    n = len(unknown)
    variable = np.full(flat.shape, -1, dtype=np.int64)
    variable[unknown] = np.arange(n)
    rows, cols = np.divmod(unknown, width)
    values = image.reshape(image.shape[0], -1)
    b = np.zeros((n, image.shape[0]))
    diagonal = np.zeros(n)
    a_rows, a_cols, a_data = [], [], []
    for dr, dc, weight in NEIGHBOUR_WEIGHTS:
        r, c = rows + dr, cols + dc
        valid = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        neighbour = np.where(valid, r * width + c, 0)
        diagonal -= weight * valid
        known = valid & ~flat[neighbour]
        b[known] -= weight * values[:, neighbour[known]].T
        free = valid & flat[neighbour]
        a_rows.append(np.flatnonzero(free))
        a_cols.append(variable[neighbour[free]])
        a_data.append(np.full(int(free.sum()), weight))
    a_rows.append(np.arange(n))
    a_cols.append(np.arange(n))
    a_data.append(diagonal)
    matrix = csc_matrix((np.concatenate(a_data), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(n, n))
    return matrix, b, unknown


def noisy_linear_imputation(
    images: torch.Tensor, removed: torch.Tensor, noise: float = 0.01, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill the ``removed`` pixels (B, H, W bool) of (B, C, H, W) images by noisy linear imputation (Rong et al. 2022).

    Each removed pixel becomes the weighted mean of its 8 neighbours (weight 1/6 for the 4 edge neighbours, 1/12 for
    the diagonal ones; neighbours outside the image drop out), removed neighbours being unknowns themselves: one
    sparse linear system per image, solved with scipy's ``spsolve`` in float64. Then Gaussian noise of standard
    deviation ``noise`` (in the images' units) is added to the imputed values, drawn per image as
    ``torch.randn(C, n_removed, generator=generator)`` in the images' dtype on the CPU: for float32 images, the same
    numbers as pytorch-grad-cam's ``NoisyLinearImputer`` after ``torch.manual_seed`` with the generator's seed.
    Pixels are moved to the CPU for the solve. An image must keep at least one pixel (else the system is singular).
    """
    out = images.clone()
    flat_out = out.view(*images.shape[:2], -1)
    masks = removed.reshape(len(images), *images.shape[-2:]).cpu().numpy()
    pixels = images.detach().cpu().to(torch.float64).numpy()
    for i, (mask, image) in enumerate(zip(masks, pixels, strict=True)):
        if not mask.any():
            continue
        if mask.all():
            raise ValueError("noisy_linear_imputation: an image with every pixel removed has nothing to impute from")
        matrix, b, unknown = _imputation_system(mask, image)
        solution = np.asarray(spsolve(matrix, b)).reshape(len(unknown), -1).T
        filled = torch.from_numpy(solution.copy()).to(images.dtype)
        if noise:
            filled = filled + noise * torch.randn(filled.shape, generator=generator, dtype=images.dtype)
        flat_out[i][:, torch.from_numpy(unknown).to(images.device)] = filled.to(images.device)
    return out


class Road(NamedTuple):
    """ROAD per image: the score (B,) (the curve's mean), the curve (B, P), the removed fractions (P,), and ``p``
    on the unperturbed image (B,)."""

    score: torch.Tensor
    curve: torch.Tensor
    fractions: torch.Tensor
    original: torch.Tensor


def road(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    order: Literal["morf", "lerf"] = "morf",
    noise: float = 0.01,
    batch_size: int = 32,
    orders: int = TIE_ORDERS,
    seed: int = 0,
) -> Road:
    """RemOve And Debias (Rong et al. 2022): the explained probability after noisy linear imputation of ranked pixels.

    For each ``q`` in ``percentiles`` the ``n_q = round(q · HW / 100)`` pixels with the highest map values
    (``order="morf"``, most relevant first) or the lowest (``"lerf"``, least relevant first) are removed and
    re-filled by :func:`noisy_linear_imputation` (``noise`` in normalised units; seeded from ``seed``). The curve is
    ``p_q = sigmoid(±logit)`` on the imputed image, averaged over ``orders`` random orders of the tied pixels
    (:func:`tie_broken_order`; lerf reverses it); the ROAD score is the curve's mean over the percentiles. A faithful
    map gives a low MoRF score and a high LeRF score; ``(lerf − morf) / 2`` is pytorch-grad-cam's ``ROADCombined``.

    Rong et al. (and pytorch-grad-cam) evaluate the model's accuracy over a dataset at each fraction; here it is each
    image's probability, to be averaged by the caller. pytorch-grad-cam's ``percentile`` is the share *kept*: its
    ``ROADMostRelevantFirst(p)`` removes the pixels at or above the map's ``p``-th percentile (about ``100 − p`` %,
    with every pixel tied at the threshold), which is ``q = 100 − p`` here; its metrics return ``O − Y``, the change
    from the unperturbed probability (``Road.original``). Only a step that cuts through a group of tied values is
    imputed once per tie order; the others are imputed once.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    n_images, _, height, width = images.shape
    pixels = height * width
    device = images.device
    counts = torch.tensor([int(np.floor(q * pixels / 100 + 0.5)) for q in percentiles], dtype=torch.long, device=device)
    if len(counts) and (counts.min() < 0 or counts.max() >= pixels):
        raise ValueError(f"percentiles must remove at least 0 and fewer than all pixels, got {tuple(percentiles)}")
    ranked = maps if order == "morf" else -maps
    ranks = _ranks(tie_broken_order(ranked, orders, seed))
    cuts = _cuts_a_tie(ranked, counts)
    first = torch.nonzero(torch.ones(1, n_images, len(counts), dtype=torch.bool, device=device))
    others = torch.nonzero(cuts[None].expand(orders - 1, -1, -1))
    others[:, 0] += 1
    jobs = torch.cat([first, others])
    generator = torch.Generator().manual_seed(seed)
    sign = signs(classes, images)
    probs = []
    with evaluating(model):
        original = _probabilities(model, images, sign, batch_size)
        for start in range(0, len(jobs), batch_size):
            o, b, s = jobs[start : start + batch_size].unbind(1)
            removed = (ranks[o, b] < counts[s][:, None]).view(-1, height, width)
            imputed = noisy_linear_imputation(images[b], removed, noise, generator)
            probs.append(_probabilities(model, imputed, sign[b], batch_size))
    job_probs = torch.cat(probs) if probs else images.new_zeros(0)
    curves = images.new_empty(orders, n_images, len(counts))
    n_first = len(first)
    curves[:] = job_probs[:n_first].view(1, n_images, len(counts))
    o, b, s = others.unbind(1)
    curves[o, b, s] = job_probs[n_first:]
    curve = curves[0] + (curves - curves[0]).mean(dim=0)  # exact where every order agrees
    return Road(curve.mean(dim=1), curve, counts.to(images.dtype) / pixels, original)
