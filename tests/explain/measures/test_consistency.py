"""Consistency measures: ranks and Spearman against scipy, tie-broken top-region IoU against its exact expectation."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from cxrexplain.explain.measures.consistency import (
    average_ranks,
    consistency,
    rank_correlation,
    top_count,
    top_region,
    top_region_iou,
)

pytestmark = pytest.mark.usefixtures("one_thread")

RAMP = torch.arange(16.0).view(4, 4) / 15  # 0 … 1 in row-major order


def test_average_ranks_match_scipy_rankdata_with_ties():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=(3, 25)).astype(np.float32)
    ranks = average_ranks(torch.from_numpy(values))
    assert ranks.dtype == torch.float64
    assert np.array_equal(ranks.numpy(), scipy.stats.rankdata(values, axis=1))
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_rank_correlation_matches_scipy_spearman_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(3, 5, 5)).astype(np.float32)
    b = (a + rng.integers(0, 3, size=(3, 5, 5))).astype(np.float32)
    rho = rank_correlation(torch.from_numpy(a), torch.from_numpy(b))
    expected = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    assert rho.tolist() == pytest.approx(expected, abs=1e-12)
    assert rank_correlation(RAMP, RAMP.flip(0, 1)).item() == pytest.approx(-1.0)  # a single map gives a 0-d result


def test_a_constant_map_has_rank_correlation_zero_where_scipy_gives_nan():
    # Convention: a constant map carries no ranking, so it has no rank association with anything: ρ = 0, not NaN
    # (NaN was dropped from means, which hid maps that randomisation had flattened).
    with pytest.warns(scipy.stats.ConstantInputWarning):
        assert math.isnan(scipy.stats.spearmanr(np.ones(16), RAMP.numpy().ravel()).statistic)
    maps = torch.stack([torch.ones(4, 4), RAMP, torch.zeros(4, 4)])
    others = torch.stack([RAMP, torch.full((4, 4), 0.3), torch.zeros(4, 4)])
    assert rank_correlation(maps, others).tolist() == [0.0, 0.0, 0.0]  # either side constant, or both


def test_top_region_without_ties_is_exact_and_the_same_for_every_seed():
    a = torch.arange(10.0).view(2, 5)  # one 2x5 map: top k = round(0.2 · 10) = 2 pixels: 9, 8
    b = a.clone()
    b.view(-1)[8] = 0.0  # top 2: 9, 7
    assert top_count(10) == 2 and top_count(3) == 1  # at least one pixel
    for seed in (0, 1):
        assert top_region_iou(a, b, seed=seed).item() == pytest.approx(1 / 3)
        assert top_region_iou(a, a, seed=seed).item() == 1.0
    region = top_region(a, orders=3)
    assert region.shape == (3, 2, 5)
    assert region.flatten(1).nonzero()[:, 1].view(3, 2).tolist() == [[8, 9]] * 3


def test_top_region_of_a_constant_map_is_a_random_choice():
    # A zero map's top 2 of 10 pixels are a random pair; against a's top {8, 9} the intersection I is hypergeometric
    # (10 pixels, 2 marked, 2 drawn): P(I = 0, 1, 2) = 28/45, 16/45, 1/45 and IoU = I / (4 − I), so
    # E[IoU] = 16/45 · 1/3 + 1/45 · 1 = 19/135. (The stable sort took pixels 0, 1: IoU 0 every time.)
    a = torch.arange(10.0).view(2, 5)
    iou = top_region_iou(torch.zeros(64, 2, 5), a.expand(64, 2, 5), orders=64, seed=0)
    # 4096 independent draws; sd(IoU) = sqrt(16/45 · 1/9 + 1/45 − (19/135)²) ≈ 0.25, so the standard error is
    # ≈ 0.0039; 4 standard errors: 0.016.
    assert iou.mean().item() == pytest.approx(19 / 135, abs=0.016)


def disjoint_blobs(size: int = 10, blob: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two maps of a ``size``² image, each zero but for a ``blob``² block of distinct positive values, the blocks
    disjoint and away from the first rows (where a stable sort takes its zeros from)."""
    a, b = torch.zeros(size, size), torch.zeros(size, size)
    values = torch.arange(1.0, blob * blob + 1).view(blob, blob)
    a[size - blob :, :blob] = values  # bottom-left
    b[size - blob :, size - blob :] = values  # bottom-right
    return a, b


