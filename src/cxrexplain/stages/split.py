"""Stage ``split``: train / val / test by patient (``data/split.csv``, ``metrics/split.json``).

The work is :func:`cxrexplain.data.split.split_cohort`: no patient sits in two splits with ``group_by: patient``;
with ``group_by: image`` it records how many patients leak, which is the audit of the study's protocol.
"""

from __future__ import annotations

import logging

import pandas as pd

from cxrexplain.config import Params
from cxrexplain.data import layout
from cxrexplain.data.split import split_cohort
from cxrexplain.io import write_csv, write_json
from cxrexplain.workspace import Workspace

log = logging.getLogger("cxrexplain.split")


def run(params: Params, ws: Workspace | None = None) -> dict:
    """Assign every cached image to a split; returns the metrics written to ``metrics/split.json``."""
    ws = ws or Workspace()
    test_list = ws.raw / layout.TEST_LIST
    ws.require([ws.cache.index], needed_by="split", made_by="sample")
    if params.split.official_test:
        ws.require([test_list], needed_by="split (split.official_test)", made_by="download")
    index = pd.read_csv(ws.cache.index, usecols=["image", "patient", "label"])
    result = split_cohort(index, params.split, seed=params.seed, test_list=test_list)
    write_csv(ws.split, result.table)
    write_json(ws.stage_metrics("split"), result.metrics)
    leaks = result.metrics["patients_in_two_splits"]["any"]
    if params.split.group_by == "image":
        log.warning("group_by: image reproduces the study's leaky protocol: %d patient(s) in two splits", leaks)
    summary = result.metrics["splits"]
    parts = ", ".join(f"{n} {s['images']} ({s['patients']} patients)" for n, s in summary.items())
    log.info("split %d images: %s", len(index), parts)
    return result.metrics
