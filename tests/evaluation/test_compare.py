"""The comparison's statistics: Welch's interval against scipy and by hand, the two-sample bootstrap against
bootstrap_ci (paired) and scipy's bootstrap (independent), and the rows on toy reports."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrexplain.evaluation import classification as cls
from cxrexplain.evaluation import compare
from cxrexplain.evaluation.seeds import spread
from cxrexplain.explain.measures.statistics import bootstrap_ci


@pytest.mark.parametrize(("n_run", "n_ref"), [(2, 2), (3, 3), (3, 5), (10, 4)])
def test_welch_interval_is_scipys(n_run, n_ref):
    rng = np.random.default_rng(n_run * 100 + n_ref)
    for _ in range(20):
        run = rng.normal(rng.uniform(-1, 1), rng.uniform(0.01, 2), n_run)
        ref = rng.normal(rng.uniform(-1, 1), rng.uniform(0.01, 2), n_ref)
        expected = stats.ttest_ind(run, ref, equal_var=False).confidence_interval(0.95)
        difference, low, high = compare.welch_interval(run.tolist(), ref.tolist())
        assert difference == pytest.approx(run.mean() - ref.mean(), abs=1e-12)
        assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-9)


def test_welch_interval_by_hand_and_its_edge_cases():
    # run 1, 2, 3 (mean 2, variance 1), ref 0, 0, 0: se² = 1/3, ν = (1/3)² / ((1/3)² / 2) = 2, t(0.975, 2) = 4.302653:
    # 2 ± 4.302653 / √3 = 2 ± 2.484138 (contains 0: no change shown by three seeds that wide)
    difference, low, high = compare.welch_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert difference == 2.0 and (low, high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert compare.welch_interval([0.5, 0.5], [0.5, 0.5, 0.5]) == (0.0, 0.0, 0.0)  # no spread, same: no change
    assert compare.welch_interval([0.6, 0.6], [0.5, 0.5]) == pytest.approx((0.1, 0.1, 0.1))  # no spread, different
    undefined = compare.welch_interval([float("nan"), 0.7], [0.5, 0.6])  # one defined value: no interval
    assert undefined[0] == pytest.approx(0.15) and math.isnan(undefined[1]) and math.isnan(undefined[2])
    assert all(math.isnan(v) for v in compare.welch_interval([], [0.5, 0.6]))


def test_paired_bootstrap_of_means_is_bootstrap_ci_of_the_differences():
    rng = np.random.default_rng(1)
    for clustered in (False, True):
        run = rng.normal(0.5, 0.2, 40)
        ref = run + rng.normal(0.05, 0.1, 40)
        patients = rng.integers(0, 15, 40) if clustered else None
        difference, low, high = cls.cluster_bootstrap_difference(
            run, ref, np.mean, run_clusters=patients, paired=True, n=300, seed=7
        )
        expected = bootstrap_ci(run - ref, n=300, seed=7, clusters=patients)
        assert (difference[0], low[0], high[0]) == pytest.approx(expected, abs=1e-12)


def test_independent_bootstrap_agrees_with_scipys():
    rng = np.random.default_rng(2)
    run, ref = rng.normal(0.6, 0.2, 60), rng.normal(0.5, 0.3, 45)
    difference, low, high = cls.cluster_bootstrap_difference(run, ref, np.mean, n=20000, seed=0)
    reference = stats.bootstrap(
        (run, ref),
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        n_resamples=20000,
        method="percentile",
        paired=False,
        random_state=np.random.default_rng(1),
    ).confidence_interval
    assert difference[0] == pytest.approx(run.mean() - ref.mean())
    width = reference.high - reference.low
    assert low[0] == pytest.approx(reference.low, abs=0.03 * width)
    assert high[0] == pytest.approx(reference.high, abs=0.03 * width)


def test_bootstrap_by_hand():
    same = np.array([0.1, 0.4, 0.9, 0.3])
    assert cls.cluster_bootstrap_difference(same, same, np.mean, paired=True, n=50) == (
        pytest.approx([0.0]),
        pytest.approx([0.0]),
        pytest.approx([0.0]),
    )
    # every image shifted by +0.25, paired: every resample's difference is 0.25
    difference, low, high = cls.cluster_bootstrap_difference(same + 0.25, same, np.mean, paired=True, n=50)
    assert difference == pytest.approx([0.25]) and low == pytest.approx([0.25]) and high == pytest.approx([0.25])
    # independent constants: 1 vs 0, whatever is drawn
    assert cls.cluster_bootstrap_difference(np.ones(3), np.zeros(5), np.mean, n=50)[1] == pytest.approx([1.0])
    # a component undefined in every resample stays NaN; the others are unaffected
    rows = np.column_stack([same, np.full(4, np.nan)])
    _, low, high = cls.cluster_bootstrap_difference(rows, rows, compare._nanmean, paired=True, n=20)
    assert low[0] == 0.0 and math.isnan(low[1]) and math.isnan(high[1])
    with pytest.raises(ValueError, match="same rows"):
        cls.cluster_bootstrap_difference(same, same[:3], np.mean, paired=True)


def predictions(probability, images=None, patients=None) -> pd.DataFrame:
    """A predictions.csv of test images labelled 0, 1, 0, 1, ... (and one val row, which must be ignored)."""
    k = len(probability)
    images = images if images is not None else [f"{i:08d}_000.png" for i in range(k)]
    frame = pd.DataFrame(
        {
            "split": "test",
            "image": images,
            "patient": patients if patients is not None else [str(i // 2) for i in range(k)],
            "label": np.arange(k) % 2,
            "probability": probability,
        }
    )
    val = pd.DataFrame({"split": ["val"], "image": ["v.png"], "patient": ["v"], "label": [1], "probability": [0.0]})
    return pd.concat([val, frame], ignore_index=True)


def test_classification_differences_pair_the_same_images_in_any_order():
    rng = np.random.default_rng(3)
    probability = np.clip(0.3 * (np.arange(30) % 2) + 0.7 * rng.random(30), 0, 1)
    run = predictions(probability)
    shuffled = run.sample(frac=1, random_state=0)  # the same images, rows in another order
    same = compare.classification_differences(run, shuffled, n=100)
    for entry in same.values():
        assert entry["paired"] and entry["difference"] == 0 and entry["low"] == 0 and entry["high"] == 0
    # the run classifies every image right, the reference as before: accuracy 1 vs the reference's, clearly up
    perfect = predictions(np.where(np.arange(30) % 2 == 1, 0.9, 0.1))
    better = compare.classification_differences(perfect, run, n=200)
    expected = 1 - np.mean((probability > 0.5) == (np.arange(30) % 2 == 1))
    assert better["accuracy"]["difference"] == pytest.approx(expected) and better["accuracy"]["run"] == 1.0
    assert better["accuracy"]["low"] > 0 and better["auroc"]["run"] == 1.0
    # another test set: the patients of each side are resampled independently
    other = predictions(probability, images=[f"x{i}.png" for i in range(30)])
    assert not compare.classification_differences(run, other, n=50)["accuracy"]["paired"]


def per_image(values: dict[str, list[float]], images=None, method="gradcam") -> pd.DataFrame:
    k = len(next(iter(values.values())))
    images = images if images is not None else [f"{i:08d}_000.png" for i in range(k)]
    frame = pd.DataFrame({"method": method, "image": images, "patient": [str(i // 2) for i in range(k)], **values})
    return pd.concat([frame, frame.assign(method="saliency", pointing=0.0)], ignore_index=True)


def test_measure_differences_are_differences_of_means_over_measured_images():
    run = per_image({"pointing": [1, 0, 1, np.nan], "deletion": [0.2, 0.4, np.nan, np.nan]})
    ref = per_image({"pointing": [1, 0, 1, np.nan], "deletion": [0.1, 0.3, np.nan, np.nan]})
    found = compare.measure_differences(run, ref, ["pointing", "deletion"], n=100)
    assert found["pointing"]["run"] == pytest.approx(2 / 3) and found["pointing"]["difference"] == 0  # gradcam's rows
    assert found["pointing"]["low"] == 0 and found["pointing"]["high"] == 0
    # deletion: every measured image 0.1 higher, paired: +0.1 in every resample that draws a measured image
    assert found["deletion"]["difference"] == pytest.approx(0.1) and found["deletion"]["low"] == pytest.approx(0.1)
    assert found["deletion"]["paired"]


def report_metrics(values: dict[str, list[float]], seeds=(42, 43, 44)) -> dict:
    """A metrics.json with one architecture's seed spread (``values``: metric → per-seed values)."""
    return {
        "primary_seed": seeds[0],
        "seeds": {"resnet50": {"seeds": list(seeds), "metrics": {m: spread(v) for m, v in values.items()}}},
    }


