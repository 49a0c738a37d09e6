"""Test-set classification metrics with 95 % bootstrap intervals, curves and calibration, for the report.

Point estimates and every bootstrap resample come from :func:`point_metrics`, in float64 numpy: the counts at the
threshold give accuracy, precision, recall, specificity and F1 (torchmetrics' conventions: predicted positive when
``probability > threshold``, 0 for a ratio over zero), :func:`auroc` and :func:`average_precision` equal sklearn's
``roc_auc_score`` and ``average_precision_score``, plus the expected calibration error. Tested equal to
torchmetrics' functional metrics (what training logs, :func:`cxrexplain.evaluation.metrics.binary_metrics`), which
return float32 ratios (so equal to 1e-7, not bitwise), and to sklearn's. The report imports no torch through this
module. Intervals are percentile bootstrap over images, or over patients when cluster ids are given (resampled with
replacement, ``n`` times, fixed seed). A resample with one class only gives no AUROC/AUPRC and is skipped for those
two. Two AUROCs on the same images are compared with DeLong's test (:func:`delong`); metrics of two different sets
of images (the leakage audit's two test sets) with :func:`bootstrap_difference`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.stats
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from cxrexplain.explain.measures.statistics import Clusters

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


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity − 1 on these predictions (sklearn's ROC).

    Predictions are positive when ``probability > threshold`` (torchmetrics' rule). Every threshold between the
    lowest score called positive at the best ROC point and the next lower score gives the same J; the middle of that
    gap is returned, so that a well-separated validation set (scores near 0 and 1) gives a threshold near the middle
    rather than at the edge of the positives. The best point that calls everything positive gives the value just
    below the lowest score; one class only: 0.5.
    """
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(probabilities, dtype=np.float64), drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    cut = min(float(thresholds[best]), 1.0)  # thresholds[0] is +inf: nothing called positive
    if best + 1 < len(thresholds):
        return float((cut + float(thresholds[best + 1])) / 2)
    return float(np.nextafter(cut, -np.inf))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic: ``(Σ midrank(positives) − m(m+1)/2) / (m·n)`` for ``m`` positives and
    ``n`` negatives, ties counted one half (midranks). Equals sklearn's ``roc_auc_score`` (trapezoids under the ROC
    curve; tested to 1e-12 on random tied scores) without its input validation: with it and sklearn's average
    precision, 1,000 bootstrap resamples of 35 test images took 6.9 s instead of 0.7 s
    (``benchmarks/bench_report.py``). Both classes are needed (else ``ValueError``, as sklearn)."""
    positive = np.asarray(labels) == 1
    m = int(positive.sum())
    n = positive.size - m
    if m == 0 or n == 0:
        raise ValueError("AUROC needs both classes")
    ranks = scipy.stats.rankdata(scores)
    return float((ranks[positive].sum() - m * (m + 1) / 2) / (m * n))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP ``= Σ_k (R_k − R_{k−1}) · P_k`` over the distinct scores taken as thresholds from the highest (recall
    ``R_0 = 0``): sklearn's ``average_precision_score`` convention (a step function, no interpolation; tied scores
    are one threshold), tested equal on random tied scores. At least one positive is needed (else ``ValueError``)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], (labels[order] == 1)
    last_of_each_score = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tp = np.cumsum(hits)[last_of_each_score]
    if tp[-1] == 0:
        raise ValueError("average precision needs a positive image")
    precision = tp / (last_of_each_score + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def point_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric of :data:`METRICS` at ``threshold`` (predicted positive when probability > threshold, in
    float64); AUROC and AUPRC are NaN with one class only (undefined there). The bootstrap calls it per resample."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
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
        "auroc": auroc(labels, probabilities) if both else float("nan"),
        "auprc": average_precision(labels, probabilities) if both else float("nan"),
        "ece": expected_calibration_error(labels, probabilities),
    }


def bootstrap_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters: Any = None,
) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "low", "high"}}``: the point estimate and its percentile-bootstrap interval.

    Without ``clusters`` each resample draws ``len(labels)`` images with replacement (``rng.integers`` per resample,
    ``numpy.random.default_rng(seed)``). With ``clusters`` (one id per image, e.g. the patient) each resample draws
    the ``k`` clusters with replacement and takes every image of the drawn clusters (the cluster bootstrap, as
    :func:`cxrexplain.explain.measures.statistics.bootstrap_ci`); with one image per cluster it draws the same
    indices and gives exactly the unclustered result.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    point = point_metrics(labels, probabilities, threshold)
    groups = None
    if clusters is not None:
        if len(clusters) != len(labels):
            raise ValueError(f"clusters must give one id per image: {len(clusters)} ids for {len(labels)} images")
        groups = Clusters.of(clusters)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(n):
        if groups is None:
            idx = rng.integers(0, len(labels), len(labels))
        else:
            idx = groups.members(rng.integers(0, groups.k, groups.k))
        m = point_metrics(labels[idx], probabilities[idx], threshold)
        for k, v in m.items():
            if not np.isnan(v):
                draws[k].append(v)
    out = {}
    for k in METRICS:
        values = np.asarray(draws[k])
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2]) if len(values) else (np.nan, np.nan)
        out[k] = {"value": point[k], "low": float(low), "high": float(high)}
    return out


def cluster_bootstrap_difference(
    run: np.ndarray,
    ref: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    run_clusters: Sequence | None = None,
    ref_clusters: Sequence | None = None,
    paired: bool = False,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(difference, low, high)``, each one value per component of ``statistic``: ``statistic(run) −
    statistic(ref)`` and its percentile-bootstrap ``1 − alpha`` interval.

    ``run`` and ``ref`` hold one row per image (any number of columns); ``statistic`` maps such rows to a vector (NaN
    allowed: that component of that resample is left out, e.g. an AUROC of a one-class resample). Clusters (one id per
    row, e.g. the patient; default: every row its own) are resampled with replacement, every row of a drawn cluster
    taken (the cluster bootstrap, as :func:`cxrexplain.explain.measures.statistics.bootstrap_ci`). The one
    implementation of a bootstrapped difference: :func:`bootstrap_difference` (the leakage audit) and
    ``cxrexplain compare`` (:mod:`cxrexplain.evaluation.compare`) call it.

    ``paired``: ``run`` and ``ref`` are the same images in the same order; the clusters (``run_clusters``) are drawn
    once per resample for both sides, ``rng.integers(0, k, (n, k))`` from ``numpy.random.default_rng(seed)``, the
    draws of :func:`~cxrexplain.explain.measures.statistics.bootstrap_ci` (so for ``statistic = mean`` the result is
    ``bootstrap_ci`` of the per-image differences, tested). Unpaired: each side's clusters are drawn independently,
    the run's ``(n, k_run)`` draws first.
    """
    run, ref = np.asarray(run, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if paired and len(run) != len(ref):
        raise ValueError(f"paired samples must have the same rows: {len(run)} and {len(ref)}")

    def clusters(ids: Sequence | None, size: int) -> Clusters:
        return Clusters.of(np.arange(size) if ids is None else ids)

    run_groups = clusters(run_clusters, len(run))
    ref_groups = run_groups if paired else clusters(ref_clusters, len(ref))
    rng = np.random.default_rng(seed)
    run_draws = rng.integers(0, run_groups.k, size=(n, run_groups.k))
    ref_draws = run_draws if paired else rng.integers(0, ref_groups.k, size=(n, ref_groups.k))
    estimate = np.atleast_1d(
        np.asarray(statistic(run), dtype=np.float64) - np.asarray(statistic(ref), dtype=np.float64)
    )
    resampled = np.array(
        [
            np.asarray(statistic(run[run_groups.members(a)]), dtype=np.float64)
            - np.asarray(statistic(ref[ref_groups.members(b)]), dtype=np.float64)
            for a, b in zip(run_draws, ref_draws, strict=True)
        ]
    ).reshape(n, -1)
    low, high = np.full(estimate.shape, np.nan), np.full(estimate.shape, np.nan)
    for j in range(estimate.size):
        values = resampled[:, j][~np.isnan(resampled[:, j])]
        if len(values):
            low[j], high[j] = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return estimate, low, high


def bootstrap_difference(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    threshold: float,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters_a: Any = None,
    clusters_b: Any = None,
) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "low", "high"}}`` of the difference ``metric(b) − metric(a)`` between two test sets.

    ``a`` and ``b`` are ``(labels, probabilities)`` of two *different* sets of images (e.g. the test sets of a
    patient-wise and an image-level split of one cohort), so the two are not paired: each resample draws set ``b``
    and, independently, set ``a`` with replacement (their clusters, e.g. patients, when ``clusters_a`` /
    ``clusters_b`` are given, as :func:`bootstrap_metrics` does for one set) and takes the difference of the two
    resamples' metrics (:func:`cluster_bootstrap_difference`, ``b``'s draws first); the interval is the ``alpha/2``
    and ``1 − alpha/2`` percentiles of those ``n`` differences (the percentile bootstrap of a two-sample statistic, as
    ``scipy.stats.bootstrap(..., paired=False, method="percentile")``). A resample in which either set has one class
    only gives no AUROC/AUPRC difference and is skipped for those two. For two AUROCs on the *same* images use
    :func:`delong`.
    """
    rows = []
    for (labels, probabilities), clusters in ((a, clusters_a), (b, clusters_b)):
        labels = np.asarray(labels).astype(int)
        if clusters is not None and len(clusters) != len(labels):
            raise ValueError(f"clusters must give one id per image: {len(clusters)} ids for {len(labels)} images")
        rows.append(np.column_stack([labels, np.asarray(probabilities, dtype=np.float64)]))

    def metrics(table: np.ndarray) -> np.ndarray:
        values = point_metrics(table[:, 0].astype(int), table[:, 1], threshold)
        return np.array([values[k] for k in METRICS])

    value, low, high = cluster_bootstrap_difference(
        rows[1], rows[0], metrics, run_clusters=clusters_b, ref_clusters=clusters_a, n=n, alpha=alpha, seed=seed
    )
    return {k: {"value": float(value[j]), "low": float(low[j]), "high": float(high[j])} for j, k in enumerate(METRICS)}


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of ``k`` scores on the same images and their covariance matrix (DeLong, DeLong & Clarke-Pearson 1988).

    ``scores`` is (k, N) (or (N,)), ``labels`` (N,) with 0/1. With ``m`` positives X and ``n`` negatives Y, and
    ``ψ(x, y) = 1`` if ``x > y``, ``1/2`` if equal, ``0`` otherwise: the structural components (placements)
    ``V10_i = (1/n) Σ_j ψ(X_i, Y_j)`` and ``V01_j = (1/m) Σ_i ψ(X_i, Y_j)``, ``AUC = mean V10 = mean V01``,
    ``S10``/``S01`` their k×k sample covariances (divisor ``m − 1``, ``n − 1``) and ``S = S10/m + S01/n``.
    Computed in O(N log N) with midranks (Sun & Xu 2014, IEEE Signal Process. Lett. 21:1389-1393):
    ``V10_i = (T_Z(X_i) − T_X(X_i)) / n`` and ``V01_j = 1 − (T_Z(Y_j) − T_Y(Y_j)) / m``, with ``T`` the midranks
    within all images (Z), the positives (X) and the negatives (Y). Fewer than two images of a class: ``ValueError``.
    """
    labels = np.asarray(labels).ravel()
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != labels.size:
        raise ValueError(f"scores have {scores.shape[1]} images, labels {labels.size}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(
            f"DeLong's test needs at least two positive and two negative images (got {m} positive, {n} negative): "
            "the AUROC or its variance is undefined"
        )
    x, y = scores[:, positive], scores[:, ~positive]
    t_z = scipy.stats.rankdata(scores, axis=1)
    t_x = scipy.stats.rankdata(x, axis=1)
    t_y = scipy.stats.rankdata(y, axis=1)
    v10 = (t_z[:, positive] - t_x) / n
    v01 = 1.0 - (t_z[:, ~positive] - t_y) / m
    aucs = v10.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """DeLong's test of two correlated AUROCs on the same images (DeLong et al. 1988, Biometrics 44:837-845).

    ``difference = auc_a − auc_b``, ``se = sqrt(S_aa + S_bb − 2 S_ab)`` from :func:`delong_covariance`,
    ``z = difference / se``, two-sided ``p = 2 Φ(−|z|)``, and the normal ``1 − alpha`` interval
    ``difference ± z_{1−alpha/2} · se``. When ``se = 0`` (e.g. identical scores): ``z = 0, p = 1`` if the
    difference is 0, else ``z = ±inf, p = 0``. Images are treated as independent (no patient clustering).
    Returns ``auc_a, auc_b, difference, se, z, p, low, high``.
    """
    aucs, s = delong_covariance(labels, np.vstack([np.ravel(scores_a), np.ravel(scores_b)]))
    difference = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(s[0, 0] + s[1, 1] - 2 * s[0, 1], 0.0)))  # rounding can make a zero variance negative
    z = difference / se if se > 0 else 0.0 if difference == 0 else float(np.copysign(np.inf, difference))
    p = float(2 * scipy.stats.norm.sf(abs(z)))
    half = float(scipy.stats.norm.ppf(1 - alpha / 2)) * se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": difference,
        "se": se,
        "z": float(z),
        "p": p,
        "low": difference - half,
        "high": difference + half,
    }


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
