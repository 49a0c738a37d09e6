"""Localisation: does the map point at the annotated finding?

Maps are non-negative float tensors of shape (B, H, W), usually min-max normalised per image to [0, 1] (a constant
map is then all zeros); a single (H, W) map works wherever a batch does and gives 0-d results. Masks are boolean
tensors of the same shape, boxes ``[x, y, w, h]`` in pixels. Per-image results are tensors of shape (B,) on the maps'
device. An image without boxes has an empty mask and scores 0 on every measure here: score localisation on images
that have boxes (Quantus returns NaN for an empty mask).

- Masks: :func:`box_mask`, :func:`box_masks`.
- Pointing: :func:`pointing_game` (with a tolerance in pixels, :func:`within_reach`), :func:`cell_pointing` (coarse
  CAM cells, :func:`cell_centres`), and two baselines a method must beat: :func:`chance_level` (a uniformly random
  point) and :func:`centre_prior` (a map that peaks at the image centre, :func:`centre_pixels`; many findings lie
  mid-lung).
- Mass and rank: :func:`energy_inside`, :func:`top_k_intersection`.
- Regions: :func:`binarise`, :func:`iou_iobb`, :func:`accuracy_at_iobb` (image level); CheXlocalize's Otsu
  segmentation :func:`otsu_threshold`, :func:`otsu_binarise`, :func:`otsu_iou`; ChestX-ray8's box-level protocol
  :func:`detected_boxes`, :func:`iobb_matrix`, :func:`box_level` (:class:`BoxLevel`), :func:`box_level_table`.

Ties. A pointing game on a map with several maximal pixels scores the *expected* hit when one of them is chosen
uniformly at random (the share of maximal pixels that hit), so it is exactly 0 or 1 without ties and never depends on
the pixels' order in memory; a constant map points nowhere and is a miss. Rankings (:func:`top_k_intersection`) break
ties at random with :func:`~cxrexplain.explain.measures.ordering.tie_broken_order` and average over orders.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from cxrexplain.explain.measures.ordering import TIE_ORDERS, tie_broken_order
from cxrexplain.explain.measures.registry import IOBB_THRESHOLDS  # the registry names a column per level

Box = list[float]
"""``[x, y, w, h]`` in pixels: the box ``[x, x + w] × [y, y + h]``."""

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for scipy.ndimage.label


# ------------------------------------------------------------------------------------------------------- helpers


def _batched(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """``x`` as (B, H, W) and whether it was a single (H, W) map (then results are squeezed back to 0-d)."""
    if x.dim() == 2:
        return x.unsqueeze(0), True
    if x.dim() == 3:
        return x, False
    raise ValueError(f"{name} must have shape (B, H, W) or (H, W), got {tuple(x.shape)}")


def _pair(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Maps and masks as (B, H, W) of the same shape, masks boolean on the maps' device."""
    if maps.shape != masks.shape:
        raise ValueError(f"maps and masks must have the same shape, got {tuple(maps.shape)} and {tuple(masks.shape)}")
    m, single = _batched(maps, "maps")
    g, _ = _batched(masks, "masks")
    return m, g.to(device=m.device, dtype=torch.bool), single


def _out(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values.squeeze(0) if single else values


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def _check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not tolerance >= 0 or math.isinf(tolerance):  # also rejects NaN
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance}")
    return tolerance


