"""What the viewer shows of one trained model (architecture and training seed): its explained images and maps.

:func:`load_run` reads, through the :class:`~cxrexplain.workspace.Workspace`, the explain stage's ``maps.npz`` (the
raw Pneumonia CAMs of every explained image at the target layer's resolution, and the captum methods' normalised
Pneumonia maps at the network input's resolution on the images they were computed on), ``per_image.csv`` (the
measures) and metrics (the decision threshold), the train stage's ``predictions.csv`` (probability and label) and
the cache (images and boxes, at the cache's resolution). Each map is shown as the measures saw it: the map resized
bilinearly (:func:`cxrexplain.explain.cam.upsample`) and min-max normalised per image
(:func:`~cxrexplain.explain.cam.normalise`), here to the cache's side instead of the network input's (the same
content, sampled at the resolution the radiograph is shown at), drawn with the gallery's jet colour map.

Every image has a map of every CAM method; the captum methods (saliency, integrated gradients, ...) have a
Pneumonia map only on the images with a box and the explain subset's Pneumonia-predicted images
(:func:`cxrexplain.explain.evaluate.pneumonia_attributions`), so an image lists only the methods it has a map of
(:meth:`ViewerRun.available`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrexplain.data.sample import load_cache
from cxrexplain.errors import CxrError
from cxrexplain.explain.agreement import read_pneumonia_maps
from cxrexplain.explain.evaluate import outcomes, parse_boxes
from cxrexplain.explain.measures.registry import columns
from cxrexplain.workspace import stage_name

if TYPE_CHECKING:
    from cxrexplain.workspace import Workspace

SHOWN = ("pointing", "energy", "iou", "deletion", "insertion", "road_morf", "sparseness")
"""The measures written under each map (every measure is in the page's sort list and in the map's tooltip)."""


@dataclass
class ViewerRun:
    """One model's explained images: per image (``items``) what the page shows, and the pixels it asks for."""

    arch: str
    seed: int
    threshold: float
    methods: list[str]  # the methods with a stored map, in the explain stage's order
    items: list[dict]  # per explained image: image, patient, label, probability, outcome, boxes, measures
    measures: list[dict]  # the measures of per_image.csv with a value: name, label, better
    cache: np.ndarray  # (images, side, side) uint8, memory-mapped
    rows: np.ndarray  # the cache row of each item
    raw: dict[str, np.ndarray]  # CAM method -> (items, h, w) raw Pneumonia maps
    attributions: dict[str, np.ndarray] = field(default_factory=dict)  # captum method -> (K, H, W) in [0, 1]
    attribution_rows: dict[str, np.ndarray] = field(default_factory=dict)  # captum method -> the K items it covers

    def __post_init__(self) -> None:
        self.radiograph_png = lru_cache(maxsize=512)(self._radiograph_png)
        self.overlay_png = lru_cache(maxsize=1024)(self._overlay_png)
        self._at = {m: {int(item): k for k, item in enumerate(rows)} for m, rows in self.attribution_rows.items()}
        self._available = [
            [k for k, m in enumerate(self.methods) if m in self.raw or item in self._at.get(m, {})]
            for item in range(len(self.items))
        ]

    def available(self, item: int) -> list[int]:
        """The indices (into :attr:`methods`) of the methods with a map of ``item``, in the methods' order."""
        return self._available[item]

    @property
    def side(self) -> int:
        return int(self.cache.shape[1])

    def _radiograph_png(self, item: int) -> bytes:
        """The cached 8-bit image of ``item`` as PNG, at the cache's resolution."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.asarray(self.cache[self.rows[item]])).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def map_at_cache_size(self, method: str, item: int) -> np.ndarray:
        """``method``'s map of ``item`` resized to the cache's side and normalised to [0, 1] (float32): a CAM's raw
        map, or a captum map (a ``KeyError`` where ``item`` has none)."""
        import torch

        from cxrexplain.explain.cam import normalise, upsample

        if method in self.raw:
            stored = self.raw[method][item : item + 1]
        else:
            k = self._at[method][item]
            stored = self.attributions[method][k : k + 1]
        maps = torch.from_numpy(np.asarray(stored, dtype=np.float32))
        return normalise(upsample(maps, (self.cache.shape[1], self.cache.shape[2])))[0].numpy()

    def _overlay_png(self, method: str, item: int) -> bytes:
        """The jet-coloured map (RGB PNG, opaque; the page blends it over the radiograph with its opacity)."""
        import matplotlib
        from PIL import Image

        rgb = matplotlib.colormaps["jet"](self.map_at_cache_size(method, item))[..., :3]
        buffer = io.BytesIO()
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _measures(per_image: pd.DataFrame, methods: list[str]) -> tuple[list[dict], dict[str, dict[str, dict]]]:
    """The measure columns with a value, and per image name and method each measure's value (a map's localisation
    and faithfulness values may sit on two rows of ``per_image.csv``, one per explained class: the first value)."""
    present = [c for c in columns() if c.name in per_image.columns and per_image[c.name].notna().any()]
    names = [c.name for c in present]
    rows = per_image[per_image["method"].isin(methods)]
    first = rows.groupby(["image", "method"])[names].first()  # the first value that is not NaN, per column
    values: dict[str, dict[str, dict]] = {}
    for (image, method), entry in zip(first.index, first.to_dict("records"), strict=True):
        values.setdefault(str(image), {})[str(method)] = {k: v for k, v in entry.items() if not math.isnan(v)}
    listed = [{"name": c.name, "label": c.label, "better": c.better, "shown": c.name in SHOWN} for c in present]
    return listed, values


def load_run(ws: Workspace, arch: str, seed: int) -> ViewerRun:
    """The explain and train stages' outputs of ``arch`` trained with ``seed``, checked to be there
    (:meth:`Workspace.require`: else a :class:`CxrError` naming the file and the stage to run)."""
    explain, model = ws.explain(arch, seed), ws.model(arch, seed)
    metrics = ws.stage_metrics("explain", arch, seed)
    ws.require([explain.maps, explain.per_image, metrics], needed_by="view", made_by=stage_name("explain", arch, seed))
    ws.require([model.predictions], needed_by="view", made_by=stage_name("train", arch, seed))
    ws.require(ws.cache.complete, needed_by="view", made_by="sample")
    maps = read_pneumonia_maps(explain.maps, made_by=stage_name("explain", arch, seed))
    if not maps.raw:
        raise CxrError(f"{explain.maps}: no CAM maps stored (explain.cams is empty): nothing to view")
    threshold = float(json.loads(metrics.read_text())["threshold"])
    cache, index = load_cache(ws.cache.dir)
    by_image = index.set_index("image")
    predictions = pd.read_csv(model.predictions).drop_duplicates("image").set_index("image")
    missing = [i for i in maps.images if i not in by_image.index or i not in predictions.index]
    if missing:
        raise CxrError(
            f"{explain.maps}: images {', '.join(missing[:3])} are not in {ws.cache.index} or {model.predictions} "
            f"(outputs of different runs?); re-run `dvc repro {stage_name('explain', arch, seed)}`"
        )
    methods = [*maps.raw, *(m for m in maps.attributions if m not in maps.raw)]
    measures, values = _measures(pd.read_csv(explain.per_image), methods)
    labels = predictions.loc[maps.images, "label"].to_numpy().astype(int)
    probability = predictions.loc[maps.images, "probability"].to_numpy().astype(float)
    outcome = outcomes(labels, (probability > threshold).astype(int))
    boxes = by_image.loc[maps.images, "boxes"].to_numpy()
    items = [
        {
            "image": image,
            "patient": str(maps.patients[k]),
            "label": int(labels[k]),
            "probability": float(probability[k]),
            "outcome": str(outcome[k]),
            "boxes": parse_boxes(boxes[k]),
            "measures": {m: {n: _number(v) for n, v in e.items()} for m, e in values.get(image, {}).items()},
        }
        for k, image in enumerate(maps.images)
    ]
    rows = by_image.loc[maps.images, "row"].to_numpy().astype(int)
    return ViewerRun(
        arch, seed, threshold, methods, items, measures, cache, rows, maps.raw, maps.attributions, maps.attribution_rows
    )


def blinded_order(reader: str, items: int, methods: int) -> tuple[list[int], list[list[int]]]:
    """A reader's own random order of the items and, per item, of the methods: seeded by the reader id alone
    (SHA-256), so the same reader gets the same order in every session and two readers different ones. (An item
    without some methods' maps shows the others in this order: the session leaves the missing ones out.)"""
    seed = int.from_bytes(hashlib.sha256(reader.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    order = rng.permutation(items).tolist()
    return order, [rng.permutation(methods).tolist() for _ in range(items)]


__all__ = ["SHOWN", "ViewerRun", "blinded_order", "load_run"]
