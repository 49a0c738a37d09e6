"""Explanation metrics: exact values on hand-sized maps, boxes and toy models."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from torch import nn

from cxrexplain.explain.attributions import BLACK, compute_attributions
from cxrexplain.explain.scores import (
    accuracy_at_iobb,
    average_ranks,
    binarise,
    bootstrap_ci,
    box_mask,
    box_masks,
    cascading_randomisation,
    chance_level,
    confidence_change,
    deletion_insertion,
    energy_inside,
    gaussian_blur,
    iou_iobb,
    outcomes,
    pointing_game,
    randomisation_blocks,
    rank_correlation,
    reference_images,
    summarise,
    top_region_iou,
)
from cxrexplain.models.backbones import Classifier, build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

# Rows 1-2, columns 0-2 (pixel centres 0.5, 1.5, 2.5 in [0.5, 2.5]; 1.5, 2.5 in [1.0, 2.6]), and pixel (3, 3).
BOXES = [[0.5, 1.0, 2.0, 1.6], [3.0, 3.0, 1.0, 1.0]]
MASK = torch.tensor(
    [
        [0, 0, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 1],
    ],
    dtype=torch.bool,
)
RAMP = torch.arange(16.0).view(4, 4) / 15  # 0 … 1 in row-major order


class MeanProbability(nn.Module):
    """``logit = log(m / (1 - m))`` with ``m`` the image mean: the class-1 probability *is* the mean intensity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3)).clamp(1e-12, 1 - 1e-12)
        return torch.log(m / (1 - m))


def toy_classifier() -> Classifier:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
    return Classifier("toy", features, channels=8, hidden=16)


# ----------------------------------------------------------------------------------------------------- localisation


def test_box_mask_counts_pixels_whose_centre_is_inside_a_box():
    assert torch.equal(box_mask(BOXES, 4, 4), MASK)
    assert not box_mask([], 4, 4).any()
    assert not box_mask([[1.0, 1.0, 0.0, 2.0]], 4, 4).any()  # zero width covers nothing
    assert torch.equal(box_mask([[0.0, 0.0, 0.5, 0.5]], 2, 2), torch.tensor([[True, False], [False, False]]))
    assert torch.equal(box_masks([BOXES, []], 4, 4), torch.stack([MASK, torch.zeros(4, 4, dtype=torch.bool)]))


def test_pointing_game_hits_when_the_maximum_is_inside_and_ties_take_the_first_pixel():
    inside = torch.zeros(4, 4)
    inside[2, 1] = 1.0
    outside = torch.zeros(4, 4)
    outside[0, 3] = 1.0
    tie = torch.zeros(4, 4)
    tie[0, 0] = tie[1, 0] = 1.0  # first maximum (0, 0) is outside, the second (1, 0) inside
    hits = pointing_game(torch.stack([inside, outside, tie, RAMP]), MASK.expand(4, 4, 4))
    assert hits.tolist() == [True, False, False, True]  # RAMP peaks at (3, 3)
    assert bool(pointing_game(inside, MASK)) is True


def test_energy_inside_is_the_share_of_the_map_in_the_boxes():
    # RAMP · 15 sums to 120; inside: 4+5+6+8+9+10+15 = 57.
    energy = energy_inside(torch.stack([RAMP, torch.zeros(4, 4)]), MASK.expand(2, 4, 4))
    assert energy.tolist() == pytest.approx([57 / 120, 0.0])


def test_iou_and_iobb_of_the_map_binarised_at_half_its_maximum():
    # RAMP ≥ 0.5 is rows 2-3 (8 pixels); with MASK (7 pixels): intersection row 2 cols 0-2 and (3, 3) = 4.
    iou, iobb = iou_iobb(torch.stack([RAMP, 2 * RAMP, torch.zeros(4, 4)]), MASK.expand(3, 4, 4))
    assert iou.tolist() == pytest.approx([4 / 11, 4 / 11, 0.0])  # the level is relative to each map's maximum
    assert iobb.tolist() == pytest.approx([4 / 8, 4 / 8, 0.0])  # an empty prediction scores 0
    iou, iobb = iou_iobb(RAMP, MASK, level=0.75)  # row 3 (4 pixels): intersection (3, 3)
    assert (iou.item(), iobb.item()) == pytest.approx((1 / 10, 1 / 4))


def test_binarised_region_as_boxes_covers_8_connected_components():
    m = torch.zeros(4, 4)
    m[0, 0] = m[1, 1] = 1.0  # diagonal neighbours: one component, box rows 0-1 × cols 0-1
    m[3, 3] = 0.8
    boxes = binarise(m, 0.5, region="boxes")
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = True
    expected[3, 3] = True
    assert torch.equal(boxes, expected)
    assert binarise(m, 0.5).sum().item() == 3
    _, iobb = iou_iobb(m, MASK, region="boxes")  # inside MASK: (1, 0), (1, 1), (3, 3) of 5
    assert iobb.item() == pytest.approx(3 / 5)


