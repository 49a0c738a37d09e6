"""Stage consistency: do the two architectures' CAMs of the same images agree?

Reads ``explain/<arch>/maps.npz`` (raw CAMs at feature resolution) of both architectures; writes
``explain/consistency.csv`` (per method and image) and ``metrics/explain/consistency.json`` (means with 95 % bootstrap
intervals). Imports only torch, numpy and pandas: no model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrexplain.config import ARCHS, EXPLAIN_DIR, METRICS_DIR, Params
from cxrexplain.errors import CxrError
from cxrexplain.explain.evaluate import MAPS_FILE, consistency
from cxrexplain.explain.scores import summarise
from cxrexplain.io import write_csv, write_json


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
            loaded.append(
                (list(data["images"]), {k.removeprefix("raw/"): data[k] for k in data.files if k.startswith("raw/")})
            )
    (names_a, raw_a), (names_b, raw_b) = loaded
    if names_a != names_b:
        raise CxrError(f"{archs[0]} and {archs[1]} explained different images; re-run both explain stages")
    size = (params.train.image_size, params.train.image_size)
    table = consistency(raw_a, raw_b, size)
    table.insert(1, "image", np.asarray(names_a)[table["index"].to_numpy()])
    summary = pd.concat(
        [
            summarise(frame, by=None, metrics=["spearman", "top_iou"], seed=params.seed).assign(method=method)
            for method, frame in table.groupby("method", sort=False)
        ],
        ignore_index=True,
    )
    write_csv(Path(explain_dir) / "consistency.csv", table)
    metrics = {
        "archs": list(archs),
        "images": len(names_a),
        "methods": {
            method: {
                row["metric"]: {"mean": row["mean"], "low": row["low"], "high": row["high"]}
                for _, row in frame.iterrows()
            }
            for method, frame in summary.groupby("method", sort=False)
        },
    }
    write_json(Path(metrics_dir) / "explain" / "consistency.json", metrics)
    return metrics
