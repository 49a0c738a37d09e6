"""Measuring explanations: localisation against boxes, faithfulness, sanity checks, consistency, and their intervals.

Maps are non-negative tensors of shape (B, H, W) (a single (H, W) map works wherever a batch does, giving 0-d
results), normalised per image to [0, 1] as :mod:`cxrexplain.explain.attributions` and the CAM family produce them.
Masks are boolean tensors of the same shape. Per-image results are tensors of shape (B,) on the maps' device; tables
(randomisation, summaries) are pandas DataFrames.

Localisation: :func:`box_mask`, :func:`pointing_game`, :func:`energy_inside`, :func:`iou_iobb`,
:func:`accuracy_at_iobb`, :func:`chance_level`. Faithfulness: :func:`deletion_insertion`, :func:`confidence_change`.
Sanity check: :func:`randomisation_blocks`, :func:`cascading_randomisation`. Consistency across architectures:
:func:`rank_correlation`, :func:`top_region_iou`. Statistics: :func:`bootstrap_ci`, :func:`summarise`, :func:`outcomes`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from cxrexplain.explain.attributions import BLACK, evaluating, seeded, signs

IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
"""The T(IoBB) levels of ChestX-ray8's localisation table (Wang et al. 2017, Table 3)."""

OUTCOMES: tuple[str, ...] = ("TP", "FN", "FP", "TN")

ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain_fn(model, images (B, 1, H, W), classes (B,)) -> maps (B, H, W)``."""

Baseline = Literal["mean", "blur", "black"] | float


# --------------------------------------------------------------------------------------------------- localisation


def box_mask(
    boxes: Iterable[Sequence[float]], height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The union of ``boxes`` (each ``[x, y, w, h]`` in pixel coordinates) as a bool mask of shape (height, width).

    Pixel ``(i, j)`` (row ``i``, column ``j``) covers ``[j, j+1] × [i, i+1]``; it is inside a box when its centre
    ``(j + 0.5, i + 0.5)`` lies in the closed box ``[x, x + w] × [y, y + h]``. A box with ``w`` or ``h`` ≤ 0 covers
    nothing; no boxes (a No-Finding image) gives an all-False mask.
    """
    cols = torch.arange(width, device=device, dtype=torch.float64) + 0.5
    rows = torch.arange(height, device=device, dtype=torch.float64) + 0.5
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    for box in boxes:
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            continue
        inside_cols = (cols >= x) & (cols <= x + w)
        inside_rows = (rows >= y) & (rows <= y + h)
        mask |= inside_rows[:, None] & inside_cols[None, :]
    return mask


def box_masks(
    boxes: Sequence[Iterable[Sequence[float]]], height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """:func:`box_mask` for each image's box list: a bool tensor of shape (B, height, width)."""
    if len(boxes) == 0:
        return torch.zeros(0, height, width, dtype=torch.bool, device=device)
    return torch.stack([box_mask(b, height, width, device) for b in boxes])


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Hit (True) when the map's maximum lies inside the mask (Zhang et al. 2016), per image: bool of shape (B,).

    ``hit = mask[argmax map]``. Ties: the first maximal pixel in row-major order (``torch.argmax``), so a constant map
    points at pixel (0, 0). An image without boxes is never a hit: score the game on images that have boxes.
    """
    flat_maps, flat_masks = maps.flatten(-2), masks.flatten(-2)
    index = flat_maps.argmax(dim=-1, keepdim=True)
    return flat_masks.gather(-1, index).squeeze(-1)


def energy_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the map's energy inside the mask (energy-based pointing game, Wang et al. 2020): shape (B,).

    ``E = Σ map · mask / Σ map``; 0 where the map sums to 0.
    """
    total = maps.sum(dim=(-2, -1))
    inside = (maps * masks).sum(dim=(-2, -1))
    return torch.where(
        total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total)
    )