def test_accuracy_at_iobb_is_the_share_of_images_at_or_above_each_threshold():
    acc = accuracy_at_iobb(torch.tensor([0.05, 0.3, 0.5, 0.8]))
    assert acc == {0.1: 0.75, 0.25: 0.75, 0.5: 0.5, 0.75: 0.25, 0.9: 0.0}
    assert math.isnan(accuracy_at_iobb([])[0.5])


def test_chance_level_is_the_boxed_share_of_the_image():
    assert chance_level(torch.stack([MASK, ~MASK])).tolist() == pytest.approx([7 / 16, 9 / 16])


# ----------------------------------------------------------------------------------------------------- faithfulness


def test_deletion_and_insertion_aucs_by_hand():
    image = torch.tensor([[0.4, 0.3], [0.2, 0.1]], dtype=torch.float64)
    images = torch.stack([image, image])[:, None]
    maps = torch.stack([image, image])  # delete 0.4, then 0.3, 0.2, 0.1
    result = deletion_insertion(MeanProbability(), images, maps, [1, 0], steps=4, baseline=0.0)
    # Class 1: p = image mean. Deletion 0.25, 0.15, 0.075, 0.025, 0 → 0.25 · (0.125 + 0.25 + 0) = 0.09375;
    # insertion 0, 0.1, 0.175, 0.225, 0.25 → 0.25 · (0 + 0.5 + 0.125) = 0.15625. Class 0: p = 1 - mean.
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.deletion_curve[0].tolist() == pytest.approx([0.25, 0.15, 0.075, 0.025, 0.0])
    assert result.deletion.tolist() == pytest.approx([0.09375, 0.90625])
    assert result.insertion.tolist() == pytest.approx([0.15625, 0.84375])
    one_at_a_time = deletion_insertion(MeanProbability(), images, maps, [1, 0], steps=4, baseline=0.0, batch_size=1)
    assert torch.allclose(one_at_a_time.deletion, result.deletion)
    assert torch.allclose(one_at_a_time.insertion, result.insertion)


def test_deletion_steps_round_the_pixel_counts_and_the_mean_baseline_is_flat():
    image = torch.tensor([[0.4, 0.3], [0.2, 0.1]], dtype=torch.float64)[None, None]
    result = deletion_insertion(MeanProbability(), image, image[:, 0], [1], steps=3)
    assert result.fractions.tolist() == [0.0, 0.25, 0.75, 1.0]  # round(4k / 3) = 0, 1, 3, 4 pixels
    # With the image's own mean as the reference, deleting everything gives the same mean: the curve ends at 0.25.
    assert result.deletion_curve[0, -1].item() == pytest.approx(0.25)
    assert result.insertion_curve[0, 0].item() == pytest.approx(0.25)


def test_reference_images():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    assert torch.equal(reference_images(x, "mean"), torch.full_like(x, 4.0))
    assert torch.equal(reference_images(x, "black"), torch.full_like(x, BLACK))
    assert torch.equal(reference_images(x, -1.5), torch.full_like(x, -1.5))
    flat = torch.full((1, 1, 8, 8), 2.0)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    assert torch.allclose(reference_images(flat, "blur"), flat)
    spike = torch.zeros(1, 1, 9, 9)
    spike[..., 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred[..., 4, 4].item() < 0.2
    with pytest.raises(ValueError, match="baseline"):
        reference_images(x, "noise")


def test_confidence_change_when_the_map_halves_the_image():
    image = torch.tensor([[0.4, 0.3], [0.2, 0.1]], dtype=torch.float64)
    images = torch.stack([image, image])[:, None]
    maps = torch.full((2, 2, 2), 0.5, dtype=torch.float64)
    result = confidence_change(MeanProbability(), images, maps, [1, 0], reference=0.0)
    assert result.original.tolist() == pytest.approx([0.25, 0.75])
    assert result.masked.tolist() == pytest.approx([0.125, 0.875])
    assert result.change.tolist() == pytest.approx([-0.125, 0.125])
    assert result.drop.tolist() == pytest.approx([0.5, 0.0])
    assert result.increase.tolist() == [False, True]


# ----------------------------------------------------------------------------------------------------- sanity check


def test_randomisation_blocks_of_the_study_backbones_cover_every_parameter_once():
    expected = {
        "resnet50": ["head", "layer4", "layer3", "layer2", "layer1", "stem"],
        "densenet121": ["head", "denseblock4", "denseblock3", "denseblock2", "denseblock1", "stem"],
    }
    for arch, names in expected.items():
        model = build_classifier(arch)
        blocks = randomisation_blocks(model)
        assert [name for name, _ in blocks] == names
        covered = [id(p) for _, block in blocks for p in block.parameters()]
        assert len(covered) == len(set(covered)) and set(covered) == {id(p) for p in model.parameters()}
    toy = randomisation_blocks(toy_classifier())
    assert [name for name, _ in toy] == ["head", "features.2", "features.0"]


def saliency_maps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return compute_attributions(model, images, classes, ["saliency"])["saliency"]


def test_cascading_randomisation_decorrelates_a_gradient_method_but_not_the_image_itself():
    model = toy_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    images = torch.randn(2, 1, 12, 12)
    table = cascading_randomisation(model, images, [1, 0], saliency_maps, seed=0)
    assert list(table.columns) == ["step", "block", "image", "spearman"]
    assert table.block.unique().tolist() == ["none", "head", "features.2", "features.0"]
    means = table.groupby("step").spearman.mean()
    assert means[0] == pytest.approx(1.0)  # nothing randomised yet: the same maps
    assert (means[1:] < 0.5).all()  # from the head down, the maps stop resembling the trained model's
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself is untouched

    # A "method" that ignores the model (here: the image itself) keeps correlation 1: it fails the sanity check.
    table = cascading_randomisation(model, images, [1, 0], lambda m, x, c: x[:, 0], seed=0)
    assert table.spearman.tolist() == pytest.approx([1.0] * len(table))


def test_cascading_randomisation_is_deterministic_per_seed():
    model, images = toy_classifier(), torch.randn(2, 1, 12, 12)
    a = cascading_randomisation(model, images, [1, 0], saliency_maps, seed=7)
    b = cascading_randomisation(model, images, [1, 0], saliency_maps, seed=7)
    pd.testing.assert_frame_equal(a, b)


# ------------------------------------------------------------------------------------------------------ consistency


def test_rank_correlation_matches_scipy_spearman_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(3, 5, 5)).astype(np.float32)
    b = (a + rng.integers(0, 3, size=(3, 5, 5))).astype(np.float32)
    rho = rank_correlation(torch.from_numpy(a), torch.from_numpy(b))
    expected = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    assert rho.tolist() == pytest.approx(expected, abs=1e-12)
    ranks = average_ranks(torch.from_numpy(a).flatten(1))
    assert np.allclose(ranks.numpy(), scipy.stats.rankdata(a.reshape(3, -1), axis=1))
    assert math.isnan(rank_correlation(torch.ones(4, 4), RAMP).item())  # a constant map has no ranking


