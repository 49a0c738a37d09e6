"""The report's bootstrap: seconds per 1,000 resamples of every classification metric, numpy vs sklearn.

    python benchmarks/bench_report.py [--resamples 1000] [--sizes 35 500 5000]

`evaluation.classification.bootstrap_metrics` recomputes AUROC and AUPRC on every resample. It does so with its own
numpy functions (`auroc`, `average_precision`; tested equal to sklearn's `roc_auc_score` and
`average_precision_score` in tests/evaluation/test_classification.py); this script times the same bootstrap with
sklearn's functions put back, on random test sets of several sizes, and prints the largest difference between the
two results (0 up to float rounding).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrexplain.evaluation import classification


def timed_bootstrap(labels: np.ndarray, probabilities: np.ndarray, resamples: int) -> tuple[float, dict]:
    started = time.perf_counter()
    result = classification.bootstrap_metrics(labels, probabilities, 0.5, n=resamples, seed=0)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[35, 500, 5000])
    args = parser.parse_args()
    table = Table(title=f"bootstrap_metrics, {args.resamples} resamples, 8 metrics")
    for column in ("test images", "numpy s", "sklearn s", "speed-up", "max |difference|"):
        table.add_column(column, justify="right")
    rng = np.random.default_rng(0)
    ours = classification.auroc, classification.average_precision
    for size in args.sizes:
        labels = rng.integers(0, 2, size)
        probabilities = np.clip(labels * 0.3 + rng.random(size) * 0.7, 0, 1)
        fast, a = timed_bootstrap(labels, probabilities, args.resamples)
        classification.auroc = lambda y, s: float(roc_auc_score(y, s))
        classification.average_precision = lambda y, s: float(average_precision_score(y, s))
        try:
            slow, b = timed_bootstrap(labels, probabilities, args.resamples)
        finally:
            classification.auroc, classification.average_precision = ours
        difference = max(abs(a[m][q] - b[m][q]) for m in a for q in ("value", "low", "high"))
        table.add_row(f"{size:,}", f"{fast:.2f}", f"{slow:.2f}", f"{slow / fast:.1f}×", f"{difference:.1e}")
    Console().print(table)


if __name__ == "__main__":
    main()
