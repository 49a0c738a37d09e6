"""The seed spread: how much a metric moves when only the training seed changes.

Every architecture is trained and explained once per training seed (``params.seeds``; dvc.yaml's arch × seed matrix),
on the same cohort, split, explained images and tie orders. For each metric, :func:`spread` gives the per-seed values,
their mean and sample standard deviation (``ddof=1``) and a 95 % interval of the mean across seeds: Student's t,
``mean ± t(0.975, n − 1) · sd / √n`` (``scipy.stats.t.interval``, tested against it). The interval treats the seeds as
independent draws of the training's randomness (initial weights, shuffling, dropout, augmentation); with 3 seeds
``t(0.975, 2) = 4.30``, so it is wide: honest about how little three runs tell. It is a different quantity from the
bootstrap intervals beside it, which resample the test patients of one model and say nothing about retraining. It is
not clipped to a metric's range: an interval that leaves [0, 1] says that the seeds scatter too much to pin the mean.

:func:`seed_table` gathers, per seed, the test-set classification metrics at threshold 0.5 (from the seed's
predictions, :func:`cxrexplain.evaluation.classification.point_metrics`) and the Grad-CAM measures' means (from the
seed's ``metrics/explain/<arch>/seed<s>.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from cxrexplain.evaluation import classification as cls

CLASSIFICATION = ("accuracy", "precision", "recall", "auroc", "auprc")  # at threshold 0.5 on the test set
METHOD = "gradcam"  # the study's method: its measures get a seed spread


def t_quantile(n: int, confidence: float = 0.95) -> float:
    """Student's t quantile that makes the two-sided ``confidence`` interval of a mean of ``n`` values (n >= 2)."""
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1))


def spread(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Per-seed ``values`` (NaN: undefined for that seed, left out) as ``{values, n, mean, sd, low, high}``.

    ``sd`` is the sample standard deviation (ddof=1); ``low``/``high`` the t-interval of the mean at ``confidence``.
    One value: sd, low and high are NaN (no spread can be estimated from one run); none: everything NaN.
    """
    kept = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = len(kept)
    nan = float("nan")
    out = {"values": [float(v) for v in values], "n": n, "mean": float(kept.mean()) if n else nan}
    if n < 2:
        return {**out, "sd": nan, "low": nan, "high": nan}
    sd = float(kept.std(ddof=1))
    half = t_quantile(n, confidence) * sd / math.sqrt(n)
    return {**out, "sd": sd, "low": out["mean"] - half, "high": out["mean"] + half}


def test_metrics(predictions: pd.DataFrame, threshold: float = 0.5) -> dict[str, float]:
    """The test rows' :data:`CLASSIFICATION` metrics at ``threshold`` (float64)."""
    test = predictions[predictions["split"] == "test"]
    metrics = cls.point_metrics(test["label"].to_numpy(), test["probability"].to_numpy(), threshold)
    return {name: float(metrics[name]) for name in CLASSIFICATION}


def method_means(explained: Mapping, method: str = METHOD) -> dict[str, float]:
    """Every measure column's mean for ``method`` in an explain stage's metrics JSON (columns without a mean left
    out: sanity verdicts and the like)."""
    entry = explained.get("methods", {}).get(method, {})
    return {
        column: float(value["mean"])
        for column, value in entry.items()
        if isinstance(value, Mapping) and isinstance(value.get("mean"), int | float)
    }


def seed_table(predictions: Mapping[int, pd.DataFrame], explained: Mapping[int, Mapping]) -> pd.DataFrame:
    """One row per seed (index ``seed``, the order given): :data:`CLASSIFICATION` then ``gradcam/<column>``."""
    rows = {}
    for seed, frame in predictions.items():
        row = test_metrics(frame)
        row.update({f"{METHOD}/{k}": v for k, v in method_means(explained[seed]).items()})
        rows[seed] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "seed"
    return table


def summarise(table: pd.DataFrame) -> dict[str, dict]:
    """:func:`spread` of every column of a :func:`seed_table`, keyed by column."""
    return {column: spread(table[column].tolist()) for column in table.columns}


__all__ = [
    "CLASSIFICATION",
    "METHOD",
    "method_means",
    "seed_table",
    "spread",
    "summarise",
    "t_quantile",
    "test_metrics",
]
