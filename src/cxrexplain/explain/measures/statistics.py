"""Intervals and paired tests for per-image scores: (patient-clustered) bootstrap, summaries, method comparisons.

Every interval is a percentile bootstrap (Efron & Tibshirani 1993, ch. 13): ``n`` resamples drawn with replacement
from ``numpy.random.default_rng(seed)`` (deterministic per seed), and the ``alpha/2`` and ``1 − alpha/2`` quantiles
(``numpy.quantile``, linear interpolation) of the resampled statistic. Images of one patient are not independent
(ChestX-ray14 holds several images of many patients), so with cluster ids (one per value, e.g. the patient id) the
bootstrap resamples whole clusters instead of single values: the cluster bootstrap (Davison & Hinkley 1997, §3.8;
Field & Welsh 2007, "Bootstrapping clustered data", JRSS B 69:369-390), which keeps the within-patient correlation
in every resample.

Public: :func:`bootstrap_ci`, :func:`summarise`, :func:`outcomes`, :func:`paired_comparisons`, :func:`holm`,
:class:`Clusters` (cluster bookkeeping shared with :mod:`cxrexplain.evaluation.classification`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.stats

OUTCOMES: tuple[str, ...] = ("TP", "FN", "FP", "TN")

PAIRED_COLUMNS: tuple[str, ...] = (
    "method_a",
    "method_b",
    "measure",
    "n",
    "mean_difference",
    "low",
    "high",
    "p",
    "p_holm",
    "test",
)
"""Columns of :func:`paired_comparisons`."""


@dataclass(frozen=True)
class Clusters:
    """Cluster ids turned into integer codes, with each cluster's members, for resampling whole clusters.

    ``codes[i]`` is the cluster of value ``i``; clusters are numbered in order of first appearance, so with one value
    per cluster ``codes == arange(m)`` and resampling clusters draws exactly the indices a plain bootstrap draws.
    ``order`` lists the values sorted by cluster (stable), cluster ``c`` owning ``order[starts[c]:starts[c] +
    counts[c]]``.
    """

    codes: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, ids: Any) -> Clusters:
        """From one id per value (any hashable: patient ids as int or str). Missing ids raise ``ValueError``."""
        ids = np.asarray(ids, dtype=object).ravel()
        codes, _ = pd.factorize(pd.Series(ids, dtype=object))
        if (codes < 0).any():
            raise ValueError("cluster ids must not be missing (None/NaN): give every value its cluster")
        counts = np.bincount(codes, minlength=int(codes.max(initial=-1)) + 1)
        return cls(codes, np.argsort(codes, kind="stable"), np.cumsum(counts) - counts, counts)

    @property
    def k(self) -> int:
        """Number of clusters."""
        return len(self.counts)

    def members(self, draws: np.ndarray) -> np.ndarray:
        """Indices of every value of the drawn clusters (1-d ``draws``, repeats allowed), cluster after cluster."""
        draws = np.asarray(draws)
        lengths = self.counts[draws]
        ends = np.cumsum(lengths)
        if len(ends) == 0:
            return np.zeros(0, dtype=np.intp)
        within = np.arange(ends[-1]) - np.repeat(ends - lengths, lengths)
        return self.order[np.repeat(self.starts[draws], lengths) + within]


def _as_float_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor (duck-typed: this module does not need torch)
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def bootstrap_ci(
    values: Any,
    stat: Callable[[np.ndarray], float] = np.mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    clusters: Any = None,
) -> tuple[float, float, float]:
    """``(stat(values), low, high)``: the statistic and its percentile-bootstrap ``1 − alpha`` interval.

    NaN values are dropped first, with their cluster ids (an undefined per-image score does not count); booleans
    count as 0/1; a torch tensor is accepted. No values left: ``(nan, nan, nan)``.

    Plain (``clusters=None``): ``n`` resamples of the ``m`` remaining values, index matrix
    ``rng.integers(0, m, (n, m))``. Clustered (``clusters``: one id per value, e.g. patient ids): the ``k`` clusters
    are resampled, ``rng.integers(0, k, (n, k))`` with clusters numbered by first appearance, and the statistic is
    computed on all values of the drawn clusters (a cluster drawn twice counts twice). For ``np.mean`` that is
    ``Σ_drawn cluster sums / Σ_drawn cluster sizes``, vectorised; other statistics loop over the resamples. With one
    value per cluster the clustered bootstrap draws the same indices and gives exactly the plain result.
    """
    data = _as_float_array(values)
    keep = ~np.isnan(data)
    ids = None
    if clusters is not None:
        ids = np.asarray(clusters, dtype=object).ravel()
        if ids.size != data.size:
            raise ValueError(f"clusters must give one id per value: {ids.size} ids for {data.size} values")
        ids = ids[keep]
    data = data[keep]
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    estimate = float(stat(data))
    rng = np.random.default_rng(seed)
    if ids is None:
        indices = rng.integers(0, data.size, size=(n, data.size))
        if stat is np.mean:  # vectorised: the explain and report stages call this thousands of times
            resampled = data[indices].mean(axis=1)
        else:
            resampled = np.array([stat(data[row]) for row in indices], dtype=np.float64)
    else:
        groups = Clusters.of(ids)
        draws = rng.integers(0, groups.k, size=(n, groups.k))
        if stat is np.mean:
            sums = np.bincount(groups.codes, weights=data, minlength=groups.k)
            resampled = sums[draws].sum(axis=1) / groups.counts[draws].sum(axis=1)
        else:
            resampled = np.array([stat(data[groups.members(row)]) for row in draws], dtype=np.float64)
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return estimate, float(low), float(high)


def summarise(
    per_image: pd.DataFrame,
    by: str | None = "outcome",
    metrics: Sequence[str] | None = None,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    cluster: str | None = "patient",
) -> pd.DataFrame:
    """Mean and bootstrap CI of each metric, over all images (group ``all``) and per value of ``by``.

    ``metrics`` defaults to the numeric and boolean columns other than ``by`` and ``cluster``. When ``per_image``
    has the ``cluster`` column (patient ids), intervals are patient-clustered (:func:`bootstrap_ci` with
    ``clusters``); without it every image is its own cluster (the plain bootstrap). One row per (group, metric):
    ``group``, ``metric``, ``n`` (non-NaN values), ``clusters`` (distinct clusters among those values; ``n`` without
    the cluster column), ``mean``, ``low``, ``high``. Groups: ``all``, then the values of ``by`` in the order of
    :data:`OUTCOMES` where they are outcomes, else sorted.
    """
    if metrics is None:
        metrics = [
            c
            for c in per_image.columns
            if c not in (by, cluster)
            and (pd.api.types.is_numeric_dtype(per_image[c]) or pd.api.types.is_bool_dtype(per_image[c]))
        ]
    clustered = cluster is not None and cluster in per_image.columns
    groups: list[tuple[str, pd.DataFrame]] = [("all", per_image)]
    if by is not None and by in per_image.columns:
        present = list(pd.unique(per_image[by]))
        ordered = [o for o in OUTCOMES if o in present] + sorted((p for p in present if p not in OUTCOMES), key=str)
        groups += [(str(value), per_image[per_image[by] == value]) for value in ordered]
    rows = []
    for group, frame in groups:
        ids = frame[cluster].to_numpy(dtype=object) if clustered else None
        for metric in metrics:
            values = frame[metric].to_numpy(dtype=np.float64, na_value=np.nan)
            present_values = ~np.isnan(values)
            mean, low, high = bootstrap_ci(values, n=n, alpha=alpha, seed=seed, clusters=ids)
            count = int(np.count_nonzero(present_values))
            rows.append(
                {
                    "group": group,
                    "metric": metric,
                    "n": count,
                    "clusters": int(pd.unique(ids[present_values]).size) if ids is not None else count,
                    "mean": mean,
                    "low": low,
                    "high": high,
                }
            )
    return pd.DataFrame(rows, columns=["group", "metric", "n", "clusters", "mean", "low", "high"])


def outcomes(
    labels: np.ndarray | Sequence[int], probs: np.ndarray | Sequence[float], threshold: float = 0.5
) -> np.ndarray:
    """``"TP"``/``"FP"``/``"FN"``/``"TN"`` per image: predicted positive when ``prob > threshold``.

    The strict inequality is torchmetrics' (so the counts match the classification metrics at the same threshold);
    probabilities are compared in float64, as the classification metrics do.
    """
    y = np.asarray(labels).astype(bool)
    predicted = np.asarray(probs, dtype=np.float64) > threshold
    return np.where(y, np.where(predicted, "TP", "FN"), np.where(predicted, "FP", "TN"))


# ------------------------------------------------------------------------------------------- paired comparisons


def holm(p: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70), family-wise error control.

    With the ``m`` p-values sorted ascending, ``p_(1) ≤ … ≤ p_(m)``: ``adj_(i) = max_{j ≤ i} min(1, (m − j + 1) ·
    p_(j))``, returned in the input order (as ``statsmodels.stats.multitest.multipletests(method="holm")``). NaN
    p-values stay NaN and do not count in ``m``.
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _continuous_tests(x: np.ndarray, y: np.ndarray) -> list[tuple[str, float]]:
    d = x - y
    if d.size == 0:
        return [("t", float("nan")), ("wilcoxon", float("nan"))]
    if np.all(d == 0):
        return [("t", 1.0), ("wilcoxon", 1.0)]  # no difference at all: scipy gives NaN (t: 0/0) or raises
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # n < 2 (NaN) or constant non-zero differences (t = ±inf)
        t = float(scipy.stats.ttest_rel(x, y).pvalue)
        w = wilcoxon_p(d)
    return [("t", t), ("wilcoxon", w)]


EXACT_SIGN_FLIPS_MAX_N = 13  # scipy.stats.wilcoxon(method="auto") enumerates every sign flip up to this n


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of the differences ``d``, as ``scipy.stats.wilcoxon(d,
    zero_method="wilcox", alternative="two-sided")`` (``method="auto"``) gives it, to float rounding.

    scipy's ``auto`` takes the exact null distribution without ties or zeros (delegated to scipy here), the normal
    approximation with continuity correction for more than 13 differences with ties or zeros (delegated too), and
    otherwise an exact permutation test over all ``2**n`` sign flips, through ``scipy.stats.permutation_test``,
    which takes 0.4 s at n = 10 and 2.6 s at n = 13 per call. That last case is computed here in one matrix
    product: zeros dropped (Wilcoxon's treatment, as scipy's ``"wilcox"``), average ranks of ``|d|``, the statistic
    ``R+`` (sum of the ranks of positive differences) for every subset of positive signs, and scipy's two-sided
    p-value ``min(1, 2 · min(P(R+ ≥ r), P(R+ ≤ r)))`` with its relative tolerance ``100 · eps · |r|`` on the
    comparisons. Dropping the zeros' sign flips leaves every proportion unchanged (each zero only doubles the null
    distribution). Tested against scipy on random tie- and zero-laden inputs (``tests/explain/measures``).
    """
    d = np.asarray(d, dtype=float)
    nonzero = d[d != 0]
    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    if not (ties or nonzero.size < d.size) or d.size > EXACT_SIGN_FLIPS_MAX_N or nonzero.size == 0:
        return float(scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    ranks = scipy.stats.rankdata(np.abs(nonzero))
    observed = float(ranks[nonzero > 0].sum())
    positive = (np.arange(2**nonzero.size)[:, None] >> np.arange(nonzero.size)) & 1  # every subset of positive signs
    null = positive @ ranks
    gamma = abs(observed) * np.finfo(float).eps * 100
    greater, less = np.mean(null >= observed - gamma), np.mean(null <= observed + gamma)
    return float(min(1.0, 2 * min(greater, less)))


def _binary_test(x: np.ndarray, y: np.ndarray) -> list[tuple[str, float]]:
    if ((x < 0) | (x > 1) | (y < 0) | (y > 1)).any():
        raise ValueError("binary measures must lie in [0, 1] (hits 0/1, or a fractional hit share for ties)")
    d = x - y
    if d.size == 0:
        return [("mcnemar", float("nan"))]
    positive, negative = int(np.count_nonzero(d > 0)), int(np.count_nonzero(d < 0))
    discordant = positive + negative
    p = 1.0 if discordant == 0 else min(1.0, 2 * float(scipy.stats.binom.cdf(min(positive, negative), discordant, 0.5)))
    zero_one = bool(np.all(np.isin(x, (0.0, 1.0))) and np.all(np.isin(y, (0.0, 1.0))))
    return [("mcnemar" if zero_one else "sign", p)]


def paired_comparisons(
    table: pd.DataFrame,
    measure: str,
    methods: Sequence[str] | None = None,
    kind: Literal["continuous", "binary"] = "continuous",
    key: str = "index",
    cluster: str | None = "patient",
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Every pair of methods compared on the images both were measured on: mean difference, interval, paired tests.

    ``table`` is long: one row per image and method, columns ``method``, ``key`` (the image), ``measure`` and,
    optionally, ``cluster`` (the patient; one per image). ``methods`` (default: order of first appearance) are
    paired as ``itertools.combinations``; ``difference = method_a − method_b`` per image, over the ``n`` images where
    both have a non-NaN value. ``mean_difference``, ``low``, ``high``: the mean difference and its paired bootstrap
    interval (:func:`bootstrap_ci` of the differences, patient-clustered when the ``cluster`` column is present).

    ``kind="continuous"``: two rows per pair, ``test`` = ``"t"`` (paired t-test, ``scipy.stats.ttest_rel``) and
    ``"wilcoxon"`` (signed-rank test, ``scipy.stats.wilcoxon`` with ``zero_method="wilcox"``: zero differences are
    dropped before ranking, Wilcoxon 1945; ``method="auto"``: exact for small samples without ties, an exact
    sign-flip test for up to 13 differences with ties or zeros (:func:`wilcoxon_p`, vectorised), else normal).
    When every difference is 0 both p-values are 1 (scipy gives NaN). Constant non-zero differences give the
    t-test's limit, p = 0 (t = ±∞), as scipy does; fewer than 2 pairs give p = NaN.

    ``kind="binary"`` (e.g. pointing hits): one row per pair. Values must lie in [0, 1]. The exact two-sided sign
    test on the paired differences: with ``b`` pairs where method_a is higher and ``c`` where method_b is,
    ``p = min(1, 2 · BinomCDF(min(b, c); b + c, 1/2))`` (``p = 1`` when ``b + c = 0``). For 0/1 values ``b`` and
    ``c`` are the discordant pairs and this is McNemar's exact test (McNemar 1947; the same formula as
    ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``), ``test = "mcnemar"``. A pointing hit shared among
    tied maxima can be fractional (e.g. 0.5); then there is no 2×2 table and the same formula is the sign test of
    the differences (Dixon & Mood 1946: only their signs count), ``test = "sign"``. No common image (``n = 0``):
    p = NaN for every test.

    ``p_holm``: Holm's adjustment (:func:`holm`) over all pairs of this measure with the same kind of test (for
    binary measures ``mcnemar`` and ``sign`` rows form one family). Caveat: the p-values treat images as
    independent pairs; with several images per patient only the interval accounts for clustering.
    """
    for column in ("method", key, measure):
        if column not in table.columns:
            raise KeyError(f"paired_comparisons needs a {column!r} column; the table has {list(table.columns)}")
    if kind not in ("continuous", "binary"):
        raise ValueError(f"kind must be 'continuous' or 'binary', got {kind!r}")
    methods = list(pd.unique(table["method"])) if methods is None else list(methods)
    missing = [m for m in methods if m not in set(table["method"])]
    if missing:
        raise ValueError(f"methods not in the table: {missing}")
    # An image can have a row per map explained (the explain stage: its Pneumonia map, scored for localisation, and
    # its decision map, scored for faithfulness, differ for a predicted-negative image with a box); a measure is
    # defined on one of them, so only the rows that have a value for it are paired.
    table = table[table[measure].notna()]
    if table.duplicated(["method", key]).any():
        raise ValueError(f"more than one row for some ({key!r}, method): one value per image and method expected")
    values = table.assign(_value=table[measure].astype(np.float64))
    wide = values.pivot(index=key, columns="method", values="_value").reindex(columns=methods)
    ids = None
    if cluster is not None and cluster in table.columns:
        if (table.groupby(key)[cluster].nunique(dropna=False) > 1).any():
            raise ValueError(f"an image ({key!r}) belongs to more than one {cluster!r}")
        ids = table.groupby(key)[cluster].first().reindex(wide.index).to_numpy(dtype=object)
    rows = []
    for a, b in combinations(methods, 2):
        x = wide[a].to_numpy(dtype=np.float64)
        y = wide[b].to_numpy(dtype=np.float64)
        both = ~np.isnan(x) & ~np.isnan(y)
        x, y = x[both], y[both]
        mean, low, high = bootstrap_ci(x - y, n=n, alpha=alpha, seed=seed, clusters=None if ids is None else ids[both])
        tests = _continuous_tests(x, y) if kind == "continuous" else _binary_test(x, y)
        for slot, (test, p) in enumerate(tests):
            rows.append(
                {
                    "method_a": a,
                    "method_b": b,
                    "measure": measure,
                    "n": int(both.sum()),
                    "mean_difference": mean,
                    "low": low,
                    "high": high,
                    "p": p,
                    "p_holm": np.nan,
                    "test": test,
                    "_family": slot,
                }
            )
    frame = pd.DataFrame(rows, columns=[*PAIRED_COLUMNS, "_family"])
    for _, part in frame.groupby("_family"):
        frame.loc[part.index, "p_holm"] = holm(part["p"].to_numpy())
    return frame.drop(columns="_family")
