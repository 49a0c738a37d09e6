"""Statistics of the explanation measures: (clustered) bootstrap, summaries, outcomes, paired method comparisons."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from cxrexplain.explain.measures.statistics import (
    PAIRED_COLUMNS,
    Clusters,
    bootstrap_ci,
    holm,
    outcomes,
    paired_comparisons,
    summarise,
    wilcoxon_p,
)

# ---------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_the_mean_is_deterministic_and_drops_nan():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0] * 4)
    estimate, low, high = bootstrap_ci(values, seed=0)
    assert estimate == pytest.approx(4.0) and low < estimate < high
    assert bootstrap_ci(values, seed=0) == (estimate, low, high)
    assert bootstrap_ci(values, seed=1) != (estimate, low, high)
    assert bootstrap_ci([*values, np.nan], seed=0) == (estimate, low, high)
    assert bootstrap_ci(torch.tensor(values), seed=0) == (estimate, low, high)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan]))
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan], clusters=["p"]))
    median, m_low, m_high = bootstrap_ci(values, stat=np.median, n=200)
    assert median == 3.0 and m_low <= 3.0 <= m_high
    assert low >= 1.0 and high <= 10.0


def test_clustered_bootstrap_with_one_value_per_cluster_is_the_plain_bootstrap_exactly():
    rng = np.random.default_rng(5)
    values = rng.normal(size=37)
    values[[3, 20]] = np.nan  # dropped with their ids: the remaining ids are still one per value
    ids = [f"p{i}" for i in range(37)]
    for stat in (np.mean, np.median):
        assert bootstrap_ci(values, stat=stat, n=300, seed=4, clusters=ids) == bootstrap_ci(
            values, stat=stat, n=300, seed=4
        )


def test_clustered_bootstrap_of_two_clusters_by_hand():
    # cluster A = {1, 3} (sum 4, size 2), B = {5} (sum 5, size 1). Resampling two clusters: AA -> 8/4 = 2,
    # AB or BA -> 9/3 = 3, BB -> 10/2 = 5 (probabilities 1/4, 1/2, 1/4). With 1000 resamples both tails hold far
    # more than 2.5 % of the draws, so the 2.5 % and 97.5 % quantiles are exactly 2 and 5. The estimate is the mean
    # of all values (3), not the mean of the cluster means (3.5). The median gives the same three values.
    values, ids = [1.0, 5.0, 3.0], ["A", "B", "A"]
    assert bootstrap_ci(values, clusters=ids) == (3.0, 2.0, 5.0)
    assert bootstrap_ci(values, stat=np.median, clusters=ids) == (3.0, 2.0, 5.0)
    assert bootstrap_ci([*values, np.nan], clusters=[*ids, "C"]) == (3.0, 2.0, 5.0)  # C had only a NaN: gone
    with pytest.raises(ValueError, match="one id per value"):
        bootstrap_ci(values, clusters=["A", "B"])
    with pytest.raises(ValueError, match="missing"):
        bootstrap_ci(values, clusters=["A", None, "A"])


def test_cluster_members_in_order_of_the_draws():
    groups = Clusters.of([7, 9, 7, 8, 9, 7])  # clusters by first appearance: 7 -> 0, 9 -> 1, 8 -> 2
    assert groups.codes.tolist() == [0, 1, 0, 2, 1, 0] and groups.k == 3
    assert groups.members(np.array([2, 0, 0, 1])).tolist() == [3, 0, 2, 5, 0, 2, 5, 1, 4]
    assert groups.members(np.array([], dtype=int)).tolist() == []


def test_plain_percentile_interval_agrees_with_scipy():
    # Both are Monte Carlo estimates of the same percentile interval from different generators. With B resamples
    # the standard error of a 2.5 % quantile is sqrt(q (1 - q) / B) / f(x_q); for a near-normal bootstrap
    # distribution of the mean (sd s = SE of the mean) f(x_q) = φ(1.96) / s ≈ 0.058 / s, so with B = 20000 it is
    # ≈ 0.019 s per end and ≈ 0.027 s for the difference of two such estimates. Tolerance: 0.15 s (≈ 5.5 SE).
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, size=60)
    b = 20000
    _, low, high = bootstrap_ci(values, n=b, seed=1)
    reference = scipy.stats.bootstrap(
        (values,), np.mean, n_resamples=b, method="percentile", rng=np.random.default_rng(2)
    ).confidence_interval
    s = values.std(ddof=1) / np.sqrt(values.size)
    assert low == pytest.approx(reference.low, abs=0.15 * s)
    assert high == pytest.approx(reference.high, abs=0.15 * s)


def test_clustered_interval_is_wider_when_values_are_correlated_within_clusters():
    # 30 patients with 5 images each, value = patient effect (sd 1) + noise (sd 0.2): intra-class correlation
    # ≈ 0.96, design effect 1 + (5 - 1) · 0.96 ≈ 4.8, so the clustered interval should be ≈ 2.2 times wider.
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(30), 5)
    values = rng.normal(size=30)[ids] + rng.normal(scale=0.2, size=ids.size)
    _, low, high = bootstrap_ci(values, n=2000)
    _, c_low, c_high = bootstrap_ci(values, n=2000, clusters=ids)
    assert c_high - c_low > 1.6 * (high - low)


# ---------------------------------------------------------------------------------------------------- summaries


def test_summarise_gives_mean_and_interval_overall_and_per_outcome():
    per_image = pd.DataFrame(
        {
            "outcome": ["TP", "TP", "FN", "TN"],
            "energy": [0.5, 0.7, 0.1, np.nan],
            "hit": [True, False, True, False],
        }
    )
    table = summarise(per_image, n=200)
    assert list(table.columns) == ["group", "metric", "n", "clusters", "mean", "low", "high"]
    assert table.group.unique().tolist() == ["all", "TP", "FN", "TN"]
    row = table.set_index(["group", "metric"])
    assert row.loc[("all", "energy"), "mean"] == pytest.approx(13 / 30) and row.loc[("all", "energy"), "n"] == 3
    assert row.loc[("all", "energy"), "clusters"] == 3  # no patient column: every image its own cluster
    assert row.loc[("TP", "energy"), "mean"] == pytest.approx(0.6)
    assert row.loc[("all", "hit"), "mean"] == 0.5 and row.loc[("FN", "hit"), "mean"] == 1.0
    assert row.loc[("TN", "energy"), "n"] == 0 and math.isnan(row.loc[("TN", "energy"), "mean"])
    assert summarise(per_image, by=None, n=50).group.unique().tolist() == ["all"]


def test_summarise_clusters_by_patient_when_the_column_is_there():
    per_image = pd.DataFrame(
        {
            "outcome": ["TP", "TP", "TP", "FN"],
            "patient": [11, 12, 11, 13],
            "energy": [1.0, 5.0, 3.0, np.nan],
        }
    )
    table = summarise(per_image).set_index(["group", "metric"])
    assert list(table.index.get_level_values("metric").unique()) == ["energy"]  # the patient id is no metric
    # TP: patient 11 = {1, 3}, patient 12 = {5}: the two-cluster toy of the bootstrap test
    assert table.loc[("TP", "energy"), ["n", "clusters", "mean", "low", "high"]].tolist() == [3, 2, 3.0, 2.0, 5.0]
    assert table.loc[("all", "energy"), ["n", "clusters"]].tolist() == [3, 2]  # patient 13's NaN does not count
    assert table.loc[("FN", "energy"), ["n", "clusters"]].tolist() == [0, 0]
    plain = summarise(per_image, cluster=None).set_index(["group", "metric"])
    assert plain.loc[("TP", "energy"), "clusters"] == 3
    assert plain.loc[("TP", "energy"), "low"] != 2.0  # the plain bootstrap sees other resampled means


def test_outcomes_use_a_strict_threshold_like_the_classification_metrics():
    labels = [1, 1, 0, 0]
    assert outcomes(labels, [0.7, 0.5, 0.6, 0.5], threshold=0.5).tolist() == ["TP", "FN", "FP", "TN"]
    assert outcomes(labels, [0.7, 0.5, 0.6, 0.5], threshold=0.4).tolist() == ["TP", "TP", "FP", "FP"]
    assert outcomes([1], [0.99999997], threshold=0.99999995).tolist() == ["TP"]  # float64, as the metrics


# ------------------------------------------------------------------------------------------- paired comparisons


def long_table(values: dict[str, list[float]], patients: list[int] | None = None) -> pd.DataFrame:
    """One row per (image, method) from ``{method: per-image values}``."""
    frames = []
    for method, column in values.items():
        frame = pd.DataFrame({"method": method, "index": range(len(column)), "score": column})
        if patients is not None:
            frame["patient"] = patients
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_holm_equals_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.5])
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-15)
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, 1·0.04 = 0.02, 0.03, 0.06, 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, np.nan, 0.04])  # NaN: not counted in m
    assert adjusted[[0, 2]] == pytest.approx([0.02, 0.04]) and math.isnan(adjusted[1])


def test_continuous_comparisons_match_scipy_and_count_only_images_both_methods_have():
    a = [0.9, 0.7, 0.8, 0.6, 0.75, 0.95, 0.5]
    b = [0.5, 0.6, 0.8, 0.55, 0.70, 0.60, np.nan]  # image 6: b undefined -> not counted
    c = [0.1, 0.2, 0.3, 0.25, 0.05, 0.15, 0.2]
    table = long_table({"a": a, "b": b, "c": c})
    result = paired_comparisons(table, "score", n=200)
    assert list(result.columns) == list(PAIRED_COLUMNS)
    assert result[["method_a", "method_b", "test"]].values.tolist() == [
        ["a", "b", "t"],
        ["a", "b", "wilcoxon"],
        ["a", "c", "t"],
        ["a", "c", "wilcoxon"],
        ["b", "c", "t"],
        ["b", "c", "wilcoxon"],
    ]
    row = result.set_index(["method_a", "method_b", "test"])
    ab = row.loc[("a", "b", "t")]
    assert ab["n"] == 6 and ab["measure"] == "score"
    assert ab["mean_difference"] == pytest.approx((0.4 + 0.1 + 0.0 + 0.05 + 0.05 + 0.35) / 6)
    assert ab["p"] == pytest.approx(scipy.stats.ttest_rel(a[:6], b[:6]).pvalue, rel=1e-12)
    # zero_method="wilcox": the zero difference of image 2 is dropped before ranking
    w = scipy.stats.wilcoxon(a[:6], b[:6], zero_method="wilcox").pvalue
    assert row.loc[("a", "b", "wilcoxon"), "p"] == pytest.approx(w, rel=1e-12)
    assert row.loc[("a", "c", "t"), "n"] == 7
    for test in ("t", "wilcoxon"):
        part = result[result.test == test]
        assert part.p_holm.to_numpy() == pytest.approx(multipletests(part.p, method="holm")[1], rel=1e-12)
    # the interval is the (plain, no patient column) bootstrap of the differences
    diffs = np.array(a[:6]) - np.array(b[:6])
    assert (ab["mean_difference"], ab["low"], ab["high"]) == bootstrap_ci(diffs, n=200)
    # methods chosen and ordered by the caller: the sign of the difference follows
    swapped = paired_comparisons(table, "score", methods=["b", "a"], n=200)
    assert swapped.mean_difference.iloc[0] == pytest.approx(-ab["mean_difference"])


def test_continuous_comparisons_of_identical_methods_give_p_one():
    table = long_table({"a": [0.1, 0.2, 0.3], "b": [0.1, 0.2, 0.3]})
    result = paired_comparisons(table, "score", n=50)
    assert result.p.tolist() == [1.0, 1.0] and result.p_holm.tolist() == [1.0, 1.0]
    assert result.mean_difference.tolist() == [0.0, 0.0] and result.low.tolist() == [0.0, 0.0]


def test_paired_interval_resamples_patients():
    a, b = [1.0, 5.0, 3.0, 0.0], [0.0, 0.0, 0.0, np.nan]  # differences 1, 5, 3 of patients A, B, A
    table = long_table({"a": a, "b": b}, patients=[1, 2, 1, 3])
    row = paired_comparisons(table, "score").iloc[0]
    assert (row["n"], row["mean_difference"], row["low"], row["high"]) == (3, 3.0, 2.0, 5.0)  # the two-cluster toy
    table.loc[table.method == "b", "patient"] = [1, 2, 9, 3]
    with pytest.raises(ValueError, match="more than one"):
        paired_comparisons(table, "score")


def test_binary_comparisons_are_mcnemars_exact_test():
    # a vs b: a hits where b misses on images 0-3 (b = 4 discordant), b hits where a misses on image 4 (c = 1):
    # p = 2 · P(Bin(5, 1/2) ≤ 1) = 2 · 6/32 = 0.375
    a = [1, 1, 1, 1, 0, 1, 0, 1]
    b = [0, 0, 0, 0, 1, 1, 0, 1]
    c = [1, 1, 1, 1, 0, 1, 0, 1]  # the same as a: no discordant pair, p = 1
    table = long_table({"a": a, "b": b, "c": [bool(v) for v in c]})
    result = paired_comparisons(table, "score", kind="binary", n=200)
    assert result.test.tolist() == ["mcnemar"] * 3
    row = result.set_index(["method_a", "method_b"])
    assert row.loc[("a", "b"), "p"] == pytest.approx(0.375, rel=1e-12)
    assert row.loc[("a", "b"), "mean_difference"] == pytest.approx(3 / 8)
    assert row.loc[("a", "c"), "p"] == 1.0
    for (first, second), p in row["p"].items():
        x, y = np.array(table.score[table.method == first]), np.array(table.score[table.method == second])
        counts = [[np.sum((x == 1) & (y == 1)), np.sum((x == 1) & (y == 0))], [np.sum((x == 0) & (y == 1)), 0]]
        counts[1][1] = np.sum((x == 0) & (y == 0))
        assert p == pytest.approx(mcnemar(counts, exact=True).pvalue, rel=1e-12)
    assert result.p_holm.to_numpy() == pytest.approx(multipletests(result.p, method="holm")[1], rel=1e-12)


def test_fractional_hits_use_the_sign_test_and_values_outside_zero_one_are_refused():
    # a shared hit (0.5 among two tied maxima) is still "a higher": signs +, +, +, 0 -> b = 3, c = 0, p = 2/8
    table = long_table({"a": [0.5, 1.0, 1.0, 0.0], "b": [0.0, 0.0, 0.5, 0.0]})
    row = paired_comparisons(table, "score", kind="binary", n=50).iloc[0]
    assert row["test"] == "sign" and row["p"] == pytest.approx(0.25, rel=1e-12) and row["n"] == 4
    none = paired_comparisons(long_table({"a": [1.0, np.nan], "b": [np.nan, 0.0]}), "score", kind="binary")
    assert none.n.tolist() == [0] and math.isnan(none.p.iloc[0]) and math.isnan(none.p_holm.iloc[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        paired_comparisons(long_table({"a": [2.0, 0.0], "b": [0.0, 1.0]}), "score", kind="binary")


def test_paired_comparisons_refuse_duplicate_rows_and_unknown_methods():
    table = long_table({"a": [0.1, 0.2], "b": [0.3, 0.4]})
    with pytest.raises(ValueError, match="methods not in the table"):
        paired_comparisons(table, "score", methods=["a", "z"])
    with pytest.raises(ValueError, match="more than one row"):
        paired_comparisons(pd.concat([table, table.iloc[:1]]), "score")


def test_an_image_with_one_row_per_explained_map_is_paired_on_the_row_that_has_the_measure():
    """The explain stage gives a predicted-negative image with a box two rows per method: its Pneumonia map (scored
    for localisation) and its decision map (scored for faithfulness); each measure pairs the row that has it (the
    demo's first three-seed run stopped here: "more than one row")."""
    table = long_table({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.5, 0.4]})  # images 0, 1, 2
    other_map = table[table["index"] == 1].assign(score=np.nan)  # image 1's second map: no value for this measure
    both = pd.concat([table, other_map], ignore_index=True)
    expected = paired_comparisons(table, "score", n=200, seed=1)
    pd.testing.assert_frame_equal(paired_comparisons(both, "score", n=200, seed=1), expected)
    assert expected["n"].tolist() == [3, 3]  # the t-test and the Wilcoxon row