def test_compare_with_seeds_uses_the_seed_spread():
    ref = report_metrics({"accuracy": [0.90, 0.92, 0.94], "gradcam/pointing": [0.5, 0.6, 0.7], "auroc": [0.9] * 3})
    same = compare.compare(ref, ref)
    assert list(same["metric"]) == ["accuracy", "auroc", "gradcam/pointing"]
    assert same["changed"].tolist() == [False, False, False] and (same["difference"] == 0).all()
    assert same["method"].iloc[0] == "seeds: Welch t (3 vs 3)" and same["run_sd"].iloc[0] == pytest.approx(0.02)
    shifted = report_metrics({"accuracy": [0.70, 0.72, 0.74], "gradcam/pointing": [0.55, 0.6, 0.65]})
    table = compare.compare(shifted, ref).set_index("metric")
    assert table.loc["accuracy", "changed"] is True and table.loc["accuracy", "difference"] == pytest.approx(-0.2)
    assert table.loc["gradcam/pointing", "changed"] is False  # within the spread
    assert "auroc" not in table.index  # only metrics both have
    assert compare.needs_per_image(shifted, ref) == []


def test_compare_with_one_seed_bootstraps_the_primary_seeds():
    ref = report_metrics({"accuracy": [0.9, 0.8, 0.7], "gradcam/pointing": [0.5, 0.5, 0.5]})
    run = report_metrics({"accuracy": [0.9], "gradcam/pointing": [0.5]}, seeds=(42,))
    assert compare.needs_per_image(run, ref) == ["resnet50"]
    with pytest.raises(ValueError, match="per-image data"):
        compare.compare(run, ref)
    rng = np.random.default_rng(4)
    data = compare.PerImage(
        predictions(np.clip(0.4 * (np.arange(20) % 2) + 0.6 * rng.random(20), 0, 1)),
        per_image({"pointing": rng.integers(0, 2, 20).astype(float)}),
    )
    table = compare.compare(run, ref, {"resnet50": (data, data)}, n=100)
    assert table["metric"].tolist() == ["accuracy", "gradcam/pointing"]
    assert table["changed"].tolist() == [False, False] and (table["difference"] == 0).all()
    assert table["method"].tolist() == ["bootstrap: patients, paired images"] * 2
    assert math.isnan(table["ref_sd"].iloc[0])


