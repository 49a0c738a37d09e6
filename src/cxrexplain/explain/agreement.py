"""Do the architectures' CAMs of the same images agree, pair by pair? The library of stage consistency.

Every architecture's maps explain the same class, Pneumonia, on every image: the explain stage keeps them in
``maps.npz`` with the class of each map, and :func:`read_pneumonia_maps` refuses maps of any other class (comparing
one model's Pneumonia map with the other's No Finding map would measure nothing). :func:`compare` scores each pair with
:func:`~cxrexplain.explain.measures.consistency.consistency` (Spearman rank correlation and top-20 % region IoU, at
the network input's resolution) and summarises them per method with patient-clustered 95 % bootstrap intervals.
Only numpy and pandas: no model is loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
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
