"""Explain a set of images with every method and measure each explanation: the explain stage's library.

:func:`explain_images` takes a model, plain tensors (images, labels, boxes, patients) and the validated
``params.explain`` section (:class:`~cxrexplain.config.ExplainParams`) and returns per-image tables, the sanity curve
and maps; nothing here reads files or MLflow (:mod:`cxrexplain.explain.pipeline` and the stage do).

One threshold defines everything that depends on the decision: image ``i`` is *predicted* Pneumonia when its
probability exceeds ``threshold``, its outcome (TP/FP/FN/TN) follows from that, and its *decision map* explains that
predicted class. Which maps are measured, on which images (every method on the same images):

- **localisation** (:mod:`~cxrexplain.explain.measures.localisation`): the map of class **Pneumonia** on every image
  with a Pneumonia box, whatever the prediction; a missed Pneumonia (FN) is no longer scored with a map of No Finding.
  Its ``TP`` group is the predicted-class map on true positives (CheXlocalize's protocol).
- **faithfulness** and **complexity**: the decision map on the explain subset (balanced between the classes).
- **sanity**: the decision maps of the first ``sanity.images`` of the subset, under cascading (top-down, bottom-up)
  and independent randomisation of the model's blocks.

``per_image`` has one row per (method, image, explained class): a Pneumonia-predicted image has one row (its
decision map is the Pneumonia map); a No-Finding-predicted image with a box, or in the subset, has a class-1 row for
localisation and a class-0 row for faithfulness. Columns that do not apply to a row are NaN.

The maps kept (for the consistency stage and the viewer): every CAM's raw Pneumonia map of every image; every captum
method's Pneumonia map (normalised, as measured) where one was computed: on the images with a box and on the subset's
Pneumonia-predicted images (:func:`pneumonia_attributions`). The subset's No-Finding-predicted images without a box
have only a No Finding map of those methods, and none of Pneumonia is computed for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrexplain import names
from cxrexplain.explain import attributions, cam
from cxrexplain.explain.measures import consistency, localisation, ordering, sanity, statistics
from cxrexplain.explain.measures.registry import MEASURES, MeasureBatch, MeasureOptions, columns

if TYPE_CHECKING:
    from cxrexplain.config import ExplainParams

PNEUMONIA = 1  # the class of the raw maps kept for the consistency stage


def measure_options(config: ExplainParams, image_size: int, seed: int) -> MeasureOptions:
    """The measures' settings from ``params.explain``: the pointing tolerance in pixels of the ``image_size`` network
    input, perturbed images scored in batches of four explain batches."""
    f = config.faithfulness
    return MeasureOptions(
        level=config.iobb_level,
        tolerance=config.pointing_tolerance * image_size,
        steps=f.steps,
        baseline=f.baseline,
        road_percentiles=f.road_percentiles,
        orders=config.tie_orders,
        batch_size=config.batch_size * 4,
        seed=seed,
    )


def attribution_options(config: ExplainParams) -> dict[str, dict[str, object]]:
    """Per captum method, the keyword arguments of its function in :mod:`~cxrexplain.explain.attributions`."""
    a = config.attribution
    options: dict[str, dict[str, object]] = {
        "integrated_gradients": {"n_steps": a.ig_steps},
        "occlusion": {"window": a.occlusion_window, "stride": a.occlusion_stride},
        "gradient_shap": {"n_samples": a.shap_samples},
    }
    smooth = {"samples": a.smoothgrad_samples, "noise": a.smoothgrad_noise}
    for base in names.SMOOTHGRAD_BASES:
        options[f"{base}_smoothgrad"] = {**options.get(base, {}), **smooth}
    return options


@dataclass
class Explained:
    """Everything :func:`explain_images` produced."""

    per_image: pd.DataFrame  # one row per (method, image, explained class); NaN where a measure does not apply
    sanity: pd.DataFrame  # the randomisation curve: method, mode, step, block, image, spearman, spearman_abs, ssim
    decision_maps: dict[str, np.ndarray]  # CAM method -> (N, H, W) float16 decision maps of every image (galleries)
    pneumonia_maps: dict[str, np.ndarray]  # method -> (len(boxed), H, W) float16 class-1 maps of the boxed images
    raw: dict[str, np.ndarray]  # CAM method -> (N, h, w) float32 class-1 maps at the target layer's resolution
    attribution_maps: dict[str, np.ndarray]  # captum method -> (K, H, W) float16 class-1 maps of attribution_rows
    attribution_rows: np.ndarray  # (K,) sorted indices (into the images) of the images with captum Pneumonia maps
    subset: np.ndarray  # indices (into the images) of the explain subset
    boxed: np.ndarray  # indices of the images with a Pneumonia box
    predicted: np.ndarray  # (N,) 0/1 at the threshold
    probability: np.ndarray  # (N,) P(Pneumonia) of every image (float64)


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


def outcomes(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``"TP"``/``"FP"``/``"FN"``/``"TN"`` from true labels and 0/1 predictions."""
    y, p = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    return np.where(y, np.where(p, "TP", "FN"), np.where(p, "FP", "TN"))


