"""Binary classification metrics from labels and probabilities, through torchmetrics' functional API."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_specificity,
)


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, accuracy, precision, recall (sensitivity), specificity and F1 at ``threshold`` (same names as training).

    AUROC is NaN when only one class is present (it is undefined there). Probabilities are passed to torchmetrics in
    float64, so ``probability > threshold`` is decided in float64 as everywhere else (in float32, 0.99999997 rounds
    to 0.99999994 and a threshold between the two flipped the prediction). Probabilities must lie in [0, 1]: outside
    that range torchmetrics takes them for logits and applies a sigmoid. torchmetrics returns its ratios in float32
    (relative rounding below 6e-8); the counts behind them are exact.
    """
    target = torch.tensor(np.array(labels), dtype=torch.long)
    preds = torch.tensor(np.array(probabilities), dtype=torch.float64)
    both = bool(target.min() != target.max()) if len(target) else False
    return {
        "auroc": float(binary_auroc(preds, target)) if both else float("nan"),
        "accuracy": float(binary_accuracy(preds, target, threshold=threshold)),
        "precision": float(binary_precision(preds, target, threshold=threshold)),
        "recall": float(binary_recall(preds, target, threshold=threshold)),
        "specificity": float(binary_specificity(preds, target, threshold=threshold)),
        "f1": float(binary_f1_score(preds, target, threshold=threshold)),
    }


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity − 1 on these predictions (sklearn's ROC).

    Predictions are positive when ``probability > threshold`` (torchmetrics' rule). Every threshold between the
    lowest score called positive at the best ROC point and the next lower score gives the same J; the middle of that
    gap is returned, so that a well-separated validation set (scores near 0 and 1) gives a threshold near the middle
    rather than at the edge of the positives. The best point that calls everything positive gives the value just
    below the lowest score; one class only: 0.5.
    """
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(probabilities, dtype=np.float64), drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    cut = min(float(thresholds[best]), 1.0)  # thresholds[0] is +inf: nothing called positive
    if best + 1 < len(thresholds):
        return float((cut + float(thresholds[best + 1])) / 2)
    return float(np.nextafter(cut, -np.inf))
