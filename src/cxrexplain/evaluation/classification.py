"""Test-set classification metrics with 95 % bootstrap intervals, curves and calibration, for the report.

Point estimates come from :func:`cxrexplain.evaluation.metrics.binary_metrics` (torchmetrics) plus AUPRC (sklearn's
average precision) and the expected calibration error; intervals are percentile bootstrap over images (resampled
with replacement, ``n`` times, fixed seed). A resample with one class only gives no AUROC/AUPRC and is skipped for
those two.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxrexplain.evaluation.metrics import binary_metrics

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auroc", "auprc", "ece")


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """ECE: Σ_b (n_b / n) · |mean(label in b) − mean(probability in b)| over ``bins`` equal-width probability bins."""
    labels = np.asarray(labels, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    if len(labels) == 0:
        return float("nan")
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - probabilities[inside].mean())
    return float(total)


def point_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric of :data:`METRICS` at ``threshold`` (predicted positive when probability > threshold)."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    out = binary_metrics(labels, probabilities, threshold=threshold)
    both = len(np.unique(labels)) == 2
    out["auprc"] = float(average_precision_score(labels, probabilities)) if both else float("nan")
    out["ece"] = expected_calibration_error(labels, probabilities)
    return {k: out[k] for k in METRICS}


def _fast_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """:func:`point_metrics` in plain numpy/sklearn (the bootstrap calls it 1000s of times; tested equal)."""
    predicted = probabilities > threshold
    positive = labels == 1
    tp = float(np.sum(predicted & positive))
    fp = float(np.sum(predicted & ~positive))
    fn = float(np.sum(~predicted & positive))
    tn = float(np.sum(~predicted & ~positive))
    n = tp + fp + fn + tn

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0  # torchmetrics' zero_division default

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    both = 0 < positive.sum() < len(labels)
    return {
        "accuracy": ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * precision * recall, precision + recall),
        "auroc": float(roc_auc_score(labels, probabilities)) if both else float("nan"),
        "auprc": float(average_precision_score(labels, probabilities)) if both else float("nan"),
        "ece": expected_calibration_error(labels, probabilities),
    }


def bootstrap_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "low", "high"}}``: the point estimate and its percentile-bootstrap interval."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    point = point_metrics(labels, probabilities, threshold)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        m = _fast_metrics(labels[idx], probabilities[idx], threshold)
        for k, v in m.items():
            if not np.isnan(v):
                draws[k].append(v)
    out = {}
    for k in METRICS:
        values = np.asarray(draws[k])
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2]) if len(values) else (np.nan, np.nan)
        out[k] = {"value": point[k], "low": float(low), "high": float(high)}
    return out


def confusion(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """2×2 counts ``[[TN, FP], [FN, TP]]`` (rows: true No Finding, Pneumonia; columns: predicted)."""
    predicted = (np.asarray(probabilities) > threshold).astype(int)
    return confusion_matrix(np.asarray(labels).astype(int), predicted, labels=[0, 1])


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(probabilities, dtype=float))
    return fpr, tpr


def pr_points(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    precision, recall, _ = precision_recall_curve(
        np.asarray(labels).astype(int), np.asarray(probabilities, dtype=float)
    )
    return recall, precision


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """Per non-empty bin: (mean probability, observed Pneumonia rate, count)."""
    labels = np.asarray(labels, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    return [
        (float(probabilities[which == b].mean()), float(labels[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]