def test_markdown_names_both_runs_and_bolds_changes():
    ref = report_metrics({"accuracy": [0.90, 0.92, 0.94], "auroc": [0.95, 0.96, 0.97]})
    run = report_metrics({"accuracy": [0.70, 0.72, 0.74], "auroc": [0.95, 0.96, 0.97]})
    table = compare.compare(run, ref)
    text = compare.markdown(
        table,
        {"commit": "a" * 40, "run_id": "r1", "seeds": "42,43,44", "dirty": True},
        {"commit": "b" * 40, "run_id": "r0", "seeds": "42,43,44", "dirty": False},
    )
    assert "**RUN** report @ aaaaaaa* (run r1, seeds 42,43,44)" in text
    assert "**REF** report @ bbbbbbb (run r0, seeds 42,43,44)" in text
    assert "| resnet50 | accuracy | 0.920 ± 0.020 | 0.720 ± 0.020 | -0.200 | -0.245 to -0.155 | **changed** |" in text
    assert "| resnet50 | auroc | 0.960 ± 0.010 | 0.960 ± 0.010 | +0.000 | -0.023 to +0.023 | within noise |" in text
    assert "1 of 2 metrics changed beyond the noise." in text and compare.LEGEND in text


def test_an_image_with_two_maps_is_paired_by_image_and_explained_class():
    """A predicted-negative image with a box has a row for its Pneumonia map (localisation) and one for its decision
    map (faithfulness): the two reports are still paired, row for row, by (image, explained_class)."""
    table = pd.DataFrame(
        {
            "method": "gradcam",
            "image": ["a.png", "a.png", "b.png", "c.png"],
            "patient": ["1", "1", "2", "3"],
            "explained_class": [1, 0, 1, 1],
            "pointing": [1.0, np.nan, 0.0, 1.0],
            "deletion": [np.nan, 0.3, 0.2, 0.4],
        }
    )
    shuffled = table.iloc[[3, 1, 2, 0]]
    same = compare.measure_differences(table, shuffled, ["pointing", "deletion"], n=50)
    assert all(entry["paired"] for entry in same.values())
    assert same["pointing"]["difference"] == 0 and (same["deletion"]["low"], same["deletion"]["high"]) == (0, 0)
    assert same["pointing"]["run"] == pytest.approx(2 / 3) and same["deletion"]["run"] == pytest.approx(0.3)
    without = compare.measure_differences(table.drop(columns="explained_class"), table, ["pointing"], n=50)
    assert not without["pointing"]["paired"]  # (image) alone repeats a.png: each side resampled on its own