def binarise(maps: torch.Tensor, level: float = 0.5, region: Literal["pixels", "boxes"] = "pixels") -> torch.Tensor:
    """The predicted region of each map: ``map ≥ level · max(map)``, bool of shape (B, H, W); empty for a zero map.

    On maps min-max normalised to [0, 1] (max 1) this is ``map ≥ level``. ``region="boxes"`` replaces the region by
    the union of the bounding boxes of its connected components (8-connectivity), as ChestX-ray8 turns heatmaps
    into boxes.
    """
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    pred = (maps >= level * peak) & (peak > 0)
    if region == "pixels":
        return pred
    if region != "boxes":
        raise ValueError(f"region must be 'pixels' or 'boxes', got {region!r}")
    flat = pred.reshape(-1, *pred.shape[-2:]).cpu().numpy()
    out = np.zeros_like(flat)
    for k, image in enumerate(flat):
        labels, _ = ndimage.label(image, structure=np.ones((3, 3), dtype=bool))
        for found in ndimage.find_objects(labels):
            if found is not None:
                out[k][found] = True
    return torch.from_numpy(out).reshape(pred.shape).to(maps.device)


def iou_iobb(
    maps: torch.Tensor, masks: torch.Tensor, level: float = 0.5, region: Literal["pixels", "boxes"] = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and IoBB of the binarised map against the box mask, per image: two float tensors of shape (B,).

    With ``P = binarise(map, level, region)`` (see :func:`binarise`) and ``G`` the box mask:
    ``IoU = |P ∩ G| / |P ∪ G|`` and ``IoBB = |P ∩ G| / |P|`` (intersection over the *detected* region, ChestX-ray8's
    "intersection over the detected B-Box area ratio"); each is 0 when its denominator is empty.

    ChestX-ray8 (Wang et al. 2017) binarises heatmaps at fixed intensity levels, covers the isolated regions with
    boxes and counts a localisation correct when IoBB exceeds T(IoBB) (see :func:`accuracy_at_iobb`). Here the level
    is a fraction of each map's maximum (default 0.5: the region where the map is at least half its peak), the
    region is the pixels themselves unless ``region="boxes"``, and each image is scored against the union of its
    boxes (the paper counts per box).
    """
    pred = binarise(maps, level, region)
    gt = masks.bool()
    inter = (pred & gt).sum(dim=(-2, -1)).to(torch.float32)
    union = (pred | gt).sum(dim=(-2, -1)).to(torch.float32)
    area = pred.sum(dim=(-2, -1)).to(torch.float32)
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    iobb = torch.where(area > 0, inter / area.clamp_min(1), torch.zeros_like(inter))
    return iou, iobb


def accuracy_at_iobb(
    iobb: torch.Tensor | np.ndarray | Sequence[float], thresholds: Sequence[float] = IOBB_THRESHOLDS
) -> dict[float, float]:
    """Localisation accuracy at T(IoBB): the share of images whose IoBB ≥ T, for each T in ``thresholds``.

    ``acc(T) = #{i : IoBB_i ≥ T} / n``. This is what ChestX-ray8 reports per disease at T = 0.1, 0.25, 0.5, 0.75, 0.9
    (for Pneumonia: 0.75, 0.56, 0.38, 0.26, 0.24 — there per ground-truth box). NaN for no images.
    """
    values = np.asarray(iobb.cpu() if isinstance(iobb, torch.Tensor) else iobb, dtype=np.float64).ravel()
    if values.size == 0:
        return {float(t): float("nan") for t in thresholds}
    return {float(t): float(np.mean(values >= t)) for t in thresholds}


def chance_level(masks: torch.Tensor) -> torch.Tensor:
    """Share of the image area inside the boxes, per image: ``|G| / (H · W)``, float of shape (B,).

    The expected pointing-game hit rate of a map whose argmax is uniformly random (the game's chance level).
    """
    return masks.to(torch.float32).mean(dim=(-2, -1))


# ---------------------------------------------------------------------------------------------------- faithfulness


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


class DeletionInsertion(NamedTuple):
    """Per-image deletion and insertion AUCs (B,), the curves (B, steps + 1), and the fractions they are taken at."""

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
) -> DeletionInsertion:
    """Deletion and insertion AUCs (Petsiuk et al. 2018, RISE) of the explained class's probability.

    Pixels are ranked by decreasing map value (ties: lower row-major index first). At step ``k = 0 … steps`` the top
    ``n_k = round(k · HW / steps)`` pixels are *deleted* (set to the reference image, see :func:`reference_images`,
    default each image's mean) or *inserted* (copied from the image into the reference). The curve is
    ``p_k = sigmoid(±logit)`` of the class being explained; the AUC is the trapezoid rule over the fraction
    ``f_k = n_k / HW`` from 0 to 1. A faithful map has a low deletion AUC and a high insertion AUC.

    Every step image of a chunk of images is built at once and goes through the model ``batch_size`` images at a
    time, in eval mode and without gradients.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n_images, _, height, width = images.shape
    pixels = height * width
    k = torch.arange(steps + 1, device=images.device)
    counts = (k * pixels + steps // 2) // steps  # round(k · HW / steps), exact in integers
    fractions = counts.to(images.dtype) / pixels
    sign = signs(classes, images)
    per_chunk = max(1, batch_size // (2 * (steps + 1)))
    deletion_curves, insertion_curves = [], []
    with evaluating(model):
        for start in range(0, n_images, per_chunk):
            part = slice(start, min(start + per_chunk, n_images))
            x = images[part]
            ref = reference_images(x, baseline)
            order = maps[part].reshape(len(x), pixels).argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=x.device).expand_as(order))
            removed = (rank[:, None, :] < counts[None, :, None]).view(len(x), steps + 1, 1, height, width)
            xs, refs = x[:, None], ref[:, None]
            deleted = torch.where(removed, refs, xs)
            inserted = torch.where(removed, xs, refs)
            batch = torch.cat([deleted, inserted], dim=1).reshape(-1, 1, height, width)
            probs = _probabilities(model, batch, sign[part].repeat_interleave(2 * (steps + 1)), batch_size)
            probs = probs.view(len(x), 2, steps + 1)
            deletion_curves.append(probs[:, 0])
            insertion_curves.append(probs[:, 1])
    deletion_curve = torch.cat(deletion_curves)
    insertion_curve = torch.cat(insertion_curves)
    return DeletionInsertion(
        deletion=torch.trapezoid(deletion_curve, fractions, dim=1),
        insertion=torch.trapezoid(insertion_curve, fractions, dim=1),
        deletion_curve=deletion_curve,
        insertion_curve=insertion_curve,
        fractions=fractions,
    )


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

    The map multiplies the image in pixel space: ``x̃ = r + map · (x − r)`` with ``r`` = :data:`BLACK` (in normalised
    units, so a pixel keeps ``map`` times its [0, 1] intensity). With ``p = sigmoid(±logit(x))`` and ``o`` the same on
    ``x̃``: ``change = o − p``, ``drop = max(0, p − o) / p`` (the mean over images × 100 is "Average Drop %") and
    ``increase = o > p`` (the share of images is "Increase in Confidence").
    """
    sign = signs(classes, images)
    masked_images = reference + maps[:, None].to(images.dtype) * (images - reference)
    with evaluating(model):
        both = _probabilities(model, torch.cat([images, masked_images]), sign.repeat(2), batch_size)
    original, masked = both[: len(images)], both[len(images) :]
    drop = (original - masked).clamp_min(0) / original.clamp_min(torch.finfo(original.dtype).tiny)
    return ConfidenceChange(original, masked, masked - original, drop, masked > original)


# --------------------------------------------------------------------------------------------------- sanity check


def randomisation_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of a :class:`~cxrexplain.models.backbones.Classifier`, output first, for cascading randomisation.

    - always first: ``head`` (pooling, the two linear layers);
    - ResNet-50: ``layer4``, ``layer3``, ``layer2``, ``layer1``, ``stem`` (conv1 + bn1);
    - DenseNet-121 (a stage is its dense block with the transition that feeds it): ``denseblock4`` (transition3,
      denseblock4, norm5), ``denseblock3`` (transition2, denseblock3), ``denseblock2`` (transition1, denseblock2),
      ``denseblock1``, ``stem`` (conv0 + norm0);
    - any other ``features``: its children with parameters, last first, named ``features.<child>``.

    Every parameter of the model belongs to exactly one block.
    """
    head, features = getattr(model, "head", None), getattr(model, "features", None)
    if not isinstance(head, nn.Module) or not isinstance(features, nn.Module):
        raise ValueError("randomisation_blocks expects a model with `features` and `head` (a Classifier)")
    blocks: list[tuple[str, nn.Module]] = [("head", head)]
    arch = getattr(model, "arch", "")
    if arch == "resnet50":
        f = features
        blocks += [("layer4", f[7]), ("layer3", f[6]), ("layer2", f[5]), ("layer1", f[4])]
        blocks.append(("stem", nn.ModuleList([f[0], f[1]])))
    elif arch == "densenet121":
        d = features[0]
        blocks += [
            ("denseblock4", nn.ModuleList([d.transition3, d.denseblock4, d.norm5])),
            ("denseblock3", nn.ModuleList([d.transition2, d.denseblock3])),
            ("denseblock2", nn.ModuleList([d.transition1, d.denseblock2])),
            ("denseblock1", d.denseblock1),
            ("stem", nn.ModuleList([d.conv0, d.norm0])),
        ]
    else:
        children = [(n, c) for n, c in features.named_children() if any(True for _ in c.parameters())]
        blocks += [(f"features.{n}", c) for n, c in reversed(children)]
    return blocks


def reinitialise(module: nn.Module, seed: int) -> None:
    """Call ``reset_parameters()`` on every submodule that has one, drawing from ``seed`` (global RNG untouched).

    Convolutions and linear layers get fresh random weights (PyTorch's default initialisation); BatchNorm layers
    get weight 1, bias 0 and fresh running statistics (mean 0, variance 1).
    """
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with seeded(seed, device), torch.no_grad():
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()


def cascading_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    explain_fn: ExplainFn,
    seed: int = 0,
) -> pd.DataFrame:
    """Cascading model-parameter randomisation (Adebayo et al. 2018): do the maps depend on the learned weights?

    Maps of the trained model are compared with the maps of a deep copy whose :func:`randomisation_blocks` are
    re-initialised cumulatively from the head down (block ``k`` with seed ``seed + k``). Step 0 (block ``none``)
    randomises nothing and checks that ``explain_fn`` is deterministic. Returns a long table with one row per step
    and image: ``step``, ``block`` (the last block randomised), ``image`` (index in the batch), ``spearman`` (Spearman
    rank correlation with the original map, :func:`rank_correlation`). A method passes when the correlation falls as
    blocks are randomised; one that stays near 1 (e.g. an edge detector) does not depend on the model. Per-step means:
    ``table.groupby(["step", "block"]).spearman.mean()`` or :func:`summarise` with ``by="block"``.
    """
    c = torch.as_tensor(classes, device=images.device)
    original = explain_fn(model, images, c).detach()
    copy_ = copy.deepcopy(model)
    steps: list[tuple[str, nn.Module | None]] = [("none", None), *randomisation_blocks(copy_)]
    rows = []
    for step, (name, block) in enumerate(steps):
        if block is not None:
            reinitialise(block, seed + step)
        rho = rank_correlation(original, explain_fn(copy_, images, c).detach()).cpu().numpy()
        rows += [{"step": step, "block": name, "image": i, "spearman": float(value)} for i, value in enumerate(rho)]
    return pd.DataFrame(rows, columns=["step", "block", "image", "spearman"])


# ------------------------------------------------------------------------------------------------------ consistency


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1 … N along the last dimension, ties given their average rank (``scipy.stats.rankdata``'s default)."""
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

    ``ρ = Pearson(rank(a), rank(b))`` over the H·W pixels, ties given average ranks (as ``scipy.stats.spearmanr``).
    NaN when either map is constant (its ranks have no variance).
    """
    ra = average_ranks(maps_a.flatten(-2).to(torch.float64))
    rb = average_ranks(maps_b.flatten(-2).to(torch.float64))
    ra = ra - ra.mean(dim=-1, keepdim=True)
    rb = rb - rb.mean(dim=-1, keepdim=True)
    denominator = (ra.square().sum(dim=-1) * rb.square().sum(dim=-1)).sqrt()
    return (ra * rb).sum(dim=-1) / denominator  # 0 / 0 = NaN for a constant map


def top_region(maps: torch.Tensor, top: float = 0.2) -> torch.Tensor:
    """The ``k = max(1, round(top · H·W))`` highest pixels of each map (ties: lower row-major index first): bool."""
    flat = maps.flatten(-2)
    k = max(1, round(top * flat.shape[-1]))
    order = flat.argsort(dim=-1, descending=True, stable=True)[..., :k]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, order, True).view(maps.shape)


def top_region_iou(maps_a: torch.Tensor, maps_b: torch.Tensor, top: float = 0.2) -> torch.Tensor:
    """IoU of the two maps' top-``top`` regions (:func:`top_region`), per image: ``|A ∩ B| / |A ∪ B|``, shape (B,)."""
    a, b = top_region(maps_a, top), top_region(maps_b, top)
    inter = (a & b).sum(dim=(-2, -1)).to(torch.float32)
    union = (a | b).sum(dim=(-2, -1)).to(torch.float32)
    return inter / union


# ------------------------------------------------------------------------------------------------------- statistics


def bootstrap_ci(
    values: np.ndarray | Sequence[float] | torch.Tensor,
    stat: Callable[[np.ndarray], float] = np.mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(stat(values), low, high)``: the statistic and its percentile-bootstrap ``1 − alpha`` interval.

    NaN values are dropped first (an undefined per-image score does not count). ``n`` resamples of the remaining
    ``m`` values, drawn with replacement from ``numpy.random.default_rng(seed)`` (deterministic per seed); ``low`` and
    ``high`` are the ``alpha/2`` and ``1 − alpha/2`` quantiles (linear interpolation) of the resampled statistics.
    No values left: ``(nan, nan, nan)``. Booleans count as 0/1.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[~np.isnan(data)]
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    estimate = float(stat(data))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(n, data.size))
    if stat is np.mean:  # vectorised: the explain and report stages call this thousands of times
        resampled = data[indices].mean(axis=1)
    else:
        resampled = np.array([stat(data[row]) for row in indices], dtype=np.float64)
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return estimate, float(low), float(high)


def summarise(
    per_image: pd.DataFrame,
    by: str | None = "outcome",
    metrics: Sequence[str] | None = None,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean and percentile-bootstrap CI of each metric, over all images (group ``all``) and per value of ``by``.

    ``metrics`` defaults to the numeric and boolean columns other than ``by``. Returns one row per (group, metric):
    ``group``, ``metric``, ``n`` (non-NaN values), ``mean``, ``low``, ``high`` (:func:`bootstrap_ci` with ``np.mean``).
    Groups: ``all``, then the values of ``by`` in the order of :data:`OUTCOMES` where they are outcomes, else sorted.
    """
    if metrics is None:
        metrics = [
            c
            for c in per_image.columns
            if c != by and (pd.api.types.is_numeric_dtype(per_image[c]) or pd.api.types.is_bool_dtype(per_image[c]))
        ]
    groups: list[tuple[str, pd.DataFrame]] = [("all", per_image)]
    if by is not None and by in per_image.columns:
        present = list(pd.unique(per_image[by]))
        ordered = [o for o in OUTCOMES if o in present] + sorted((p for p in present if p not in OUTCOMES), key=str)
        groups += [(str(value), per_image[per_image[by] == value]) for value in ordered]
    rows = []
    for group, frame in groups:
        for metric in metrics:
            values = frame[metric].to_numpy(dtype=np.float64, na_value=np.nan)
            mean, low, high = bootstrap_ci(values, n=n, alpha=alpha, seed=seed)
            rows.append(
                {
                    "group": group,
                    "metric": metric,
                    "n": int(np.count_nonzero(~np.isnan(values))),
                    "mean": mean,
                    "low": low,
                    "high": high,
                }
            )
    return pd.DataFrame(rows, columns=["group", "metric", "n", "mean", "low", "high"])


def outcomes(
    labels: np.ndarray | Sequence[int], probs: np.ndarray | Sequence[float], threshold: float = 0.5
) -> np.ndarray:
    """``"TP"``/``"FP"``/``"FN"``/``"TN"`` per image: predicted positive when ``prob > threshold``.

    The strict inequality is torchmetrics' (so the counts match the classification metrics at the same threshold).
    """
    y = np.asarray(labels).astype(bool)
    predicted = np.asarray(probs, dtype=np.float64) > threshold
    return np.where(y, np.where(predicted, "TP", "FN"), np.where(predicted, "FP", "TN"))