def _batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


@dataclass
class _Maps:
    """Maps of one method for one explained role, on the images ``rows``."""

    rows: np.ndarray
    classes: torch.Tensor
    maps: torch.Tensor
    raw: torch.Tensor | None


def explain_images(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    boxes: Sequence[Sequence[Sequence[float]]],
    config: ExplainParams,
    *,
    threshold: float = 0.5,
    seed: int = 0,
    patients: Sequence[str] | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Explained:
    """Explain ``images`` (N, 1, H, W, normalised, on the model's device) with every method and measure the maps.

    ``labels`` (N,) are the true classes, ``boxes`` per image in pixels of the (H, W) input, ``patients`` (N,) the
    patient of each image (the clusters of every interval; each image its own cluster if None). ``config`` is the
    validated ``params.explain`` section (methods, measures, subset, sanity checks), ``seed`` the global seed (subset,
    tie orders, randomisation). ``threshold`` (a probability) decides the predicted class, the outcomes and the class
    of the decision maps. ``advance`` is called with the number of images done, for a progress bar.
    """
    n, _, height, width = images.shape
    device = images.device
    options = measure_options(config, width, seed)
    labels = np.array(labels).astype(int)  # a copy: pandas may hand a read-only view
    patients = np.asarray(patients if patients is not None else [str(i) for i in range(n)]).astype(str)
    boxes = [[list(map(float, b)) for b in image_boxes] for image_boxes in boxes]
    masks = localisation.box_masks(boxes, height, width).to(device)
    has_box = masks.flatten(1).any(dim=1).cpu().numpy()
    boxed = np.flatnonzero(has_box)

    # CAMs: one feature pass per batch gives the probability, the class-1 maps and the decision maps
    logit_parts: list[torch.Tensor] = []
    cam_parts: list[cam.TwoClassCams] = []
    for part in _batches(n, config.batch_size):
        result = cam.compute_pneumonia_and_decision_cams(
            model, images[part], config.cams, threshold=threshold, batch_size=config.batch_size
        )
        logit_parts.append(result.logits)
        cam_parts.append(result)
        advance(part.stop - part.start)
    logits = torch.cat(logit_parts) if logit_parts else images.new_zeros(0)
    probability = torch.sigmoid(logits.double()).cpu().numpy()
    predicted = (probability > threshold).astype(int)
    classes = torch.as_tensor(predicted, device=device)

    subset = choose_subset(labels, config.subset, seed)
    roles: dict[str, dict[str, _Maps]] = {"pneumonia": {}, "decision": {}}
    for method in config.cams:
        class1 = torch.cat([r.pneumonia.maps[method] for r in cam_parts])
        raw1 = torch.cat([r.pneumonia.raw[method] for r in cam_parts])
        decision = torch.cat([r.decision.maps[method] for r in cam_parts])
        raw_d = torch.cat([r.decision.raw[method] for r in cam_parts])
        ones = torch.ones(len(boxed), dtype=torch.long, device=device)
        roles["pneumonia"][method] = _Maps(boxed, ones, class1[boxed], raw1[boxed])
        roles["decision"][method] = _Maps(subset, classes[subset], decision[subset], raw_d[subset])

    # captum methods on exactly the same images: Pneumonia maps of the boxed images, decision maps of the subset
    for role, rows, explained in (
        ("pneumonia", boxed, torch.ones(len(boxed), dtype=torch.long, device=device)),
        ("decision", subset, classes[subset]),
    ):
        if len(rows) and config.attributions:
            idx = torch.as_tensor(rows, device=device)
            maps = attributions.compute_attributions(
                model, images[idx], explained, config.attributions, config.batch_size, attribution_options(config)
            )
            for method, m in maps.items():
                roles[role][method] = _Maps(rows, explained, m, None)
        advance(len(rows))

    base = pd.DataFrame(
        {
            "index": np.arange(n),
            "patient": patients,
            "label": labels,
            "probability": probability,
            "predicted": predicted,
            "outcome": outcomes(labels, predicted),
            "has_box": has_box,
            "in_subset": np.isin(np.arange(n), subset),
            "chance": localisation.chance_level(masks).cpu().numpy(),
            "centre_prior": localisation.centre_prior(masks, tolerance=options.tolerance).float().cpu().numpy(),
        }
    )
    frames = []
    methods = [*config.cams, *config.attributions]
    for method in methods:
        for role in ("pneumonia", "decision"):
            found = roles[role][method]
            if not len(found.rows):
                continue
            table = base.iloc[found.rows].copy()
            table.insert(0, "method", method)
            table.insert(1, "role", role)
            table["explained_class"] = found.classes.cpu().numpy()
            table["tied_share"] = ordering.tied_share(found.maps).cpu().numpy()
            idx = torch.as_tensor(found.rows, device=device)
            batch = MeasureBatch(
                model=model,
                images=images[idx],
                maps=found.maps,
                classes=found.classes,
                masks=masks[idx],
                boxes=[boxes[i] for i in found.rows],
                options=options,
                raw=found.raw,
            )
            for name in config.measures:
                measure = MEASURES[name]
                if measure.on != role:
                    continue
                for key, values in measure.compute(batch).items():
                    table[key] = values.detach().double().cpu().numpy()
            frames.append(table)
    per_image = _merge_roles(pd.concat(frames, ignore_index=True), config.measures)

    attribution_rows, attribution_maps = pneumonia_attributions(roles, config.attributions, boxed, subset, predicted)
    sanity_rows = subset[: config.sanity.images]
    curve = _sanity(model, images[torch.as_tensor(sanity_rows, device=device)], classes[sanity_rows], config, seed)

    return Explained(
        per_image=per_image,
        sanity=curve,
        decision_maps={
            m: torch.cat([r.decision.maps[m] for r in cam_parts]).cpu().numpy().astype(np.float16) for m in config.cams
        },
        pneumonia_maps={m: roles["pneumonia"][m].maps.cpu().numpy().astype(np.float16) for m in methods},
        raw={
            m: torch.cat([r.pneumonia.raw[m] for r in cam_parts]).cpu().numpy().astype(np.float32) for m in config.cams
        },
        attribution_maps=attribution_maps,
        attribution_rows=attribution_rows,
        subset=subset,
        boxed=boxed,
        predicted=predicted,
        probability=probability,
    )


def pneumonia_attributions(
    roles: Mapping[str, Mapping[str, _Maps]],
    methods: Sequence[str],
    boxed: np.ndarray,
    subset: np.ndarray,
    predicted: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The captum methods' Pneumonia maps already computed: the localisation maps of the ``boxed`` images and the
    decision maps of the ``subset``'s Pneumonia-predicted images (``predicted`` == 1), as float16 in [0, 1] (the
    normalised maps the measures score). Returns the sorted image indices and, per method, their maps (K, H, W).

    An image that is both (boxed, in the subset and predicted Pneumonia) was explained twice for class 1: its
    localisation map is kept (the map the pointing game scored; a deterministic method gives the same map twice,
    SmoothGrad and GradientSHAP draw other noise for the decision map)."""
    subset = np.asarray(subset, dtype=np.int64)
    rows = np.union1d(np.asarray(boxed, dtype=np.int64), subset[np.asarray(predicted)[subset] == PNEUMONIA])
    if not len(rows) or not methods:
        return np.zeros(0, dtype=np.int64), {}
    out: dict[str, np.ndarray] = {}
    for method in methods:
        found: np.ndarray | None = None
        for role in ("decision", "pneumonia"):  # the localisation map written last, so it wins
            part = roles[role].get(method)
            if part is None or not len(part.rows):
                continue
            keep = part.classes.cpu().numpy() == PNEUMONIA
            maps = part.maps[torch.as_tensor(keep, device=part.maps.device)].cpu().numpy().astype(np.float16)
            if found is None:
                found = np.zeros((len(rows), *maps.shape[1:]), dtype=np.float16)
            found[np.searchsorted(rows, part.rows[keep])] = maps
        if found is not None:
            out[method] = found
    return rows, out


def _merge_roles(table: pd.DataFrame, measures: Sequence[str]) -> pd.DataFrame:
    """One row per (method, image, explained class): a Pneumonia-predicted image's two roles are the same map."""
    names = [c.name for c in columns(measures)]
    for name in names:
        if name not in table.columns:
            table[name] = np.nan
    keys = ["method", "index", "explained_class"]
    merged = table.groupby(keys, sort=False, as_index=False).agg(
        {**{c: "first" for c in table.columns if c not in (*keys, *names, "role")}, **dict.fromkeys(names, "max")}
    )
    roles = table.groupby(keys, sort=False)["role"].agg(lambda r: "+".join(sorted(set(r))))
    merged.insert(3, "maps_for", roles.to_numpy())
    return merged[
        ["method", "index", "explained_class", "maps_for", *[c for c in merged.columns if c not in (*keys, "maps_for")]]
    ]


def _sanity(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, config: ExplainParams, seed: int
) -> pd.DataFrame:
    """The randomisation curve for every method. The CAMs share one pass per randomisation step: their maps are
    stacked along the batch (method-major), so the features of each randomised model are computed once."""
    frames = []
    b = len(images)
    if b == 0:
        return pd.DataFrame(columns=["method", "mode", "step", "block", "image", "spearman", "spearman_abs", "ssim"])
    modes = tuple(config.sanity.modes)
    if config.cams:
        cams = tuple(config.cams)

        def all_cams(m: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            maps = cam.compute_cams(m, x, cams, classes=c, batch_size=config.batch_size).maps
            return torch.cat([maps[name] for name in cams])

        stacked = sanity.randomisation_curve(model, images, classes, all_cams, seed=seed, modes=modes, methods=cams)
        frames.append(stacked)
    for method in config.attributions:
        table = sanity.randomisation_curve(
            model, images, classes, signed_explainer(method, config), seed=seed, modes=modes
        )
        table.insert(0, "method", method)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def signed_explainer(
    method: str, config: ExplainParams
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``explain_fn(model, images, classes) -> signed maps``: CAM maps (non-negative), raw captum attributions."""
    if method in cam.CAM_METHODS:
        return lambda model, x, c: cam.compute_cams(model, x, (method,), classes=c, batch_size=config.batch_size).maps[
            method
        ]

    def explain(model: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        fn = attributions.ATTRIBUTION_METHODS[method]
        with cam.evaluating(model):
            return fn(model, x, c, batch_size=config.batch_size, **attribution_options(config).get(method, {}))

    return explain


# ------------------------------------------------------------------------------------------ tables for the stage


def measure_columns(per_image: pd.DataFrame) -> list[str]:
    """The registered measure columns present in ``per_image``, in registry order, and the share of tied pixels."""
    return [c.name for c in columns() if c.name in per_image.columns] + ["tied_share"]


def summary_table(per_image: pd.DataFrame, n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per method and measure: mean and patient-clustered bootstrap interval over all images the measure applies to
    (group ``all``) and per outcome; ``n`` values and ``clusters`` (patients) per cell."""
    frames = []
    for method, frame in per_image.groupby("method", sort=False):
        table = statistics.summarise(frame, by="outcome", metrics=measure_columns(per_image), n=n, seed=seed)
        frames.append(table.assign(method=method))
    out = pd.concat(frames, ignore_index=True)
    out = out[out["n"] > 0]
    return out[["method", *[c for c in out.columns if c != "method"]]].reset_index(drop=True)


def paired_table(per_image: pd.DataFrame, n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every pair of methods on every measure, on the images both were scored on (``paired.csv``)."""
    frames = []
    for c in columns():
        if c.name not in per_image.columns or per_image[c.name].notna().sum() == 0:
            continue
        frames.append(statistics.paired_comparisons(per_image, c.name, kind=c.kind, n=n, seed=seed))
    if not frames:
        return pd.DataFrame(
            columns=["method_a", "method_b", "measure", "n", "mean_difference", "low", "high", "p", "p_holm", "test"]
        )
    return pd.concat(frames, ignore_index=True)


def consistency_table(
    raw_a: Mapping[str, np.ndarray], raw_b: Mapping[str, np.ndarray], size: tuple[int, int], **kwargs: object
) -> pd.DataFrame:
    """:func:`~cxrexplain.explain.measures.consistency.consistency` of two models' class-1 CAMs of the same images."""
    return consistency.consistency(raw_a, raw_b, size, **kwargs)
