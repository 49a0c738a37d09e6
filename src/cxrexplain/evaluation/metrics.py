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
