"""Do two architectures' CAMs of the same images agree? The library of stage consistency.

Both architectures' maps explain the same class, Pneumonia, on every image: the explain stage keeps them in
``maps.npz`` with the class of each map, and :func:`read_pneumonia_maps` refuses maps of any other class (comparing
one model's Pneumonia map with the other's No Finding map would measure nothing). :func:`compare` scores each pair with
:func:`~cxrexplain.explain.measures.consistency.consistency` (Spearman rank correlation and top-20 % region IoU, at
the network input's resolution) and summarises them per method with patient-clustered 95 % bootstrap intervals.
Only numpy and pandas: no model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    """One architecture's raw Pneumonia CAMs (method -> (N, h, w)) of the images ``images`` of ``patients``."""

    images: list[str]
    patients: np.ndarray
    raw: dict[str, np.ndarray]


def read_pneumonia_maps(path: Path, made_by: str) -> PneumoniaMaps:
    """The maps stage ``made_by`` wrote to ``path``; a :class:`CxrError` unless every map explains Pneumonia."""
    with np.load(path) as data:
        if "explained_class" not in data.files or not (data["explained_class"] == PNEUMONIA).all():
            raise CxrError(
                f"{path}: does not record Pneumonia maps for every image (written by an older explain stage?); "
                f"re-run `dvc repro {made_by}`"
            )
        raw = {k.removeprefix("raw/"): data[k] for k in data.files if k.startswith("raw/")}
        patients = data["patients"] if "patients" in data.files else data["images"]
        return PneumoniaMaps(list(data["images"]), patients.astype(str), raw)


def compare(
    maps: tuple[PneumoniaMaps, PneumoniaMaps],
    archs: tuple[str, str],
    config: ExplainParams,
    *,
    image_size: int,
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """Per method and image, the agreement of ``archs``' maps (``consistency.csv``), and per method the means with
    intervals (the metrics JSON). Ties are broken by ``config.tie_orders`` random orders; ``config.bootstrap``
    resamples of patients give each interval."""
    a, b = maps
    if a.images != b.images:
        raise CxrError(f"{archs[0]} and {archs[1]} explained different images; re-run both explain stages")
    size = (image_size, image_size)
    table = consistency_table(a.raw, b.raw, size, orders=config.tie_orders, seed=seed)
    table.insert(1, "image", np.asarray(a.images)[table["index"].to_numpy()])
    table.insert(2, "patient", a.patients[table["index"].to_numpy()])
    summary = pd.concat(
        [
            summarise(frame, by=None, metrics=["spearman", "top_iou"], n=config.bootstrap, seed=seed).assign(
                method=method
            )
            for method, frame in table.groupby("method", sort=False)
        ],
        ignore_index=True,
    )
    metrics = {
        "archs": list(archs),
        "images": len(a.images),
        "explained_class": "Pneumonia",
        "tie_orders": config.tie_orders,
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
    return table, metrics


__all__ = ["PneumoniaMaps", "compare", "read_pneumonia_maps"]
