"""The explain stage's library: subset choice, coarse-map pointing, sanity verdicts, consistency, Youden threshold."""

import numpy as np
import pandas as pd
import pytest
import torch

from cxrexplain.evaluation.metrics import youden_threshold
from cxrexplain.explain.evaluate import (
    ExplainSettings,
    cell_pointing,
    choose_subset,
    consistency,
    explain_images,
    parse_boxes,
    sanity_summary,
    scale_boxes,
)
from cxrexplain.explain.scores import box_masks
from cxrexplain.models.backbones import build_classifier


def test_parse_and_scale_boxes():
    assert parse_boxes("[[1.5, 2, 3, 4]]") == [[1.5, 2.0, 3.0, 4.0]]
    assert parse_boxes("[]") == [] and parse_boxes(float("nan")) == []
    assert scale_boxes([[1.0, 2.0, 3.0, 4.0]], 2.0) == [[2.0, 4.0, 6.0, 8.0]]


def test_choose_subset_is_balanced_deterministic_and_sorted():
    labels = np.array([1] * 10 + [0] * 30)
    a = choose_subset(labels, 8, seed=3)
    assert list(a) == sorted(a) and len(a) == 8
    assert (labels[a] == 1).sum() == 4 and (labels[a] == 0).sum() == 4
    assert list(choose_subset(labels, 8, seed=3)) == list(a)
    # too few positives: the rest comes from the other class
    few = np.array([1, 0, 0, 0, 0, 0])
    b = choose_subset(few, 4, seed=0)
    assert len(b) == 4 and (few[b] == 1).sum() == 1
    assert list(choose_subset(few, None, seed=0)) == list(range(6))
    assert list(choose_subset(few, 99, seed=0)) == list(range(6))


def test_cell_pointing_uses_the_centre_of_the_maximal_cell():
    # 3×3 cells on a 12×12 image: cell (2, 0) covers rows 8..11, cols 0..3; its centre is pixel (10, 2)
    raw = torch.zeros(2, 3, 3)
    raw[0, 2, 0] = 1.0
    raw[1, 0, 1] = 1.0  # centre pixel (2, 6)
    masks = box_masks([[[1.0, 9.0, 2.0, 2.0]], [[0.0, 0.0, 5.0, 5.0]]], 12, 12)
    assert cell_pointing(raw, masks).tolist() == [True, False]
    # a bilinear upsampling's first argmax would be the image corner (row 8, col 0), outside the box
    up = torch.nn.functional.interpolate(raw[:1, None], size=(12, 12), mode="bilinear", align_corners=False)[0, 0]
    first = int(up.argmax())
    assert (first // 12, first % 12) == (10, 0) and not masks[0, 10, 0]


def test_sanity_summary_passes_a_method_whose_maps_decorrelate_and_fails_one_that_does_not():
    rows = []
    for method, rho in (("good", [1.0, 0.6, 0.1]), ("edge", [1.0, 0.99, 0.98])):
        for step, value in enumerate(rho):
            row = {"method": method, "step": step, "block": f"b{step}", "spearman": value}
            rows += [{**row, "image": i} for i in (0, 1)]
    table = sanity_summary(pd.DataFrame(rows)).drop_duplicates("method").set_index("method")
    assert bool(table.loc["good", "passes"]) and not bool(table.loc["edge", "passes"])
    assert table.loc["good", "min_spearman"] == pytest.approx(0.1)


def test_consistency_of_identical_maps_is_perfect():
    raw = {"gradcam": np.random.default_rng(0).random((3, 3, 3)).astype(np.float32)}
    table = consistency(raw, raw, (12, 12))
    assert np.allclose(table["spearman"], 1.0) and np.allclose(table["top_iou"], 1.0)


def test_youden_threshold_separates_perfectly_separable_predictions():
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.35, 0.6, 0.9])
    t = youden_threshold(labels, probs)
    assert t == pytest.approx((0.35 + 0.6) / 2)  # the middle of the gap, not the edge of the positives
    assert ((probs > t) == labels.astype(bool)).all()  # the outcome rule (prob > t) reproduces the labels
    saturated = np.array([1e-4, 2e-3, 5e-3, 0.9996, 0.9999])  # a confident model: still near the middle
    assert 0.4 < youden_threshold(labels, saturated) < 0.6
    assert youden_threshold(np.array([1, 1]), np.array([0.2, 0.4])) == 0.5


def test_youden_threshold_maximises_j_and_reproduces_it_with_the_strict_rule():
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 2, 40)
        labels[:2] = [0, 1]
        probs = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # ties included
        t = youden_threshold(labels, probs)
        j = [
            ((probs > c) & (labels == 1)).sum() / labels.sum()
            - ((probs > c) & (labels == 0)).sum() / (labels == 0).sum()
            for c in np.concatenate([[-1.0], np.unique(probs)])
        ]
        called = probs > t
        achieved = called[labels == 1].mean() - called[labels == 0].mean()
        assert achieved == pytest.approx(max(j)), (labels, probs, t)
        if (probs >= 0.0).all() and t < probs.min():  # everything positive: just below the lowest score
            assert t == np.nextafter(probs.min(), -np.inf)


def test_explain_images_on_an_untrained_model_fills_every_table():
    torch.manual_seed(0)
    model = build_classifier("resnet50").eval()
    images = torch.randn(4, 1, 64, 64)
    labels = np.array([1, 0, 1, 0])
    boxes = [[[8.0, 8.0, 20.0, 20.0]], [], [[30.0, 30.0, 20.0, 20.0]], []]
    settings = ExplainSettings(
        cams=("gradcam", "layercam"),
        attributions=("saliency",),
        batch_size=2,
        subset=2,
        sanity_images=2,
        steps=3,
    )
    done = []
    result = explain_images(model, images, labels, boxes, settings, advance=done.append)
    assert sum(done) == 4 + 2
    assert set(result.per_image["method"]) == {"gradcam", "layercam", "saliency"}
    assert result.per_image.groupby("method").size().to_dict() == {"gradcam": 4, "layercam": 4, "saliency": 2}
    assert result.maps["gradcam"].shape == (4, 64, 64) and result.maps["saliency"].shape == (2, 64, 64)
    assert result.raw["gradcam"].shape == (4, 2, 2)
    assert set(result.sanity["block"]) >= {"none", "head", "layer4", "stem"}
    assert model.training is False and all(p.grad is None for p in model.parameters())