def expected_disjoint_iou(n: int, s: int, k: int) -> tuple[float, float]:
    """Exact mean and sd of the IoU of two top-k regions with random ties, for disjoint s-pixel blobs on zeros.

    Map a's region is its blob A and ``f = k − s`` zeros drawn at random from the ``n − s`` pixels outside A, which
    hold B (s pixels) and the rest C (n − 2s); likewise for b. With X = |Ra ∩ B| and Y = |Rb ∩ A| (independent,
    Hypergeometric(n − s, s, f)), the fills meet in C in Z ~ Hypergeometric(n − 2s, f − X, f − Y) pixels, the
    intersection is I = X + Y + Z and IoU = I / (2k − I).
    """
    f = k - s
    mean = second = 0.0
    xs = np.arange(0, min(s, f) + 1)
    px = scipy.stats.hypergeom(n - s, s, f).pmf(xs)
    for x, p_x in zip(xs, px, strict=True):
        for y, p_y in zip(xs, px, strict=True):
            zs = np.arange(0, f + 1)
            pz = scipy.stats.hypergeom(n - 2 * s, f - x, f - y).pmf(zs)
            iou = (x + y + zs) / (2 * k - (x + y + zs))
            mean += p_x * p_y * float((pz * iou).sum())
            second += p_x * p_y * float((pz * iou**2).sum())
    return mean, math.sqrt(second - mean**2)


def test_top_region_iou_of_disjoint_blobs_on_zero_backgrounds_is_not_inflated_by_ties():
    a, b = disjoint_blobs()  # 10x10, 4-pixel blobs: 96 % zeros; top k = 20
    # The old stable sort filled both top regions with the same first 16 zero pixels: IoU = 16 / 24.
    stable = [m.flatten().argsort(descending=True, stable=True)[:20] for m in (a, b)]
    assert len(set(stable[0].tolist()) & set(stable[1].tolist())) / 24 == pytest.approx(2 / 3)

    mean, sd = expected_disjoint_iou(100, 4, 20)
    assert mean == pytest.approx(0.1099, abs=1e-4)  # the IoU of random tie choices (a simulation agrees)
    batch, orders = 16, 64
    iou = top_region_iou(a.expand(batch, 10, 10), b.expand(batch, 10, 10), orders=orders, seed=0)
    assert iou.shape == (batch,)
    # batch × orders independent draws (every image and order has its own permutations), so the average has
    # standard error sd / sqrt(1024) ≈ 0.002; 4 of them (a seed failing this would be a 1-in-15 000 draw).
    assert iou.mean().item() == pytest.approx(mean, abs=4 * sd / math.sqrt(batch * orders))
    assert torch.equal(iou, top_region_iou(a.expand(batch, 10, 10), b.expand(batch, 10, 10), orders=orders, seed=0))


def test_consistency_compares_upsampled_normalised_maps_per_method_with_their_tied_shares():
    ramp = torch.arange(16.0).view(1, 4, 4)
    raw_a = {"gradcam": torch.cat([ramp, torch.zeros(1, 4, 4)]).numpy(), "only_a": np.zeros((2, 4, 4))}
    raw_b = {"gradcam": torch.cat([2 * ramp, torch.ones(1, 4, 4)]).numpy()}  # same ranking; a constant map
    table = consistency(raw_a, raw_b, size=(4, 4), top=0.25, orders=8, seed=0)
    assert list(table.columns) == ["method", "index", "spearman", "top_iou", "tied_a", "tied_b"]
    assert table["method"].tolist() == ["gradcam", "gradcam"] and table["index"].tolist() == [0, 1]
    assert table["spearman"].tolist() == [pytest.approx(1.0), 0.0]  # constant maps: ρ = 0
    assert table["top_iou"][0] == 1.0  # no ties: the same top 4 pixels
    assert 0.0 <= table["top_iou"][1] <= 1.0
    assert table["tied_a"].tolist() == [0.0, 1.0] and table["tied_b"].tolist() == [0.0, 1.0]
    # Bilinear upsampling of a 2x2 grid to 4x4 keeps its ranking (here: monotone in row-major order).
    up = consistency({"m": ramp[:, :2, :2].numpy()}, {"m": ramp[:, :2, :2].numpy()}, size=(4, 4))
    assert up["spearman"].tolist() == [pytest.approx(1.0)]
    assert consistency({"m": np.zeros((1, 2, 2))}, {}, size=(4, 4)).empty