def test_top_region_iou_compares_the_top_fifth_of_each_map():
    a = torch.arange(10.0).view(2, 5)  # top 2 of 10 pixels: 9, 8
    b = a.clone()
    b.view(-1)[8] = 0.0  # top 2: 9, 7
    assert top_region_iou(a, b).item() == pytest.approx(1 / 3)
    assert top_region_iou(a, a).item() == 1.0
    assert top_region_iou(torch.zeros(2, 5), a).item() == 0.0  # a constant map's top pixels are the first ones


# ------------------------------------------------------------------------------------------------------- statistics


def test_bootstrap_ci_contains_the_mean_is_deterministic_and_drops_nan():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0] * 4)
    estimate, low, high = bootstrap_ci(values, seed=0)
    assert estimate == pytest.approx(4.0) and low < estimate < high
    assert bootstrap_ci(values, seed=0) == (estimate, low, high)
    assert bootstrap_ci(values, seed=1) != (estimate, low, high)
    assert bootstrap_ci([*values, np.nan], seed=0) == (estimate, low, high)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan]))
    median, m_low, m_high = bootstrap_ci(values, stat=np.median, n=200)
    assert median == 3.0 and m_low <= 3.0 <= m_high
    assert low >= 1.0 and high <= 10.0


def test_summarise_gives_mean_and_interval_overall_and_per_outcome():
    per_image = pd.DataFrame(
        {
            "outcome": ["TP", "TP", "FN", "TN"],
            "energy": [0.5, 0.7, 0.1, np.nan],
            "hit": [True, False, True, False],
        }
    )
    table = summarise(per_image, n=200)
    assert list(table.columns) == ["group", "metric", "n", "mean", "low", "high"]
    assert table.group.unique().tolist() == ["all", "TP", "FN", "TN"]
    row = table.set_index(["group", "metric"])
    assert row.loc[("all", "energy"), "mean"] == pytest.approx(13 / 30) and row.loc[("all", "energy"), "n"] == 3
    assert row.loc[("TP", "energy"), "mean"] == pytest.approx(0.6)
    assert row.loc[("all", "hit"), "mean"] == 0.5 and row.loc[("FN", "hit"), "mean"] == 1.0
    assert row.loc[("TN", "energy"), "n"] == 0 and math.isnan(row.loc[("TN", "energy"), "mean"])
    assert summarise(per_image, by=None, n=50).group.unique().tolist() == ["all"]


def test_outcomes_use_a_strict_threshold_like_the_classification_metrics():
    labels = [1, 1, 0, 0]
    assert outcomes(labels, [0.7, 0.5, 0.6, 0.5], threshold=0.5).tolist() == ["TP", "FN", "FP", "TN"]
    assert outcomes(labels, [0.7, 0.5, 0.6, 0.5], threshold=0.4).tolist() == ["TP", "TP", "FP", "FP"]