def within_reach(masks: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """The pixels within Euclidean distance ``tolerance`` of a mask pixel (pixel centres): bool, shape of ``masks``.

    ``R = {p : ∃ q ∈ G, ‖p − q‖₂ ≤ tolerance}``, i.e. the mask dilated by a disk of radius ``tolerance`` (offsets
    ``(di, dj)`` with ``di² + dj² ≤ tolerance²``); ``tolerance = 0`` gives the mask itself. A point "hits with
    tolerance" when it lies in ``R`` (Zhang et al. 2016, "Top-down neural attention by excitation backprop", use 15
    pixels at 224 × 224).
    """
    tolerance = _check_tolerance(tolerance)
    g, single = _batched(masks, "masks")
    g = g.bool()
    radius = min(math.floor(tolerance), max(g.shape[-2], g.shape[-1]) - 1)
    if radius < 1 or g.numel() == 0:
        return _out(g, single)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    disk = (offsets[:, None].square() + offsets[None, :].square()) <= tolerance**2
    kernel = disk.to(device=g.device, dtype=torch.float32)[None, None]
    reached = F.conv2d(g[:, None].to(torch.float32), kernel, padding=radius)[:, 0] > 0.5
    return _out(reached, single)


def _point_share(is_max: torch.Tensor, hit: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """Share of the maximal points that hit, per image; 0 for a constant map. Both (B, ...) bool."""
    dims = tuple(range(1, is_max.dim()))
    count = is_max.sum(dim=dims).to(torch.float64)
    good = (is_max & hit).sum(dim=dims).to(torch.float64)
    share = good / count.clamp_min(1)
    return torch.where(constant, torch.zeros_like(share), share)


# ----------------------------------------------------------------------------------------------------------- masks


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


# -------------------------------------------------------------------------------------------------------- pointing


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Pointing game (Zhang et al. 2016): does the map's maximum lie on the finding? Float of shape (B,).

    With ``M = {p : map_p = max map}`` the maximal pixels and ``R`` the mask dilated by ``tolerance`` pixels
    (:func:`within_reach`): ``hit = |M ∩ R| / |M|``, the expected hit when one maximal pixel is chosen uniformly at
    random; exactly 0 or 1 when the maximum is unique. A constant map (e.g. all zeros) points nowhere: 0. An empty
    mask: 0.

    Quantus 0.6 ``PointingGame`` counts a hit when *any* maximal pixel is inside (so a two-way tie with one inside
    scores 1, not 0.5, and a constant map scores 1 on any non-empty mask) and has no tolerance; the project follows
    Zhang et al.'s single point, made independent of memory order by averaging over the tied maxima. The previous
    ``scores.pointing_game`` took the first maximum in row-major order, so a constant map pointed at pixel (0, 0).
    """
    m, g, single = _pair(maps, masks)
    flat = m.flatten(1)
    peak = flat.amax(dim=1, keepdim=True)
    constant = (flat == peak).all(dim=1)
    hits = _point_share(flat == peak, within_reach(g, tolerance).flatten(1), constant)
    return _out(hits.to(_float_dtype(maps)), single)


def cell_centres(h: int, w: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (h,) and columns (w,) of the full-size pixels at the centres of a coarse h × w grid's cells.

    Cell ``(i, j)`` covers ``[j·W/w, (j+1)·W/w) × [i·H/h, (i+1)·H/h)``; its centre is the pixel
    ``(floor((i + 0.5)·H/h), floor((j + 0.5)·W/w))`` (clamped to the image), as ``evaluate.cell_pointing``.
    """
    rows = ((torch.arange(h, dtype=torch.float64) + 0.5) * height / h).floor().long().clamp(max=height - 1)
    cols = ((torch.arange(w, dtype=torch.float64) + 0.5) * width / w).floor().long().clamp(max=width - 1)
    return rows, cols


def cell_pointing(raw: torch.Tensor, masks: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Pointing game of coarse maps: is the centre of the maximal cell of ``raw`` (B, h, w) on ``masks`` (B, H, W)?

    A CAM's maximum is a cell of the feature grid, upsampled to a plateau of many tied pixels; the game asks whether
    the cell's centre (:func:`cell_centres`) lies within ``tolerance`` pixels of the mask. With ``C`` the maximal cells
    and ``R`` the dilated mask (:func:`within_reach`): ``hit = |{c ∈ C : centre(c) ∈ R}| / |C|``, float of shape (B,).
    Same conventions as :func:`pointing_game`: the expected hit over tied maximal cells, 0 for a constant map or an
    empty mask. (``evaluate.cell_pointing`` took the first maximal cell in row-major order.)
    """
    r, single = _batched(raw, "raw")
    g, _ = _batched(masks, "masks")
    if r.shape[0] != g.shape[0]:
        raise ValueError(f"raw and masks must hold as many images, got {r.shape[0]} and {g.shape[0]}")
    h, w = r.shape[-2:]
    height, width = g.shape[-2:]
    rows, cols = cell_centres(h, w, height, width)
    reach = within_reach(g.to(device=r.device, dtype=torch.bool), tolerance)
    at_centres = reach[:, rows.to(r.device)][:, :, cols.to(r.device)]  # (B, h, w)
    flat = r.flatten(1)
    peak = flat.amax(dim=1, keepdim=True)
    constant = (flat == peak).all(dim=1)
    hits = _point_share(flat == peak, at_centres.flatten(1), constant)
    return _out(hits.to(_float_dtype(raw)), single)


def centre_pixels(height: int, width: int) -> tuple[list[int], list[int]]:
    """The rows and columns of the pixels nearest the image centre ``(W/2, H/2)``.

    One row ``(H − 1)/2`` when ``H`` is odd, two rows ``H/2 − 1, H/2`` when it is even (the centre is then on their
    shared edge); columns likewise. An even × even image has four centre pixels, all at distance ``√2/2``.
    """
    rows = [(height - 1) // 2] if height % 2 else [height // 2 - 1, height // 2]
    cols = [(width - 1) // 2] if width % 2 else [width // 2 - 1, width // 2]
    return rows, cols


def centre_prior(masks: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Pointing game of a map that peaks at the image centre, per image: float of shape (B,).

    A fixed baseline beside :func:`chance_level`: many findings lie mid-lung, so a method should beat this map, not
    only a random point. The map is any map symmetric about the geometric centre ``(W/2, H/2)`` that decreases with
    the distance to it (e.g. a centred Gaussian); its maxima are the :func:`centre_pixels` (1, 2 or 4 of them), so by
    :func:`pointing_game`'s tie rule ``hit = |centre pixels ∩ R| / |centre pixels|`` with ``R`` the mask dilated by
    ``tolerance`` pixels. For a 224 × 224 image: the mean over pixels (111, 111), (111, 112), (112, 111), (112, 112).
    """
    g, single = _batched(masks, "masks")
    rows, cols = centre_pixels(*g.shape[-2:])
    reach = within_reach(g.bool(), tolerance)
    at_centre = reach[:, rows][:, :, cols].flatten(1)
    return _out(at_centre.to(torch.float32).mean(dim=1), single)


def chance_level(masks: torch.Tensor) -> torch.Tensor:
    """Share of the image area inside the boxes, per image: ``|G| / (H · W)``, float of shape (B,).

    The expected pointing-game hit rate of a map whose argmax is uniformly random (the game's chance level).
    """
    return masks.to(torch.float32).mean(dim=(-2, -1))


# ------------------------------------------------------------------------------------------------- mass and rank


def energy_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the map's energy inside the mask (energy-based pointing game, Wang et al. 2020): shape (B,).

    ``E = Σ map · mask / Σ map``; 0 where the map sums to 0. Equal to Quantus' ``RelevanceMassAccuracy`` (Arras et
    al. 2022) with ``normalise=False, abs=False`` on non-negative maps (Quantus gives NaN for an empty mask or a zero
    map, 0 here).
    """
    total = maps.sum(dim=(-2, -1))
    inside = (maps * masks).sum(dim=(-2, -1))
    return torch.where(
        total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total)
    )


def top_k_intersection(
    maps: torch.Tensor, masks: torch.Tensor, k: int, orders: int = TIE_ORDERS, seed: int = 0
) -> torch.Tensor:
    """Share of the map's ``k`` highest pixels inside the mask (Theiner et al. 2022), per image: float of shape (B,).

    ``TKI = (1/O) Σ_o |top_k^o(map) ∩ G| / k`` over ``O = orders`` orderings of the pixels by decreasing value whose
    ties are broken at random (:func:`~cxrexplain.explain.measures.ordering.tie_broken_order` with ``seed``); exact
    (the same for every order) when the k-th and (k+1)-th values differ. A constant map scores 0, as in
    :func:`pointing_game` (it singles out no pixels); an empty mask scores 0.

    Quantus 0.6 ``TopKIntersection`` (``concept_influence=False``) sorts with ``np.argsort(-a)`` (ties in an
    unspecified order, one ordering), requires ``k < H·W`` and gives NaN for an empty mask; it does not treat constant
    maps apart. Values agree on maps without ties at the k-th value.
    """
    m, g, single = _pair(maps, masks)
    n = m.shape[-2] * m.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, H·W = {n}], got {k!r}")
    flat = m.flatten(1)
    top = tie_broken_order(flat, orders, seed)[..., :k]  # (O, B, k)
    inside = g.flatten(1).unsqueeze(0).expand(top.shape[0], -1, -1).gather(-1, top)
    share = inside.to(torch.float64).mean(dim=(0, 2))
    constant = (flat == flat[:, :1]).all(dim=1)
    share = torch.where(constant, torch.zeros_like(share), share)
    return _out(share.to(_float_dtype(maps)), single)


# -------------------------------------------------------------------------------------------- regions (image level)


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
        labels, _ = ndimage.label(image, structure=_EIGHT)
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
    boxes (the paper counts per box: :func:`box_level`).
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
    (for Pneumonia: 0.75, 0.56, 0.38, 0.26, 0.24 — there per ground-truth box, see :func:`box_level`). NaN for no
    images.
    """
    values = np.asarray(iobb.cpu() if isinstance(iobb, torch.Tensor) else iobb, dtype=np.float64).ravel()
    if values.size == 0:
        return {float(t): float("nan") for t in thresholds}
    return {float(t): float(np.mean(values >= t)) for t in thresholds}


# ------------------------------------------------------------------------------------- CheXlocalize (Otsu, mIoU)


def _levels(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CheXlocalize's 8-bit map ``u = uint8(255 · (m − min) / (max − min))`` (B, N) long, and the constant flags."""
    flat = maps.flatten(1).to(torch.float32)
    low = flat.amin(dim=1, keepdim=True)
    shifted = flat - low
    span = shifted.amax(dim=1, keepdim=True)
    constant = span[:, 0] <= 0
    scaled = 255 * (shifted / torch.where(span > 0, span, torch.ones_like(span)))
    return scaled.floor().clamp(0, 255).long(), constant  # np.uint8 of a non-negative float truncates


def otsu_threshold(maps: torch.Tensor) -> torch.Tensor:
    """Per-image Otsu threshold on CheXlocalize's 8-bit map, on the 0-255 scale: float of shape (B,).

    As CheXlocalize (Saporta et al. 2022, ``cam_to_segmentation``): the map is scaled to
    ``u = floor(255 · (m − min m) / (max m − min m))`` (float32, as ``np.uint8`` of its torch computation) and the
    threshold is the ``t ∈ {0 … 255}`` that maximises the between-class variance of the classes ``u ≤ t`` and
    ``u > t`` (Otsu 1979): ``σ²_B(t) = (μ_T ω(t) − μ(t))² / (ω(t) (1 − ω(t)))`` with ``ω, μ`` the cumulative share
    and first moment of the 256-bin histogram, over the ``t`` that leave both classes non-empty; the first maximum
    (OpenCV's ``cv2.threshold(u, 0, 255, cv2.THRESH_OTSU)``, which also ``skimage.filters.threshold_otsu(u)``
    returns). No ``t`` with both classes non-empty (a map of one value, e.g. constant): 0, as OpenCV.
    """
    m, single = _batched(maps, "maps")
    u, _ = _levels(m)
    b, n = u.shape
    hist = torch.zeros(b, 256, dtype=torch.float64, device=u.device).scatter_add_(
        1, u, torch.ones_like(u, dtype=torch.float64)
    )
    counts = hist.cumsum(dim=1)
    levels = torch.arange(256, dtype=torch.float64, device=u.device)
    moment = (hist * levels).cumsum(dim=1) / max(n, 1)
    omega = counts / max(n, 1)
    mean = moment[:, -1:]
    valid = (counts > 0) & (counts < n)
    denominator = torch.where(valid, omega * (1 - omega), torch.ones_like(omega))
    sigma = torch.where(valid, (mean * omega - moment).square() / denominator, torch.zeros_like(omega))
    threshold = sigma.argmax(dim=1).to(torch.float32)  # the first maximum; 0 when no split is valid
    return _out(threshold, single)


def otsu_binarise(maps: torch.Tensor) -> torch.Tensor:
    """CheXlocalize's segmentation of each map: ``u > t`` with ``u`` the 8-bit map and ``t`` :func:`otsu_threshold`.

    Bool of shape (B, H, W); empty for a constant map. In map units (min-max normalised maps: ``min 0, max 1``) this
    is ``m ≥ min + (t + 1)/255 · (max − min)`` up to rounding. CheXlocalize first upsamples the map to the image size
    (bilinear); here the maps are already at the masks' size.
    """
    m, single = _batched(maps, "maps")
    u, constant = _levels(m)
    t = otsu_threshold(m).long()
    pred = (u > t[:, None]) & ~constant[:, None]
    return _out(pred.view(m.shape), single)


def otsu_iou(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of CheXlocalize's Otsu segmentation (:func:`otsu_binarise`) with the mask, per image: float of shape (B,).

    ``IoU = |P ∩ G| / |P ∪ G|``; the mean over images is CheXlocalize's mIoU (its hit rate is :func:`pointing_game`).
    0 when both are empty. CheXlocalize gives NaN for an empty ground truth and, with its default
    ``true_pos_only=True``, also for an empty prediction (here 0: a constant map finds nothing).
    """
    m, g, single = _pair(maps, masks)
    pred = otsu_binarise(m)
    inter = (pred & g).sum(dim=(-2, -1)).to(torch.float32)
    union = (pred | g).sum(dim=(-2, -1)).to(torch.float32)
    return _out(inter / union.clamp_min(1), single)


# ---------------------------------------------------------------------------------- ChestX-ray8 (box level)


def detected_boxes(maps: torch.Tensor, level: float = 0.5) -> list[list[Box]]:
    """The boxes a map detects, per image: ``[x, y, w, h]`` around each 8-connected component of ``binarise(map)``.

    ChestX-ray8 (Wang et al. 2017, Sec. 5.3) thresholds each heatmap and generates "B-Boxes to cover the isolated
    regions". Here the region is ``map ≥ level · max(map)`` (:func:`binarise`); a component spanning rows
    ``r0 … r1 − 1`` and columns ``c0 … c1 − 1`` gives the box ``[c0, r0, c1 − c0, r1 − r0]`` (integer pixel edges, so
    :func:`box_mask` of it is exactly its bounding rectangle of pixels). Components in ``scipy.ndimage.label`` order
    (row-major by their first pixel). A zero map detects nothing.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}")
    pred = binarise(maps, level).cpu().numpy()
    out: list[list[Box]] = []
    for image in pred:
        labels, _ = ndimage.label(image, structure=_EIGHT)
        boxes = []
        for found in ndimage.find_objects(labels):
            if found is not None:
                rows, cols = found
                x, y = cols.start, rows.start
                boxes.append([float(x), float(y), float(cols.stop - x), float(rows.stop - y)])
        out.append(boxes)
    return out


def iobb_matrix(detected: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> np.ndarray:
    """IoBB of every detected box against every ground-truth box: float64 of shape (D, G).

    ``IoBB(d, g) = area(d ∩ g) / area(d)``, with boxes as the continuous rectangles ``[x, x + w] × [y, y + h]`` (a
    ground-truth box need not sit on pixel edges). A detected box of zero area has IoBB 0.
    """
    d = np.asarray(detected, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(d[:, None, 0], g[None, :, 0])
    right = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2])
    top = np.maximum(d[:, None, 1], g[None, :, 1])
    bottom = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area = (d[:, 2] * d[:, 3])[:, None]
    return np.where(area > 0, inter / np.where(area > 0, area, 1.0), 0.0)


class BoxLevel(NamedTuple):
    """Per-image counts of ChestX-ray8's box-level protocol (:func:`box_level`).

    ``truth`` (B,) ground-truth boxes; ``detected`` (B,) detected boxes; ``hits`` (B, T) ground-truth boxes hit at
    each threshold; ``false_positives`` (B, T) detected boxes that hit no ground-truth box at each threshold;
    ``thresholds`` the T(IoBB) values, in column order. Long tensors on the CPU.
    """

    truth: torch.Tensor
    detected: torch.Tensor
    hits: torch.Tensor
    false_positives: torch.Tensor
    thresholds: tuple[float, ...]


def box_level(
    maps: torch.Tensor,
    gt_boxes: Sequence[Sequence[Sequence[float]]],
    level: float = 0.5,
    thresholds: Sequence[float] = IOBB_THRESHOLDS,
) -> BoxLevel:
    """ChestX-ray8's box-level localisation counts (Wang et al. 2017, Table 3), per image.

    The detected boxes ``D`` are :func:`detected_boxes` ``(maps, level)``; the ground truth ``G`` the image's boxes
    with ``w, h > 0`` (others cover nothing, as in :func:`box_mask`, and are not counted). At each threshold ``T``:
    a ground-truth box ``g`` is *hit* when some ``d ∈ D`` has ``IoBB(d, g) = |d ∩ g| / |d| ≥ T``
    (:func:`iobb_matrix`), and a detected box is a *false positive* when it hits no ground-truth box at ``T``. An
    image without boxes contributes its detections as false positives. Aggregate with :func:`box_level_table`.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}")
    if len(gt_boxes) != maps.shape[0]:
        raise ValueError(f"gt_boxes must hold one box list per image ({maps.shape[0]}), got {len(gt_boxes)}")
    levels = np.asarray(list(thresholds), dtype=np.float64)
    detected = detected_boxes(maps, level)
    n_truth, n_detected, hits, false_positives = [], [], [], []
    for found, boxes in zip(detected, gt_boxes, strict=True):
        truth = [list(b) for b in boxes if float(b[2]) > 0 and float(b[3]) > 0]
        iobb = iobb_matrix(found, truth)  # (D, G)
        passes = iobb[None] >= levels[:, None, None]  # (T, D, G)
        n_truth.append(len(truth))
        n_detected.append(len(found))
        hits.append(passes.any(axis=1).sum(axis=1))
        false_positives.append((~passes.any(axis=2)).sum(axis=1))
    width = len(levels)
    return BoxLevel(
        truth=torch.tensor(n_truth, dtype=torch.long),
        detected=torch.tensor(n_detected, dtype=torch.long),
        hits=torch.tensor(np.array(hits, dtype=np.int64).reshape(-1, width)),
        false_positives=torch.tensor(np.array(false_positives, dtype=np.int64).reshape(-1, width)),
        thresholds=tuple(float(t) for t in levels),
    )


def box_level_table(counts: BoxLevel | Sequence[BoxLevel]) -> pd.DataFrame:
    """ChestX-ray8's Table 3 from :func:`box_level` counts (one or several batches): one row per threshold.

    Columns: ``threshold``, ``images``, ``truth`` (ground-truth boxes), ``hits``, ``accuracy = hits / truth`` (NaN
    without ground-truth boxes), ``false_positives``, ``afp = false_positives / images`` (average false positives
    per image; NaN for no images).
    """
    parts = [counts] if isinstance(counts, BoxLevel) else list(counts)
    if not parts:
        raise ValueError("box_level_table needs at least one BoxLevel")
    thresholds = parts[0].thresholds
    if any(p.thresholds != thresholds for p in parts):
        raise ValueError("every BoxLevel must use the same thresholds")
    images = sum(len(p.truth) for p in parts)
    truth = sum(int(p.truth.sum()) for p in parts)
    hits = np.sum([p.hits.sum(dim=0).numpy() for p in parts], axis=0)
    false_positives = np.sum([p.false_positives.sum(dim=0).numpy() for p in parts], axis=0)
    rows = []
    for k, t in enumerate(thresholds):
        rows.append(
            {
                "threshold": t,
                "images": images,
                "truth": truth,
                "hits": int(hits[k]),
                "accuracy": float(hits[k] / truth) if truth else float("nan"),
                "false_positives": int(false_positives[k]),
                "afp": float(false_positives[k] / images) if images else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["threshold", "images", "truth", "hits", "accuracy", "false_positives", "afp"])
