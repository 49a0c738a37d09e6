"""Complexity measures: exact values on hand-made maps, and Quantus 0.6 as the oracle."""

import math
import warnings

import numpy as np
import pytest
import quantus
import torch

from cxrexplain.explain.measures.complexity import complexity, sparseness

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_HOT = torch.zeros(4, 4)
ONE_HOT[2, 1] = 0.7
UNIFORM = torch.full((4, 4), 0.3)
ZERO = torch.zeros(4, 4)
SMALL = torch.tensor([[0.0, 1.0], [3.0, 0.0]])  # sorted: 0, 0, 1, 3


def quantus_scores(metric: quantus.Metric, maps: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(model=None, x_batch=maps.copy(), y_batch=np.zeros(len(maps), dtype=int), a_batch=maps.copy())
    return np.asarray(scores, dtype=np.float64)


def random_maps(seed: int) -> np.ndarray:
    """(B, 1, H, W) float64 maps: uniform, cubed (skewed), and sparse (ReLU-like, 80 % zeros)."""
    rng = np.random.default_rng(seed)
    uniform = rng.random((4, 1, 12, 10))
    sparse = np.where(rng.random((4, 1, 12, 10)) < 0.8, 0.0, rng.random((4, 1, 12, 10)))
    return np.concatenate([uniform, uniform**3, sparse])


QUANTUS_ABS = {"normalise": False, "abs": True, "disable_warnings": True}


def test_sparseness_is_the_gini_index_by_hand():
    # Weights 2i − N − 1 = −3, −1, 1, 3 on 0, 0, 1, 3: (1 + 9) / (4 · 4) = 0.625.
    assert sparseness(SMALL).item() == pytest.approx(0.625)
    values = sparseness(torch.stack([ONE_HOT, UNIFORM, ZERO]))
    assert values.tolist() == pytest.approx([15 / 16, 0.0, 0.0])  # a zero map: the uniform limit, 0
    assert sparseness(-SMALL).item() == pytest.approx(0.625)  # |map|
    assert sparseness(SMALL.double()).dtype == torch.float64
    assert sparseness(SMALL.long()).dtype == torch.float32
    assert sparseness(SMALL).dim() == 0


def test_complexity_is_the_entropy_of_the_normalised_map_by_hand():
    # p = 0.25, 0.75 on SMALL.
    assert complexity(SMALL).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    values = complexity(torch.stack([ONE_HOT, UNIFORM, ZERO]))
    assert values.tolist() == pytest.approx([0.0, math.log(16), math.log(16)])  # a zero map: the uniform limit
    assert complexity(-SMALL).item() == pytest.approx(complexity(SMALL).item())
    assert not complexity(torch.zeros(3, 5, 5)).isnan().any()


def test_measures_reject_maps_of_the_wrong_shape():
    for measure in (sparseness, complexity):
        with pytest.raises(ValueError, match="shape"):
            measure(torch.zeros(2, 1, 4, 4))
        with pytest.raises(ValueError, match="pixel"):
            measure(torch.zeros(2, 0, 4))


def test_sparseness_matches_quantus_up_to_its_eps():
    maps = random_maps(0)
    ours = sparseness(torch.from_numpy(maps[:, 0])).numpy()
    theirs = quantus_scores(quantus.Sparseness(**QUANTUS_ABS), maps)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)  # Quantus adds 1e-7 to every value first
    eps = maps[:, 0] + 1e-7  # the same eps here gives the same value to rounding
    np.testing.assert_allclose(sparseness(torch.from_numpy(eps)).numpy(), theirs, rtol=1e-10)
    # A zero map (Quantus refuses a batch of only zero maps): Quantus' eps makes it uniform (0), as here.
    with_zero = np.concatenate([np.zeros_like(maps[:1]), maps[:1]])
    assert quantus_scores(quantus.Sparseness(**QUANTUS_ABS), with_zero)[0] == pytest.approx(0.0)


def test_complexity_matches_quantus_and_differs_on_a_zero_map():
    maps = random_maps(1)
    ours = complexity(torch.from_numpy(maps[:, 0])).numpy()
    theirs = quantus_scores(quantus.Complexity(**QUANTUS_ABS), maps)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)  # Quantus' log(p + 1e-12) shifts by < N · 1e-12
    with_zero = np.concatenate([np.zeros_like(maps[:1]), maps[:1]])  # Quantus refuses a batch of only zero maps
    assert math.isnan(quantus_scores(quantus.Complexity(**QUANTUS_ABS), with_zero)[0])
    assert complexity(torch.from_numpy(with_zero[:, 0]))[0].item() == pytest.approx(math.log(120))
