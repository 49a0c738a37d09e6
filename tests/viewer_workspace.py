"""A tiny workspace with what the viewer and the ratings stage read of one trained model, written in the formats the
sample, train and explain stages write (cache index and array, predictions.csv, maps.npz as explain/pipeline.py
``write_maps`` writes it, per_image.csv, the explain metrics' threshold): eight 32-px images, two CAM methods with 2×2
raw maps of every image, one captum method (saliency) with 16×16 normalised maps of four images (the three with a box
and a Pneumonia-predicted one of the subset), no model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrexplain.workspace import Workspace

ARCH, SEED = "resnet18", 42
CAMS = ("gradcam", "layercam")
ATTRIBUTIONS = ("saliency",)
METHODS = (*CAMS, *ATTRIBUTIONS)
ATTRIBUTION_ROWS = (0, 1, 4, 6)  # the images with a box, and image 6 (TP without a box, in the explained subset)
NET = 16  # the network input's side: the captum maps' resolution
SIDE = 32
# image, patient, label, probability, boxes (cache pixels)
IMAGES = [
    ("00000001_000.png", "1", 1, 0.90, [[4.0, 6.0, 10.0, 8.0]]),  # TP, box
    ("00000001_001.png", "1", 1, 0.30, [[16.0, 16.0, 8.0, 8.0]]),  # FN, box
    ("00000002_000.png", "2", 0, 0.70, []),  # FP
    ("00000003_000.png", "3", 0, 0.10, []),  # TN
    ("00000004_000.png", "4", 1, 0.95, [[2.0, 2.0, 12.0, 12.0]]),  # TP, box
    ("00000005_000.png", "5", 0, 0.20, []),  # TN
    ("00000006_000.png", "6", 1, 0.60, []),  # TP, no box
    ("00000007_000.png", "7", 0, 0.40, []),  # TN
]
THRESHOLD = 0.5


def raw_maps(method: str) -> np.ndarray:
    """(8, 2, 2) float32 raw maps, different per image and method."""
    rng = np.random.default_rng(sum(map(ord, method)))
    return rng.random((len(IMAGES), 2, 2), dtype=np.float32)


def attribution_maps(method: str) -> np.ndarray:
    """(4, 16, 16) float16 maps of the images ATTRIBUTION_ROWS, min-max normalised per map (as measured)."""
    rng = np.random.default_rng(sum(map(ord, method)))
    maps = rng.random((len(ATTRIBUTION_ROWS), NET, NET))
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return ((maps - low) / (high - low)).astype(np.float16)


def make_workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    rng = np.random.default_rng(0)
    cache = ws.cache
    cache.dir.mkdir(parents=True)
    np.save(cache.images, rng.integers(0, 256, (len(IMAGES) + 2, SIDE, SIDE), dtype=np.uint8))
    index = pd.DataFrame(
        {
            "row": range(len(IMAGES) + 2),
            "image": [i[0] for i in IMAGES] + ["00000099_000.png", "00000099_001.png"],  # two train images
            "patient": [i[1] for i in IMAGES] + ["99", "99"],
            "label": [i[2] for i in IMAGES] + [0, 1],
            "boxes": [json.dumps(i[4]) if i[4] else "[]" for i in IMAGES] + ["[]", "[]"],
        }
    )
    index.to_csv(cache.index, index=False)
    pd.DataFrame({"row": []}).to_csv(cache.rejects, index=False)
    model = ws.model(ARCH, SEED)
    model.dir.mkdir(parents=True)
    pd.DataFrame(
        {
            "split": ["test"] * len(IMAGES) + ["train", "train"],
            "image": index["image"],
            "patient": index["patient"],
            "label": index["label"],
            "probability": [i[3] for i in IMAGES] + [0.1, 0.9],
        }
    ).to_csv(model.predictions, index=False)
    explain = ws.explain(ARCH, SEED)
    explain.dir.mkdir(parents=True)
    np.savez_compressed(
        explain.maps,
        images=np.array([i[0] for i in IMAGES]),
        explained_class=np.ones(len(IMAGES), dtype=np.int64),
        patients=np.array([i[1] for i in IMAGES]),
        **{f"raw/{m}": raw_maps(m) for m in CAMS},
        **{f"attr/{m}": attribution_maps(m) for m in ATTRIBUTIONS},
        **{f"attr_rows/{m}": np.array(ATTRIBUTION_ROWS, dtype=np.int64) for m in ATTRIBUTIONS},
    )
    rows = []

    def row(method: str, k: int, explained_class: int, has_box: bool, **measures: float) -> dict:
        """One per_image.csv row of image ``k``'s map; the measures not given are NaN."""
        image, patient, label, p, _ = IMAGES[k]
        return {
            "method": method,
            "index": k,
            "image": image,
            "explained_class": explained_class,
            "patient": patient,
            "label": label,
            "probability": p,
            "has_box": has_box,
            "pointing": np.nan,
            "energy": np.nan,
            "deletion": np.nan,
        } | measures

    for method in METHODS:
        for k, (_, _, _, _, boxes) in enumerate(IMAGES):
            if boxes:  # the localisation rows: class-1 maps of the boxed images
                rows.append(row(method, k, 1, True, pointing=float((k + len(method)) % 2), energy=0.1 * (k + 1)))
        # one faithfulness row of a No Finding decision map, and the one of image 6's decision map (Pneumonia)
        rows.append(row(method, 3, 0, False, deletion=0.25 if method == "gradcam" else 0.5))
        rows.append(row(method, 6, 1, False, deletion=0.75))
    pd.DataFrame(rows).to_csv(explain.per_image, index=False)
    metrics = ws.stage_metrics("explain", ARCH, SEED)
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"threshold": THRESHOLD}))
    ws.ratings.dir.mkdir()
    ws.ratings.readme.write_text("ratings\n")
    return ws
