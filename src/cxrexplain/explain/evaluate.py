"""Explain a set of images with every method and measure each explanation: the explain stage's library.

:func:`explain_images` takes a model and plain tensors (images, labels, boxes) and returns per-image tables and maps;
nothing here reads params, files or MLflow (the stage does). What it measures, per image and method:

- localisation, on images with boxes: the pointing game, the energy inside the boxes, IoU and IoBB of the map
  binarised at ``level`` · its maximum, and the chance level of the pointing game (the share of image area in boxes).
  For a CAM the map's maximum is a *cell* of the target layer; its point is the cell's centre in image coordinates
  (bilinear upsampling turns a border cell into a plateau out to the image edge, whose first pixel is an artefact).
- faithfulness, on the subset: deletion and insertion AUC, and the confidence change when the image is multiplied by
  its map;
- sanity, on the first ``sanity_images`` of the subset: cascading model-parameter randomisation, Spearman rank
  correlation of the maps per randomised block.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrexplain.explain import attributions, cam, scores

LOCALISATION = ("pointing", "energy", "iou", "iobb")
FAITHFULNESS = ("deletion", "insertion", "confidence_change", "confidence_rise")
MAPS_FILE = "maps.npz"  # explain/<arch>/: raw CAMs, written by the explain stage, read by the consistency stage
SANITY_PASS = 0.5  # a method passes when some randomisation step brings its mean Spearman correlation below this


@dataclass(frozen=True)
class ExplainSettings:
    """How to explain and measure (the stage fills it from ``params.explain``)."""

    cams: Sequence[str] = tuple(cam.CAM_METHODS)
    attributions: Sequence[str] = tuple(attributions.ATTRIBUTION_METHODS)
    batch_size: int = 16
    subset: int | None = None
    sanity_images: int = 32
    level: float = 0.5
    steps: int = 20
    baseline: str = "mean"
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    seed: int = 0


@dataclass
class Explained:
    """Everything :func:`explain_images` produced."""

    per_image: pd.DataFrame  # one row per (image, method): metrics, NaN where a metric does not apply
    sanity: pd.DataFrame  # method, step, block, image, spearman
    maps: dict[str, np.ndarray]  # method -> (N, H, W) float16 in [0, 1]; attribution methods: subset rows only
    raw: dict[str, np.ndarray]  # CAM method -> (N, h, w) float32 at the target layer's resolution
    subset: np.ndarray  # indices (into the images) of the subset


def parse_boxes(text: str | float) -> list[list[float]]:
    """The cache index's ``boxes`` cell (JSON ``[[x, y, w, h], ...]``, or empty) as a list."""
    if not isinstance(text, str) or not text.strip():
        return []
    return [list(map(float, box)) for box in json.loads(text)]


def scale_boxes(boxes: Sequence[Sequence[float]], factor: float) -> list[list[float]]:
    """Boxes ``[x, y, w, h]`` in pixels of one image size, in pixels of an image ``factor`` times as large."""
    return [[v * factor for v in box] for box in boxes]