def test_wilcoxon_p_equals_scipy_on_random_tied_and_zero_laden_differences():
    """The vectorised exact sign-flip test (n ≤ 13 with ties or zeros) and the cases delegated to scipy both give
    ``scipy.stats.wilcoxon(d, zero_method="wilcox")``'s p-value (method "auto": permutation, exact or normal)."""
    rng = np.random.default_rng(7)
    compared = 0
    # scipy's own permutation test is the slow reference (0.1 s at n = 9, 2.6 s at n = 13): mostly small n, one 13
    sizes = [*rng.integers(1, 10, size=120), 13, *rng.integers(14, 30, size=20)]
    for n in map(int, sizes):
        d = np.round(rng.normal(size=n) * rng.choice([0.5, 1.0, 3.0]), int(rng.integers(0, 2)))  # rounding: ties
        if rng.random() < 0.3:
            d[rng.integers(0, n)] = 0.0
        if np.all(d == 0):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            reference = float(scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
        assert wilcoxon_p(d) == pytest.approx(reference, rel=1e-12, abs=0, nan_ok=True), d
        compared += 1
    assert compared > 120


def test_wilcoxon_p_hand_value_with_ties():
    # d = (2, 2, 3, -1): ranks of |d| are 2.5, 2.5, 4, 1, so R+ = 9; of the 16 sign subsets of {1, 2.5, 2.5, 4}
    # (sum 10) two reach ≥ 9 ({2.5, 2.5, 4} and all) and fourteen ≤ 9: p = 2 · 2/16
    assert wilcoxon_p(np.array([2.0, 2.0, 3.0, -1.0])) == pytest.approx(0.25, abs=1e-15)
    assert wilcoxon_p(np.array([2.0, 2.0, 3.0, -1.0, 0.0])) == pytest.approx(0.25, abs=1e-15)  # zero dropped
