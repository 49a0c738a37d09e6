"""Localisation measures: exact values on hand-made 4x4 maps, and Quantus 0.6 / OpenCV / scikit-image as oracles."""

import math
import warnings

import cv2
import numpy as np
import pytest
import quantus
import torch
from skimage.filters import threshold_otsu

from cxrexplain.explain.measures.localisation import (
    IOBB_THRESHOLDS,
    accuracy_at_iobb,
    binarise,
    box_level,
    box_level_table,
    box_mask,
    box_masks,
    cell_centres,
    cell_pointing,
    centre_pixels,
    centre_prior,
    chance_level,
    detected_boxes,
    energy_inside,
    iobb_matrix,
    iou_iobb,
    otsu_binarise,
    otsu_iou,
    otsu_threshold,
    pointing_game,
    top_k_intersection,
    within_reach,
)

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


def spike(row: int, col: int, value: float = 1.0, size: tuple[int, int] = (4, 4)) -> torch.Tensor:
    m = torch.zeros(size)
    m[row, col] = value
    return m


def random_case(seed: int, batch: int = 8, height: int = 12, width: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Maps (B, 1, H, W) of distinct uniform values (no ties almost surely) and one random box mask per image."""
    rng = np.random.default_rng(seed)
    maps = rng.random((batch, 1, height, width))
    masks = np.zeros_like(maps)
    for i in range(batch):
        x, y = rng.integers(0, width - 2), rng.integers(0, height - 2)
        w, h = rng.integers(1, width - x + 1), rng.integers(1, height - y + 1)
        masks[i, 0, y : y + h, x : x + w] = 1
    return maps, masks


def quantus_scores(metric: quantus.Metric, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=None,
            x_batch=maps.copy(),
            y_batch=np.zeros(len(maps), dtype=int),
            a_batch=maps.copy(),
            s_batch=masks.copy(),
        )
    return np.asarray(scores, dtype=np.float64)


QUANTUS_PLAIN = {"normalise": False, "abs": False, "disable_warnings": True}


# ----------------------------------------------------------------------------------------------------------- masks


def test_box_mask_counts_pixels_whose_centre_is_inside_a_box():
    assert torch.equal(box_mask(BOXES, 4, 4), MASK)
    assert not box_mask([], 4, 4).any()
    assert not box_mask([[1.0, 1.0, 0.0, 2.0]], 4, 4).any()  # zero width covers nothing
    assert torch.equal(box_mask([[0.0, 0.0, 0.5, 0.5]], 2, 2), torch.tensor([[True, False], [False, False]]))
    assert torch.equal(box_masks([BOXES, []], 4, 4), torch.stack([MASK, torch.zeros(4, 4, dtype=torch.bool)]))
    assert box_masks([], 4, 4).shape == (0, 4, 4)


def test_within_reach_dilates_the_mask_by_a_disk_of_pixel_centres():
    one = spike(2, 2, size=(5, 5)).bool()
    assert torch.equal(within_reach(one, 0.0), one)
    assert torch.equal(within_reach(one, 0.9), one)  # no neighbour centre within 0.9
    plus = torch.zeros(5, 5, dtype=torch.bool)
    plus[1:4, 2] = plus[2, 1:4] = True
    assert torch.equal(within_reach(one, 1.0), plus)  # distance 1 counts (closed disk); diagonals are √2 away
    square = torch.zeros(5, 5, dtype=torch.bool)
    square[1:4, 1:4] = True
    assert torch.equal(within_reach(one, math.sqrt(2)), square)
    assert within_reach(one, 2.0).sum().item() == 13  # the 3x3 square and the four points at distance 2
    assert within_reach(MASK, 100.0).all()
    assert torch.equal(within_reach(torch.stack([one, ~one]), 1.0)[0], plus)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tolerance"):
            within_reach(one, bad)


# -------------------------------------------------------------------------------------------------------- pointing


def test_pointing_game_scores_the_share_of_tied_maxima_on_the_mask_and_a_constant_map_misses():
    tie = spike(0, 0) + spike(1, 0)  # maxima (0, 0) outside and (1, 0) inside: expected hit 0.5
    maps = torch.stack([spike(2, 1), spike(0, 3), tie, RAMP, torch.zeros(4, 4), torch.full((4, 4), 0.3)])
    hits = pointing_game(maps, MASK.expand(6, 4, 4))
    assert hits.dtype == torch.float32
    assert hits.tolist() == [1.0, 0.0, 0.5, 1.0, 0.0, 0.0]  # RAMP peaks at (3, 3)
    three_way = spike(1, 0) + spike(1, 1) + spike(0, 3)
    assert pointing_game(three_way, MASK).item() == pytest.approx(2 / 3)
    assert pointing_game(spike(2, 1), MASK).dim() == 0  # a single map gives a 0-d result
    assert pointing_game(spike(2, 1), torch.zeros(4, 4, dtype=torch.bool)).item() == 0.0  # empty mask


def test_pointing_game_regression_a_constant_map_no_longer_points_at_the_first_pixel():
    # scores.pointing_game took torch.argmax: a zero map "pointed" at (0, 0) and hit any mask covering it (True).
    corner = box_mask([[0.0, 0.0, 2.0, 2.0]], 4, 4)
    assert pointing_game(torch.zeros(4, 4), corner).item() == 0.0
    # ... and a two-way tie took the first maximum in row-major order (here (0, 0), inside: True); now 0.5.
    assert pointing_game(spike(0, 0) + spike(3, 3), corner).item() == 0.5


def test_pointing_game_with_a_tolerance_in_pixels():
    # (0, 3) is √2 from mask pixel (1, 2) (the nearest); (0, 0) is 1 from (1, 0).
    far = spike(0, 3)
    assert pointing_game(far, MASK, tolerance=1.0).item() == 0.0
    assert pointing_game(far, MASK, tolerance=math.sqrt(2)).item() == 1.0
    tie = spike(0, 3) + spike(0, 0)
    assert pointing_game(tie, MASK, tolerance=1.0).item() == 0.5
    assert pointing_game(torch.zeros(4, 4), MASK, tolerance=10.0).item() == 0.0  # still nothing to point with


def test_pointing_game_matches_quantus_without_ties_and_differs_on_ties():
    maps, masks = random_case(0, batch=16)
    ours = pointing_game(torch.from_numpy(maps[:, 0]), torch.from_numpy(masks[:, 0]).bool())
    theirs = quantus_scores(quantus.PointingGame(**QUANTUS_PLAIN), maps, masks)
    assert 0 < ours.sum() < 16  # both outcomes occur
    np.testing.assert_array_equal(ours.numpy(), theirs)
    # Quantus counts a hit when *any* maximum is inside: a two-way tie with one inside scores 1 there, 0.5 here.
    tie = (spike(0, 0) + spike(1, 0)).numpy()[None, None]
    assert quantus_scores(quantus.PointingGame(**QUANTUS_PLAIN), tie, MASK.numpy()[None, None].astype(float)) == 1
    assert pointing_game(torch.from_numpy(tie[:, 0]), MASK[None]).item() == 0.5


def test_cell_pointing_tests_the_centre_of_the_maximal_coarse_cell():
    # 2x2 cells on 4x4 masks: centres (1, 1), (1, 3), (3, 1), (3, 3); on MASK: inside, outside, outside, inside.
    rows, cols = cell_centres(2, 2, 4, 4)
    assert rows.tolist() == [1, 3] and cols.tolist() == [1, 3]
    assert cell_centres(3, 7, 224, 224)[0].tolist() == [37, 112, 186]  # floor((i + 0.5) · 224 / 3)
    raw = torch.stack(
        [
            torch.tensor([[2.0, 1.0], [0.0, 0.0]]),
            torch.tensor([[1.0, 2.0], [0.0, 0.0]]),
            torch.tensor([[2.0, 2.0], [0.0, 0.0]]),  # tie: one inside, one outside
            torch.zeros(2, 2),  # constant
            torch.tensor([[0.0, 1.0], [1.0, 1.0]]),  # three-way tie, one inside
        ]
    )
    hits = cell_pointing(raw, MASK.expand(5, 4, 4))
    assert hits.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0, 1 / 3])
    # centre (1, 3) is 1 pixel from mask pixel (1, 2); centre (3, 1) is 1 from (2, 1).
    assert cell_pointing(raw, MASK.expand(5, 4, 4), tolerance=1.0).tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert cell_pointing(raw[0], MASK).dim() == 0
    with pytest.raises(ValueError, match="as many images"):
        cell_pointing(raw, MASK.expand(2, 4, 4))


def test_cell_pointing_of_a_map_at_full_resolution_is_the_pointing_game():
    maps, masks = random_case(1)
    m, g = torch.from_numpy(maps[:, 0]), torch.from_numpy(masks[:, 0]).bool()
    assert torch.equal(cell_pointing(m, g), pointing_game(m, g))  # each cell is one pixel, its own centre


def test_centre_prior_points_at_the_pixels_nearest_the_image_centre():
    assert centre_pixels(4, 4) == ([1, 2], [1, 2])
    assert centre_pixels(5, 4) == ([2], [1, 2])
    assert centre_pixels(224, 224) == ([111, 112], [111, 112])
    masks = torch.stack([MASK, ~MASK, spike(1, 1).bool(), spike(0, 0).bool()])
    assert centre_prior(masks).tolist() == [1.0, 0.0, 0.25, 0.0]
    # (0, 0) is √2 from (1, 1), √5 from (1, 2) and (2, 1), √8 from (2, 2).
    assert centre_prior(spike(0, 0).bool(), tolerance=math.sqrt(2)).item() == 0.25
    assert centre_prior(spike(0, 0).bool(), tolerance=math.sqrt(5)).item() == 0.75
    odd = torch.zeros(5, 5, dtype=torch.bool)
    odd[2, 2] = True
    assert centre_prior(odd).item() == 1.0


@pytest.mark.parametrize("size", [(8, 8), (7, 8), (9, 7)])
def test_centre_prior_is_the_pointing_game_of_a_centred_gaussian(size):
    height, width = size
    rows = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    cols = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    gaussian = torch.exp(-(rows[:, None].square() + cols[None, :].square()) / 8)
    masks = torch.from_numpy(np.random.default_rng(2).random((32, height, width)) < 0.3)
    for tolerance in (0.0, 1.5):
        expected = pointing_game(gaussian.expand(32, height, width), masks, tolerance)
        assert torch.equal(centre_prior(masks, tolerance), expected.float())


def test_chance_level_is_the_boxed_share_of_the_image():
    assert chance_level(torch.stack([MASK, ~MASK])).tolist() == pytest.approx([7 / 16, 9 / 16])


# ------------------------------------------------------------------------------------------------- mass and rank


def test_energy_inside_is_the_share_of_the_map_in_the_boxes():
    # RAMP · 15 sums to 120; inside: 4+5+6+8+9+10+15 = 57.
    energy = energy_inside(torch.stack([RAMP, torch.zeros(4, 4)]), MASK.expand(2, 4, 4))
    assert energy.tolist() == pytest.approx([57 / 120, 0.0])


def test_energy_inside_matches_quantus_relevance_mass_accuracy():
    maps, masks = random_case(3)
    ours = energy_inside(torch.from_numpy(maps[:, 0]), torch.from_numpy(masks[:, 0]).bool())
    theirs = quantus_scores(quantus.RelevanceMassAccuracy(**QUANTUS_PLAIN), maps, masks)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12)


def test_top_k_intersection_by_hand():
    # RAMP's top 4: row 3 (only (3, 3) inside); top 8: rows 2-3 (row 2 cols 0-2 and (3, 3) inside).
    assert top_k_intersection(RAMP, MASK, 4).item() == 0.25
    assert top_k_intersection(RAMP, MASK, 8).item() == 0.5
    assert top_k_intersection(RAMP, MASK, 16).item() == 7 / 16
    maps = torch.stack([RAMP, torch.zeros(4, 4), 1 - RAMP])
    # constant map: 0; 1 - RAMP's top 4 is row 0, outside
    assert top_k_intersection(maps, MASK.expand(3, 4, 4), 4).tolist() == [0.25, 0.0, 0.0]


def test_top_k_intersection_averages_over_random_tie_orders():
    # (1, 0) is inside and the maximum; the other 2 of the top 3 come from the 15 zeros, 6 of them inside:
    # expected share (1 + 2 · 6/15) / 3 = 0.6.
    m = spike(1, 0)
    many = top_k_intersection(m, MASK, 3, orders=4000, seed=0).item()
    assert many == pytest.approx(0.6, abs=0.02)
    assert top_k_intersection(m, MASK, 3, orders=8, seed=5) == top_k_intersection(m, MASK, 3, orders=8, seed=5)
    assert top_k_intersection(m, MASK, 1, orders=8).item() == 1.0  # no tie at the top: exact


def test_top_k_intersection_rejects_a_bad_k():
    for k in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            top_k_intersection(RAMP, MASK, k)
    with pytest.raises(ValueError, match="same shape"):
        top_k_intersection(RAMP, MASK[:3], 2)


@pytest.mark.parametrize("k", [1, 7, 30])
def test_top_k_intersection_matches_quantus_without_ties(k):
    maps, masks = random_case(4)
    ours = top_k_intersection(torch.from_numpy(maps[:, 0]), torch.from_numpy(masks[:, 0]).bool(), k)
    theirs = quantus_scores(quantus.TopKIntersection(k=k, **QUANTUS_PLAIN), maps, masks)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12)


# -------------------------------------------------------------------------------------------- regions (image level)


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
    with pytest.raises(ValueError, match="region"):
        binarise(m, 0.5, region="blobs")  # type: ignore[arg-type]


def test_accuracy_at_iobb_is_the_share_of_images_at_or_above_each_threshold():
    acc = accuracy_at_iobb(torch.tensor([0.05, 0.3, 0.5, 0.8]))
    assert acc == {0.1: 0.75, 0.25: 0.75, 0.5: 0.5, 0.75: 0.25, 0.9: 0.0}
    assert math.isnan(accuracy_at_iobb([])[0.5])


# ------------------------------------------------------------------------------------- CheXlocalize (Otsu, mIoU)


def chexlocalize_segmentation(m: torch.Tensor) -> tuple[float, np.ndarray]:
    """``cam_to_segmentation`` of CheXlocalize (Saporta et al. 2022): 8-bit map, OpenCV Otsu, ``u > t``."""
    mask = m - m.min()
    mask = 255 * mask.div(mask.max())
    u = np.uint8(mask.numpy())
    t, segmentation = cv2.threshold(u, 0, int(np.max(u)), cv2.THRESH_OTSU)
    return t, segmentation > 0


def test_otsu_threshold_and_iou_by_hand():
    # Three levels: 0 (4 px), 0.2 → 51 (4 px), 1 → 255 (8 px, rows 2-3). μ_T = (4·51 + 8·255)/16 = 140.25;
    # σ²(0) = (140.25·0.25)² / 0.1875 = 6556.69 < σ²(51) = (140.25·0.5 − 12.75)² / 0.25 = 13167.56: t = 51.
    m = torch.zeros(4, 4)
    m[1] = 0.2
    m[2:] = 1.0
    assert otsu_threshold(m).item() == 51
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[2:] = True
    assert torch.equal(otsu_binarise(m), expected)
    assert otsu_iou(m, MASK).item() == pytest.approx(4 / 11)  # rows 2-3 against MASK: 4 shared, 11 in the union
    # Two levels: every t in 0 … 254 gives the same split; the first (0) is taken, as OpenCV.
    two = (RAMP >= 0.5).float() * 0.7
    assert otsu_threshold(two).item() == 0
    assert torch.equal(otsu_binarise(two), RAMP >= 0.5)
    # A constant map: threshold 0, nothing segmented, IoU 0.
    flat = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.4)])
    assert otsu_threshold(flat).tolist() == [0.0, 0.0]
    assert not otsu_binarise(flat).any()
    assert otsu_iou(flat, MASK.expand(2, 4, 4)).tolist() == [0.0, 0.0]
    assert otsu_iou(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool)).item() == 0.0


def test_otsu_matches_chexlocalize_opencv_and_scikit_image():
    rng = np.random.default_rng(5)
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(rng.random((20, 1, 4, 4))).float(), size=(32, 32), mode="bilinear", align_corners=False
    )[:, 0]  # upsampled CAM-like maps: plateaus and gradients
    skewed = torch.from_numpy(rng.random((20, 32, 32)).astype(np.float32)) ** 3
    maps = torch.cat([smooth, skewed])
    thresholds, segmentations = otsu_threshold(maps), otsu_binarise(maps)
    for i, m in enumerate(maps):
        t, segmentation = chexlocalize_segmentation(m)
        assert thresholds[i].item() == t
        assert np.array_equal(segmentations[i].numpy(), segmentation)
        u = np.uint8((255 * (m - m.min()).div((m - m.min()).max())).numpy())
        assert threshold_otsu(u) == t  # skimage on the 8-bit map: the same t, foreground u > t


# ---------------------------------------------------------------------------------- ChestX-ray8 (box level)


def test_detected_boxes_surround_8_connected_components():
    m = torch.zeros(4, 4)
    m[0, 0] = m[1, 1] = 1.0
    m[3, 3] = 0.8
    m[3, 0] = 0.2  # below half the maximum
    boxes = detected_boxes(torch.stack([m, torch.zeros(4, 4)]))
    assert boxes == [[[0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 1.0, 1.0]], []]
    assert torch.equal(box_mask(boxes[0], 4, 4), binarise(m, 0.5, region="boxes"))
    low = detected_boxes(m[None], level=0.1)[0]  # components in row-major order of their first pixel
    assert low == [[0.0, 0.0, 2.0, 2.0], [0.0, 3.0, 1.0, 1.0], [3.0, 3.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="B, H, W"):
        detected_boxes(m)


def test_iobb_matrix_is_the_overlap_over_the_detected_area():
    iobb = iobb_matrix([[0, 0, 2, 2], [5, 5, 1, 1], [0, 0, 0, 3]], [[1, 1, 2, 2], [0, 0, 4, 4]])
    np.testing.assert_allclose(iobb, [[0.25, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert iobb_matrix([], [[0, 0, 1, 1]]).shape == (0, 1)


def test_box_level_counts_hit_ground_truth_boxes_and_false_positives():
    m = torch.zeros(8, 8)
    m[0:2, 0:4] = 1.0  # detected box A = [0, 0, 4, 2], area 8
    m[6, 6] = 0.9  # detected box B = [6, 6, 1, 1]
    truth = [
        [2.0, 0.0, 4.0, 4.0],  # IoBB(A) = 2·2 / 8 = 0.5
        [0.0, 5.0, 2.0, 2.0],  # overlaps nothing
        [5.5, 5.5, 1.0, 1.0],  # IoBB(B) = 0.5·0.5 / 1 = 0.25
        [1.0, 1.0, 0.0, 3.0],  # zero width: not a box
    ]
    maps = torch.stack([m, torch.zeros(8, 8), m])
    counts = box_level(maps, [truth, [[0.0, 0.0, 2.0, 2.0]], []])
    assert counts.thresholds == IOBB_THRESHOLDS
    assert counts.truth.tolist() == [3, 1, 0]
    assert counts.detected.tolist() == [2, 0, 2]
    assert counts.hits.tolist() == [[2, 2, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert counts.false_positives.tolist() == [[0, 0, 1, 2, 2], [0, 0, 0, 0, 0], [2, 2, 2, 2, 2]]
    table = box_level_table(counts)
    assert table.threshold.tolist() == list(IOBB_THRESHOLDS)
    assert table.accuracy.tolist() == pytest.approx([0.5, 0.5, 0.25, 0.0, 0.0])  # hits / 4 ground-truth boxes
    assert table.afp.tolist() == pytest.approx([2 / 3, 2 / 3, 1.0, 4 / 3, 4 / 3])  # false positives / 3 images
    split = box_level_table([box_level(maps[:1], [truth]), box_level(maps[1:], [[[0.0, 0.0, 2.0, 2.0]], []])])
    assert split.equals(table)
    with pytest.raises(ValueError, match="one box list per image"):
        box_level(maps, [truth])


def test_box_level_on_one_pixel_aligned_box_agrees_with_the_image_level_iobb():
    rng = np.random.default_rng(6)
    for _ in range(20):
        m = torch.zeros(10, 10)
        r, c = rng.integers(0, 8, 2)
        m[r : r + 3, c : c + 2] = torch.from_numpy(rng.random((3, 2))).float() + 1  # one blob, one detected box
        x, y = (int(v) for v in rng.integers(0, 5, 2))
        w, h = (int(v) for v in rng.integers(1, 6, 2))
        counts = box_level(m[None], [[[x, y, w, h]]])
        _, iobb = iou_iobb(m, box_mask([[x, y, w, h]], 10, 10), region="boxes")
        assert counts.hits[0].tolist() == [int(iobb.item() >= t) for t in IOBB_THRESHOLDS]
