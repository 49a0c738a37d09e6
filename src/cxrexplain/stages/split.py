"""Stage ``split``: train / val / test by patient (``data/split.csv``, ``metrics/split.json``).

The stage itself checks that no patient sits in two splits when ``group_by: patient``; with ``group_by: image`` it
records how many patients leak, which is the audit of the study's protocol.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxrexplain.config import Params
from cxrexplain.data import layout, metadata
from cxrexplain.data.sample import INDEX_FILE
from cxrexplain.data.split import assign_splits, leakage, split_summary
from cxrexplain.errors import CxrError
from cxrexplain.io import write_csv, write_json
from cxrexplain.workspace import Workspace

CACHE_DIR = Workspace().cache.dir  # the workspace's path
METRICS_DIR = Workspace().metrics  # the workspace's path
RAW_DIR = Workspace().raw  # the workspace's path
SPLIT_FILE = Workspace().split  # the workspace's path

log = logging.getLogger("cxrexplain.split")


def run(
    params: Params,
    cache_dir: Path = CACHE_DIR,
    raw_dir: Path = RAW_DIR,
    split_file: Path = SPLIT_FILE,
    metrics_dir: Path = METRICS_DIR,
) -> dict:
    """Assign every cached image to a split; returns the metrics written to ``metrics/split.json``."""
    index_path = Path(cache_dir) / INDEX_FILE
    try:
        index = pd.read_csv(index_path, usecols=["image", "patient", "label"])
    except FileNotFoundError:
        raise CxrError(f"{index_path}: not found; run the sample stage first (dvc repro sample)") from None
    p = params.split
    test_images = metadata.read_image_list(Path(raw_dir) / layout.TEST_LIST) if p.official_test else None
    split = assign_splits(
        index, train=p.train, val=p.val, test=p.test, group_by=p.group_by, seed=params.seed, test_images=test_images
    )
    leaks = leakage(index, split)
    if p.group_by == "patient" and leaks["any"]:
        raise CxrError(f"split: {leaks['any']} patient(s) landed in two splits despite group_by: patient ({leaks})")
    summary = split_summary(index, split)
    table = index.assign(split=split.to_numpy())[["image", "patient", "label", "split"]]
    write_csv(split_file, table)
    metrics = {
        "group_by": p.group_by,
        "official_test": p.official_test,
        "splits": summary,
        "patients_in_two_splits": leaks,
        "fractions": {name: round(summary[name]["images"] / max(len(index), 1), 4) for name in summary},
    }
    write_json(Path(metrics_dir) / "split.json", metrics)
    if p.group_by == "image":
        log.warning(
            "group_by: image reproduces the study's leaky protocol: %d patient(s) have images in two splits",
            leaks["any"],
        )
    log.info(
        "split %d images: %s",
        len(index),
        ", ".join(f"{n} {s['images']} ({s['patients']} patients)" for n, s in summary.items()),
    )
    return metrics
