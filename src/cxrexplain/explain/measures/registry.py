"""The one registry of per-image measures that the explain stage, the summary, the paired tests and the report read.

:data:`MEASURES` lists the per-image measures: each entry names the columns it writes to ``per_image.csv``, which
maps it is scored on, and a function of a :class:`MeasureBatch`. Adding a measure is one function in its family's
module and one entry here; the explain stage computes every selected entry, and the report, the summary, the paired
comparisons and ``metrics/explain/<arch>.json`` pick the columns up from this registry without an edit.

The registry itself imports neither torch nor the families' modules: each compute function imports its family when
it runs, so the config (every command) and the report read the names and columns without torch's import.

Which maps each family scores (``Measure.on``):

- ``pneumonia``: the map of class Pneumonia on every image with a Pneumonia box, whatever the prediction (the boxes
  mark Pneumonia; a No Finding map has nothing to find there). The ``TP`` group of the summary is CheXlocalize's
  "predicted-class map on true positives".
- ``decision``: the map of the class the model decided at the explain threshold, on the explain subset (the same
  images for every method).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only; the compute functions import torch through their family's module
    import torch
    from torch import nn

Family = Literal["localisation", "faithfulness", "complexity"]
Better = Literal["higher", "lower"] | None


@dataclass(frozen=True)
class Column:
    """One per-image value a measure writes: its ``per_image.csv`` column, how to read it, how to test it."""

    name: str
    label: str
    better: Better
    kind: Literal["continuous", "binary"] = "continuous"  # binary: 0/1 per image (paired test: McNemar)
    description: str = ""


@dataclass(frozen=True)
class MeasureOptions:
    """The settings measures read (filled from ``params.explain``)."""

    level: float = 0.5  # binarisation level of IoU/IoBB and the box-level protocol, as a fraction of the map's max
    tolerance: float = 0.0  # pointing game tolerance in pixels of the network input
    steps: int = 20  # deletion/insertion steps
    baseline: str = "mean"  # deletion/insertion reference image
    road_percentiles: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    orders: int = 4  # random tie orders averaged over by ranking measures
    batch_size: int = 64  # images per forward pass of perturbed images
    seed: int = 0


@dataclass
class MeasureBatch:
    """What a measure may read for a batch of maps of one method."""

    model: nn.Module
    images: torch.Tensor  # (B, 1, H, W) normalised, on the model's device
    maps: torch.Tensor  # (B, H, W) in [0, 1]
    classes: torch.Tensor  # (B,) the class each map explains
    masks: torch.Tensor  # (B, H, W) bool, the Pneumonia boxes (all False without boxes)
    boxes: Sequence[Sequence[Sequence[float]]]  # per image [[x, y, w, h], ...] in input pixels
    options: MeasureOptions
    raw: torch.Tensor | None = None  # (B, h, w) coarse CAM (cell pointing), None for pixel attributions
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    name: str
    family: Family
    on: Literal["pneumonia", "decision"]
    columns: tuple[Column, ...]
    compute: Callable[[MeasureBatch], Mapping[str, torch.Tensor]]
    reference: str
    costly: bool = False  # many forward passes per image


def _pointing(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import localisation

    if b.raw is not None:
        hits = localisation.cell_pointing(b.raw, b.masks, tolerance=b.options.tolerance)
    else:
        hits = localisation.pointing_game(b.maps, b.masks, tolerance=b.options.tolerance)
    return {"pointing": hits.float()}


def _energy(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import localisation

    return {"energy": localisation.energy_inside(b.maps, b.masks)}


def _iou(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import localisation

    iou, iobb = localisation.iou_iobb(b.maps, b.masks, level=b.options.level)
    return {"iou": iou, "iobb": iobb}


def _box_level(b: MeasureBatch) -> dict[str, torch.Tensor]:
    """Per image and T(IoBB): the share of its boxes hit (the mean over images weights images, not boxes, equally:
    the paper pools boxes; NIH images have one Pneumonia box in most cases) and its false positives (mean = AFP)."""
    from cxrexplain.explain.measures import localisation

    counts = localisation.box_level(b.maps, b.boxes, level=b.options.level)
    truth = counts.truth.double().clamp_min(1)
    out = {}
    for k, t in enumerate(counts.thresholds):
        out[f"box_acc_{t:g}"] = counts.hits[:, k].double() / truth
        out[f"box_fp_{t:g}"] = counts.false_positives[:, k].double()
    return out


def _deletion_insertion(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import faithfulness

    o = b.options
    di = faithfulness.deletion_insertion(
        b.model,
        b.images,
        b.maps,
        b.classes,
        steps=o.steps,
        baseline=o.baseline,
        batch_size=o.batch_size,
        orders=o.orders,
        seed=o.seed,
    )
    return {"deletion": di.deletion, "insertion": di.insertion}


def _confidence(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import faithfulness

    cc = faithfulness.confidence_change(b.model, b.images, b.maps, b.classes, batch_size=b.options.batch_size)
    return {"average_drop": 100.0 * cc.drop, "increase": cc.increase.float()}


def _road(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import faithfulness

    o = b.options
    out = {}
    for order in ("morf", "lerf"):
        result = faithfulness.road(
            b.model,
            b.images,
            b.maps,
            b.classes,
            percentiles=tuple(o.road_percentiles),
            order=order,
            batch_size=o.batch_size,
            orders=o.orders,
            seed=o.seed,
        )
        out[f"road_{order}"] = result.score
    return out


def _otsu_iou(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import localisation

    return {"otsu_iou": localisation.otsu_iou(b.maps, b.masks)}


def _sparseness(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import complexity

    return {"sparseness": complexity.sparseness(b.maps)}


def _complexity(b: MeasureBatch) -> dict[str, torch.Tensor]:
    from cxrexplain.explain.measures import complexity

    return {"complexity": complexity.complexity(b.maps)}


IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
"""The T(IoBB) levels of ChestX-ray8's localisation table (Wang et al. 2017, Table 3)."""
BOX_COLUMNS = tuple(f"box_{what}_{t:g}" for what in ("acc", "fp") for t in IOBB_THRESHOLDS)

MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure(
            "pointing",
            "localisation",
            "pneumonia",
            (
                Column(
                    "pointing",
                    "pointing game",
                    "higher",
                    "binary",
                    "the map's maximum lies in a box (ties: share of maximal points inside; a constant map misses)",
                ),
            ),
            _pointing,
            "Zhang et al. 2018, Top-down neural attention by excitation backprop",
        ),
        Measure(
            "energy",
            "localisation",
            "pneumonia",
            (Column("energy", "energy in boxes", "higher", description="share of the map's sum inside the boxes"),),
            _energy,
            "Wang et al. 2020, Score-CAM (energy-based pointing game); Quantus RelevanceMassAccuracy",
        ),
        Measure(
            "iou",
            "localisation",
            "pneumonia",
            (
                Column("iou", "IoU", "higher", description="IoU of the map binarised at level × max with the boxes"),
                Column("iobb", "IoBB", "higher", description="intersection over the binarised map's area"),
            ),
            _iou,
            "Wang et al. 2017, ChestX-ray8 (IoBB), pixel level",
        ),
        Measure(
            "otsu_iou",
            "localisation",
            "pneumonia",
            (Column("otsu_iou", "IoU (Otsu)", "higher", description="IoU of the Otsu-binarised map with the boxes"),),
            _otsu_iou,
            "Saporta et al. 2022, CheXlocalize (mIoU with Otsu binarisation)",
        ),
        Measure(
            "box_level",
            "localisation",
            "pneumonia",
            tuple(
                Column(
                    name,
                    ("box acc." if "acc" in name else "box FP") + f" T(IoBB) {name.rsplit('_', 1)[1]}",
                    "higher" if "acc" in name else "lower",
                    description="ChestX-ray8 box-level protocol: boxes around connected regions of the binarised map",
                )
                for name in BOX_COLUMNS
            ),
            _box_level,
            "Wang et al. 2017, ChestX-ray8 (accuracy and false positives at T(IoBB))",
        ),
        Measure(
            "deletion_insertion",
            "faithfulness",
            "decision",
            (
                Column("deletion", "deletion AUC", "lower", description="probability as top pixels are removed"),
                Column("insertion", "insertion AUC", "higher", description="probability as top pixels are restored"),
            ),
            _deletion_insertion,
            "Petsiuk et al. 2018, RISE",
            costly=True,
        ),
        Measure(
            "confidence",
            "faithfulness",
            "decision",
            (
                Column("average_drop", "Average Drop %", "lower", description="100 · max(0, p − o) / p per image"),
                Column("increase", "Increase in Confidence", "higher", "binary", description="o > p per image"),
            ),
            _confidence,
            "Chattopadhay et al. 2018, Grad-CAM++",
        ),
        Measure(
            "road",
            "faithfulness",
            "decision",
            (
                Column("road_morf", "ROAD MoRF", "lower", description="most relevant first, noisy linear imputation"),
                Column("road_lerf", "ROAD LeRF", "higher", description="least relevant first, noisy linear imputation"),
            ),
            _road,
            "Rong et al. 2022, ROAD",
            costly=True,
        ),
        Measure(
            "sparseness",
            "complexity",
            "decision",
            (Column("sparseness", "sparseness (Gini)", None, description="Gini index of the map"),),
            _sparseness,
            "Chalasani et al. 2020; Quantus Sparseness",
        ),
        Measure(
            "complexity",
            "complexity",
            "decision",
            (Column("complexity", "complexity (entropy)", None, description="entropy of the normalised map"),),
            _complexity,
            "Bhatt et al. 2020; Quantus Complexity",
        ),
    )
}
"""The per-image measures by name (``params.explain.measures`` selects among them)."""


def columns(names: Sequence[str] | None = None, family: Family | None = None) -> list[Column]:
    """The columns of the measures ``names`` (all if None), optionally of one family, in registry order."""
    chosen = MEASURES if names is None else {n: MEASURES[n] for n in MEASURES if n in set(names)}
    return [c for m in chosen.values() if family is None or m.family == family for c in m.columns]


def column(name: str) -> Column:
    """The registered column called ``name``."""
    for c in columns():
        if c.name == name:
            return c
    raise KeyError(name)


FAMILIES: tuple[Family, ...] = ("localisation", "faithfulness", "complexity")