def choose_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of ``size`` images (all if None or larger), as balanced between the classes as they allow.

    Deterministic for a seed; returned sorted so the subset keeps the order of the images.
    """
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in (1, 0)]
    take = [min(len(by_class[0]), (size + 1) // 2)]
    take.append(min(len(by_class[1]), size - take[0]))
    take[0] = min(len(by_class[0]), size - take[1])
    return np.sort(np.concatenate([by_class[0][: take[0]], by_class[1][: take[1]]]))


def cell_pointing(raw: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pointing game of coarse maps: is the centre of the maximal cell of ``raw`` (B, h, w) inside ``masks`` (B, H, W)?

    The cell ``(i, j)`` covers ``[j·W/w, (j+1)·W/w) × [i·H/h, (i+1)·H/h)``; its centre is the pixel at
    ``floor((i + 0.5)·H/h), floor((j + 0.5)·W/w)``. Ties: the first maximal cell in row-major order.
    """
    b, h, w = raw.shape
    height, width = masks.shape[-2:]
    flat = raw.reshape(b, -1).argmax(dim=1)
    rows = (((flat // w).double() + 0.5) * height / h).floor().long().clamp(max=height - 1)
    cols = (((flat % w).double() + 0.5) * width / w).floor().long().clamp(max=width - 1)
    return masks[torch.arange(b, device=masks.device), rows, cols]


def _batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _localisation(maps: torch.Tensor, masks: torch.Tensor, level: float, hits: torch.Tensor) -> dict[str, np.ndarray]:
    iou, iobb = scores.iou_iobb(maps, masks, level=level)
    return {
        "pointing": hits.float().cpu().numpy(),
        "energy": scores.energy_inside(maps, masks).cpu().numpy(),
        "iou": iou.cpu().numpy(),
        "iobb": iobb.cpu().numpy(),
    }


def explain_images(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    boxes: Sequence[Sequence[Sequence[float]]],
    settings: ExplainSettings,
    *,
    target: cam.Target = "predicted",
    advance: Callable[[int], None] = lambda n: None,
) -> Explained:
    """Explain ``images`` (N, 1, H, W, normalised, on the model's device) with every method and measure the maps.

    ``labels`` (N,) are the true classes, ``boxes`` per image in pixels of the (H, W) input. ``advance`` is called
    with the number of images done (CAMs, then the subset's attributions), for a progress bar.
    """
    n, _, height, width = images.shape
    device = images.device
    labels_t = torch.tensor(np.array(labels), device=device).long()  # a copy: pandas may hand a read-only view
    masks = scores.box_masks([list(b) for b in boxes], height, width).to(device)
    has_box = masks.flatten(1).any(dim=1)

    cam_maps: dict[str, list[torch.Tensor]] = {m: [] for m in settings.cams}
    cam_raw: dict[str, list[torch.Tensor]] = {m: [] for m in settings.cams}
    logit_parts, class_parts = [], []
    for part in _batches(n, settings.batch_size):
        # the CAM pass is also the prediction: its logits and resolved classes are kept (no second forward)
        result = cam.compute_cams(model, images[part], settings.cams, target=target, labels=labels_t[part])
        logit_parts.append(result.logits.detach())
        class_parts.append(result.classes)
        for m in settings.cams:
            cam_maps[m].append(result.maps[m])
            cam_raw[m].append(result.raw[m])
        advance(part.stop - part.start)
    logits, classes = torch.cat(logit_parts), torch.cat(class_parts)
    maps_full = {m: torch.cat(v) for m, v in cam_maps.items()}
    raw = {m: torch.cat(v) for m, v in cam_raw.items()}

    subset = choose_subset(np.asarray(labels), settings.subset, settings.seed)
    sub = torch.as_tensor(subset, device=device)
    attr_maps = attributions.compute_attributions(
        model,
        images[sub],
        classes[sub],
        settings.attributions,
        batch_size=settings.batch_size,
        options=settings.options,
    )
    advance(len(subset))

    base = pd.DataFrame(
        {
            "index": np.arange(n),
            "label": np.asarray(labels).astype(int),
            "probability": torch.sigmoid(logits).cpu().numpy(),
            "explained_class": classes.cpu().numpy(),
            "has_box": has_box.cpu().numpy(),
            "chance": scores.chance_level(masks).cpu().numpy(),
            "in_subset": np.isin(np.arange(n), subset),
        }
    )
    frames = []
    for method in [*settings.cams, *settings.attributions]:
        is_cam = method in maps_full
        rows = np.arange(n) if is_cam else subset
        maps = maps_full[method] if is_cam else attr_maps[method]
        idx = torch.as_tensor(rows, device=device)
        m_masks = masks[idx]
        hits = cell_pointing(raw[method], m_masks) if is_cam else scores.pointing_game(maps, m_masks)
        table = base.iloc[rows].copy()
        table.insert(0, "method", method)
        loc = _localisation(maps, m_masks, settings.level, hits)
        boxed = table["has_box"].to_numpy()
        for key, values in loc.items():
            table[key] = np.where(boxed, values, np.nan)
        for key in FAITHFULNESS:
            table[key] = np.nan
        # faithfulness on the subset only
        in_sub = np.isin(rows, subset)
        sub_rows = torch.as_tensor(np.flatnonzero(in_sub), device=device)
        if len(sub_rows):
            x, c, mp = images[idx][sub_rows], classes[idx][sub_rows], maps[sub_rows]
            di = scores.deletion_insertion(
                model, x, mp, c, steps=settings.steps, baseline=settings.baseline, batch_size=settings.batch_size * 4
            )
            cc = scores.confidence_change(model, x, mp, c, batch_size=settings.batch_size * 4)
            where = np.flatnonzero(in_sub)
            table.iloc[where, table.columns.get_loc("deletion")] = di.deletion.cpu().numpy()
            table.iloc[where, table.columns.get_loc("insertion")] = di.insertion.cpu().numpy()
            table.iloc[where, table.columns.get_loc("confidence_change")] = cc.change.cpu().numpy()
            table.iloc[where, table.columns.get_loc("confidence_rise")] = cc.increase.float().cpu().numpy()
        frames.append(table)
    per_image = pd.concat(frames, ignore_index=True)

    sanity = _sanity(model, images[sub[: settings.sanity_images]], classes[sub[: settings.sanity_images]], settings)

    out_maps = {m: v.cpu().numpy().astype(np.float16) for m, v in maps_full.items()}
    out_maps.update({m: v.cpu().numpy().astype(np.float16) for m, v in attr_maps.items()})
    return Explained(
        per_image=per_image,
        sanity=sanity,
        maps=out_maps,
        raw={m: v.cpu().numpy().astype(np.float32) for m, v in raw.items()},
        subset=subset,
    )


def _sanity(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, settings: ExplainSettings) -> pd.DataFrame:
    """Cascading randomisation for every method. The CAMs share one pass per randomisation step: their maps are
    stacked along the batch (method-major), so the features of each randomised model are computed once."""
    frames = []
    b = len(images)
    if settings.cams:
        cams = tuple(settings.cams)

        def all_cams(m: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            maps = cam.compute_cams(m, x, cams, classes=c).maps
            return torch.cat([maps[name] for name in cams])

        stacked = scores.cascading_randomisation(model, images, classes, all_cams, seed=settings.seed)
        stacked.insert(0, "method", [cams[i // b] for i in stacked["image"]])
        stacked["image"] = stacked["image"] % b
        frames.append(stacked)
    for method in settings.attributions:
        fn = _explain_fn(method, settings)
        table = scores.cascading_randomisation(model, images, classes, fn, seed=settings.seed)
        table.insert(0, "method", method)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def _explain_fn(
    method: str, settings: ExplainSettings
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    if method in cam.CAM_METHODS:
        return lambda model, x, c: cam.compute_cams(model, x, (method,), classes=c).maps[method]
    return lambda model, x, c: attributions.compute_attributions(
        model, x, c, (method,), batch_size=settings.batch_size, options=settings.options
    )[method]


def sanity_summary(sanity: pd.DataFrame) -> pd.DataFrame:
    """Mean Spearman correlation per method and randomisation step, and whether the method passes.

    A method passes when, at some step, its maps' mean rank correlation with the trained model's maps falls below
    :data:`SANITY_PASS`: its maps depend on the learned weights. One whose maps barely change fails.
    """
    steps = sanity.groupby(["method", "step", "block"], sort=False).spearman.mean().reset_index()
    minimum = steps.groupby("method", sort=False).spearman.min().rename("min_spearman").reset_index()
    minimum["passes"] = minimum["min_spearman"] < SANITY_PASS
    return steps.merge(minimum, on="method")


def consistency(
    raw_a: Mapping[str, np.ndarray], raw_b: Mapping[str, np.ndarray], size: tuple[int, int], top: float = 0.2
) -> pd.DataFrame:
    """Per method and image: rank correlation and top-``top`` region IoU of two models' maps of the same images.

    Raw CAMs of either model are upsampled to ``size`` and normalised first, so the two feature grids may differ.
    """
    rows = []
    for method in [m for m in raw_a if m in raw_b]:
        a = cam.normalise(cam.upsample(torch.as_tensor(raw_a[method]).float(), size))
        b = cam.normalise(cam.upsample(torch.as_tensor(raw_b[method]).float(), size))
        rho = scores.rank_correlation(a, b).numpy()
        iou = scores.top_region_iou(a, b, top=top).numpy()
        rows.append(pd.DataFrame({"method": method, "index": np.arange(len(a)), "spearman": rho, "top_iou": iou}))
    return (
        pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["method", "index", "spearman", "top_iou"])
    )
