"""Do the architectures' CAMs of the same images agree, pair by pair? The library of stage consistency.

Every architecture's maps explain the same class, Pneumonia, on every image: the explain stage keeps them in
``maps.npz`` with the class of each map, and :func:`read_pneumonia_maps` refuses maps of any other class (comparing
one model's Pneumonia map with the other's No Finding map would measure nothing). It also reads the captum methods'
Pneumonia maps (``attr/``: only on the images with a box and the subset's Pneumonia-predicted images), which the
viewer shows; the consistency stage compares the CAMs only (every image has them, at the target layer's resolution
that :func:`compare` is defined on). :func:`compare` scores each pair with
:func:`~cxrexplain.explain.measures.consistency.consistency` (Spearman rank correlation and top-20 % region IoU, at
the network input's resolution) and summarises them per method with patient-clustered 95 % bootstrap intervals.
Only numpy and pandas: no model is loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrexplain.errors import CxrError
from cxrexplain.explain.evaluate import PNEUMONIA, consistency_table
from cxrexplain.explain.measures.statistics import summarise

if TYPE_CHECKING:
    from cxrexplain.config import ExplainParams


@dataclass(frozen=True)
class PneumoniaMaps:
    """One architecture's raw Pneumonia CAMs (method -> (N, h, w)) of the images ``images`` of ``patients``, and its
    captum methods' Pneumonia maps (method -> (K, H, W) in [0, 1]) of the images ``attribution_rows[method]`` (K
    sorted indices into ``images``)."""

    images: list[str]
    patients: np.ndarray
    raw: dict[str, np.ndarray]
    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    attribution_rows: dict[str, np.ndarray] = field(default_factory=dict)


def read_pneumonia_maps(path: Path, made_by: str) -> PneumoniaMaps:
    """The maps stage ``made_by`` wrote to ``path`` (:func:`cxrexplain.explain.pipeline.write_maps`); a
    :class:`CxrError` unless every map explains Pneumonia and every captum map names valid images."""
    with np.load(path) as data:
        if "explained_class" not in data.files or not (data["explained_class"] == PNEUMONIA).all():
            raise CxrError(
                f"{path}: does not record Pneumonia maps for every image (written by an older explain stage?); "
                f"re-run `dvc repro {made_by}`"
            )
        images = list(data["images"])
        raw = {k.removeprefix("raw/"): data[k] for k in data.files if k.startswith("raw/")}
        patients = data["patients"] if "patients" in data.files else data["images"]
        attributions, rows = {}, {}
        for key in data.files:
            if key.startswith("attr/"):
                method = key.removeprefix("attr/")
                attributions[method], rows[method] = _attribution(path, data, method, len(images), made_by)
            elif key.startswith("attr_rows/") and f"attr/{key.removeprefix('attr_rows/')}" not in data.files:
                raise CxrError(f"{path}: {key} without its maps attr/{key.removeprefix('attr_rows/')}")
        return PneumoniaMaps(images, patients.astype(str), raw, attributions, rows)


def _attribution(path: Path, data: Mapping, method: str, n: int, made_by: str) -> tuple[np.ndarray, np.ndarray]:
    """``attr/<method>`` and ``attr_rows/<method>`` of an open ``maps.npz``, checked: (K, H, W) finite maps in [0, 1]
    and K distinct sorted integer indices below ``n`` (the number of images)."""
    maps, key = data[f"attr/{method}"], f"attr_rows/{method}"
    if key not in data.files:
        raise CxrError(f"{path}: attr/{method} without {key} (the images it covers); re-run `dvc repro {made_by}`")
    rows = data[key]
    if maps.ndim != 3 or maps.dtype.kind != "f" or rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise CxrError(
            f"{path}: attr/{method} must be (K, H, W) floats and {key} (K,) integers "
            f"(got {maps.dtype}{list(maps.shape)} and {rows.dtype}{list(rows.shape)})"
        )
    if len(rows) != len(maps) or (len(rows) and (rows[0] < 0 or rows[-1] >= n or (np.diff(rows) <= 0).any())):
        raise CxrError(f"{path}: {key} must be {len(maps)} increasing image indices in 0..{n - 1}")
    if not np.isfinite(maps).all() or (maps.size and (maps.min() < 0 or maps.max() > 1)):
        raise CxrError(f"{path}: attr/{method} holds values outside [0, 1]")
    return maps, rows.astype(np.int64)


def pairs(archs: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of ``archs``, in the order given: (a0, a1), (a0, a2), ..., (a1, a2), ..."""
    return list(itertools.combinations(archs, 2))


def compare(
    maps: Mapping[str, PneumoniaMaps],
    config: ExplainParams,
    *,
    image_size: int,
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """For every pair of architectures (:func:`pairs` of ``maps``' keys, arch → its maps), per method and image, the
    agreement of their maps (``consistency.csv``: columns ``arch_a``, ``arch_b`` first), and per pair and method the
    means with intervals (the metrics JSON: ``pairs``, one entry per pair; none with one architecture). Ties are
    broken by ``config.tie_orders`` random orders; ``config.bootstrap`` resamples of patients give each interval."""
    archs = list(maps)
    first = maps[archs[0]]
    for arch in archs[1:]:
        if maps[arch].images != first.images:
            raise CxrError(f"{archs[0]} and {arch} explained different images; re-run both explain stages")
    size = (image_size, image_size)
    tables, entries = [], []
    for arch_a, arch_b in pairs(archs):
        a, b = maps[arch_a], maps[arch_b]
        table = consistency_table(a.raw, b.raw, size, orders=config.tie_orders, seed=seed)
        table.insert(0, "arch_a", arch_a)
        table.insert(1, "arch_b", arch_b)
        table.insert(3, "image", np.asarray(a.images)[table["index"].to_numpy()])
        table.insert(4, "patient", a.patients[table["index"].to_numpy()])
        tables.append(table)
        summary = pd.concat(
            [
                summarise(frame, by=None, metrics=["spearman", "top_iou"], n=config.bootstrap, seed=seed).assign(
                    method=method
                )
                for method, frame in table.groupby("method", sort=False)
            ],
            ignore_index=True,
        )
        entries.append(
            {
                "archs": [arch_a, arch_b],
                "methods": {
                    method: {
                        row["metric"]: {
                            "mean": row["mean"],
                            "low": row["low"],
                            "high": row["high"],
                            "n": int(row["n"]),
                            "clusters": int(row["clusters"]),
                        }
                        for _, row in frame.iterrows()
                    }
                    for method, frame in summary.groupby("method", sort=False)
                },
            }
        )
    columns = ["arch_a", "arch_b", "method", "image", "patient", "index", "spearman", "top_iou", "tied_a", "tied_b"]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
    metrics = {
        "archs": archs,
        "images": len(first.images),
        "explained_class": "Pneumonia",
        "tie_orders": config.tie_orders,
        "pairs": entries,
    }
    return table, metrics


__all__ = ["PneumoniaMaps", "compare", "pairs", "read_pneumonia_maps"]
