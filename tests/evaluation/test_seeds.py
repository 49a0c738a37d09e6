"""The seed spread's statistics against numpy and scipy, and its tables on toy inputs."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrexplain.evaluation import seeds


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_spread_is_the_t_interval_of_the_mean(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        values = rng.normal(rng.uniform(-1, 1), rng.uniform(0.01, 2), n)
        got = seeds.spread(values.tolist())
        low, high = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
        assert got["n"] == n and got["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert got["sd"] == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-10)
        assert got["values"] == values.tolist()
    assert seeds.spread([1.0, 2.0, 3.0], confidence=0.9)["high"] == pytest.approx(
        stats.t.interval(0.9, 2, loc=2.0, scale=stats.sem([1.0, 2.0, 3.0]))[1]
    )


def test_spread_by_hand_and_its_edge_cases():
    # 0.90, 0.92, 0.94: mean 0.92, sd 0.02, t(0.975, 2) = 4.302653, half width 4.302653 * 0.02 / sqrt(3) = 0.049683
    got = seeds.spread([0.90, 0.92, 0.94])
    assert got["mean"] == pytest.approx(0.92) and got["sd"] == pytest.approx(0.02)
    assert got["high"] - got["mean"] == pytest.approx(0.049683, abs=1e-6)
    assert seeds.t_quantile(3) == pytest.approx(4.302653, abs=1e-6)
    one = seeds.spread([0.9])
    assert one["mean"] == 0.9 and one["n"] == 1 and all(math.isnan(one[k]) for k in ("sd", "low", "high"))
    undefined = seeds.spread([float("nan"), 0.8, 0.9])  # e.g. an AUROC undefined for one seed: left out, and counted
    assert undefined["n"] == 2 and undefined["mean"] == pytest.approx(0.85) and math.isnan(undefined["values"][0])
    assert math.isnan(seeds.spread([])["mean"])
    assert seeds.spread([0.5, 0.5, 0.5])["sd"] == 0.0 and seeds.spread([0.5, 0.5])["low"] == 0.5


def test_seed_table_reads_predictions_and_gradcam_means():
    frame = pd.DataFrame(
        {
            "split": ["val", "test", "test", "test", "test"],
            "label": [1, 0, 1, 1, 0],
            "probability": [0.9, 0.2, 0.8, 0.4, 0.6],
        }
    )
    explained = {"methods": {"gradcam": {"pointing": {"mean": 0.5, "low": 0.4}, "sanity": {"passes": True}}}}
    table = seeds.seed_table(
        {42: frame, 43: frame.assign(probability=1 - frame["probability"])}, {42: explained, 43: {}}
    )
    assert list(table.index) == [42, 43] and table.index.name == "seed"
    # seed 42, test rows (0, .2) (1, .8) (1, .4) (0, .6) at 0.5: TP 1, FN 1, TN 1, FP 1; AUROC 3/4 (pairs ranked right)
    assert table.loc[42, ["accuracy", "precision", "recall", "auroc"]].tolist() == [0.5, 0.5, 0.5, 0.75]
    assert table.loc[43, "auroc"] == 0.25
    assert table.loc[42, "gradcam/pointing"] == 0.5 and math.isnan(table.loc[43, "gradcam/pointing"])
    assert "gradcam/sanity" not in table  # verdicts have no mean
    summary = seeds.summarise(table)
    assert summary["auroc"]["mean"] == pytest.approx(0.5) and summary["gradcam/pointing"]["n"] == 1
