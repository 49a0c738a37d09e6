"""Stage consistency: do the two architectures' CAMs of the same images agree?

Both architectures' maps explain the same class, Pneumonia, on every image (``maps.npz`` records the class of each
map and the stage refuses maps of any other class): comparing one model's Pneumonia map with the other's No Finding
map would measure nothing. Reads ``explain/<arch>/maps.npz`` (raw CAMs at feature resolution) of both; writes
``explain/consistency.csv`` (per method and image) and ``metrics/explain/consistency.json`` (means with 95 % bootstrap
intervals). Imports only torch, numpy and pandas: no model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrexplain.config import ARCHS, Params
from cxrexplain.errors import CxrError
from cxrexplain.explain.evaluate import MAPS_FILE, PNEUMONIA, consistency_table
from cxrexplain.explain.measures.statistics import summarise
from cxrexplain.io import write_csv, write_json
from cxrexplain.workspace import Workspace

EXPLAIN_DIR = Workspace().consistency.parent  # the workspace's path
METRICS_DIR = Workspace().metrics  # the workspace's path


def run(
    params: Params, *, explain_dir: Path = EXPLAIN_DIR, metrics_dir: Path = METRICS_DIR, archs: tuple[str, ...] = ARCHS
) -> dict:
    """Rank correlation and top-20 % region IoU of the two architectures' CAMs, per method; returns the metrics."""
    if len(archs) != 2:
        raise CxrError(f"consistency compares two architectures, got {archs}")
    loaded = []
    for arch in archs:
        path = Path(explain_dir) / arch / MAPS_FILE
        if not path.is_file():
            raise CxrError(f"{path}: not found; run dvc repro explain@{arch} first")
        with np.load(path) as data:
            if "explained_class" not in data.files or not (data["explained_class"] == PNEUMONIA).all():
                raise CxrError(
                    f"{path}: does not record Pneumonia maps for every image (written by an older explain stage?); "
                    f"re-run dvc repro explain@{arch}"
                )
            raw = {k.removeprefix("raw/"): data[k] for k in data.files if k.startswith("raw/")}
            patients = data["patients"] if "patients" in data.files else data["images"]
            loaded.append((list(data["images"]), patients.astype(str), raw))
    (names_a, patients, raw_a), (names_b, _, raw_b) = loaded
    if names_a != names_b:
        raise CxrError(f"{archs[0]} and {archs[1]} explained different images; re-run both explain stages")
    size = (params.train.image_size, params.train.image_size)
    table = consistency_table(raw_a, raw_b, size, orders=params.explain.tie_orders, seed=params.seed)
    table.insert(1, "image", np.asarray(names_a)[table["index"].to_numpy()])
    table.insert(2, "patient", patients[table["index"].to_numpy()])
    summary = pd.concat(
        [
            summarise(
                frame, by=None, metrics=["spearman", "top_iou"], n=params.explain.bootstrap, seed=params.seed
            ).assign(method=method)
            for method, frame in table.groupby("method", sort=False)
        ],
        ignore_index=True,
    )
    write_csv(Path(explain_dir) / "consistency.csv", table)
    metrics = {
        "archs": list(archs),
        "images": len(names_a),
        "explained_class": "Pneumonia",
        "tie_orders": params.explain.tie_orders,
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
    write_json(Path(metrics_dir) / "explain" / "consistency.json", metrics)
    return metrics
