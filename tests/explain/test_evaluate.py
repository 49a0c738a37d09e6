"""The explain stage's library: which class each map explains, on which images each measure is scored, the tables.

Regression tests for the audit's items 1-3 use a hand-set toy model whose Pneumonia map and No Finding map are
known exactly: ``A = (x, 2x)``, ``z = 3·mean(x) − 2·mean(x) − 2 = mean(x) − 2``, so Grad-CAM of class 1 is
``ReLU(x)/hw`` (it peaks on the bright pixel) and Grad-CAM of class 0 is ``ReLU(−x)/hw = 0`` (a constant map).
"""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrexplain.config import ExplainParams, FaithfulnessParams, SanityParams
from cxrexplain.evaluation.classification import youden_threshold
from cxrexplain.explain import attributions
from cxrexplain.explain.evaluate import (
    _Maps,
    choose_subset,
    explain_images,
    outcomes,
    paired_table,
    parse_boxes,
    pneumonia_attributions,
    scale_boxes,
    summary_table,
)
from cxrexplain.explain.measures.registry import MEASURES, columns
from cxrexplain.models.backbones import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def toy() -> Classifier:
    model = Classifier("toy", nn.Sequential(nn.Conv2d(1, 2, 1, bias=False)), channels=2, hidden=2)
    with torch.no_grad():
        model.features[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        model.head[3].weight.copy_(torch.eye(2))
        model.head[3].bias.zero_()
        model.head[5].weight.copy_(torch.tensor([[3.0, -1.0]]))
        model.head[5].bias.fill_(-2.0)
    return model.eval()


def images_with_blobs(where: list[tuple[int, int]], value: float = 1.0, size: int = 8) -> torch.Tensor:
    x = torch.zeros(len(where), 1, size, size)
    for i, (r, c) in enumerate(where):
        x[i, 0, r, c] = value
    return x


CHEAP = ExplainParams(
    cams=("gradcam",),
    attributions=(),
    measures=("pointing", "energy", "iou", "sparseness"),
    tie_orders=2,
    faithfulness=FaithfulnessParams(steps=4),
    sanity=SanityParams(images=2, modes=("top_down",)),
)


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
    few = np.array([1, 0, 0, 0, 0, 0])
    b = choose_subset(few, 4, seed=0)
    assert len(b) == 4 and (few[b] == 1).sum() == 1
    assert list(choose_subset(few, None, seed=0)) == list(range(6))
    assert list(choose_subset(few, 99, seed=0)) == list(range(6))


def test_outcomes_from_labels_and_predictions():
    assert list(outcomes(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))) == ["TP", "FN", "FP", "TN"]


def test_item1_a_missed_pneumonia_is_localised_with_its_pneumonia_map():
    # image 0: Pneumonia (box around the bright pixel) but z = 1/64 − 2 < 0: a false negative
    x = images_with_blobs([(5, 5), (1, 1)])
    boxes = [[[4.0, 4.0, 3.0, 3.0]], []]
    result = explain_images(toy(), x, np.array([1, 0]), boxes, CHEAP, threshold=0.5)
    table = result.per_image
    fn = table[(table["index"] == 0)]
    assert set(fn["outcome"]) == {"FN"}
    localised = fn[fn["pointing"].notna()]
    assert len(localised) == 1 and int(localised["explained_class"].iloc[0]) == 1
    assert localised["pointing"].iloc[0] == 1.0  # the Pneumonia map peaks inside the box
    assert localised["energy"].iloc[0] == pytest.approx(1.0)
    # the decision map of this image explains No Finding: constant (all zero), scored for complexity, not localised
    decision = fn[fn["explained_class"] == 0]
    assert len(decision) == 1 and np.isnan(decision["pointing"].iloc[0])
    # the raw maps kept for the consistency stage are the Pneumonia maps (non-zero here), not the decision maps
    assert result.raw["gradcam"][0].max() > 0 and result.decision_maps["gradcam"][0].max() == 0


def test_item2_the_threshold_that_defines_outcomes_defines_the_explained_class():
    x = images_with_blobs([(5, 5), (1, 1)])
    boxes = [[[4.0, 4.0, 3.0, 3.0]], []]
    p = float(torch.sigmoid(torch.tensor(1 / 64 - 2.0)))  # 0.1216…, both images
    low = explain_images(toy(), x, np.array([1, 0]), boxes, CHEAP, threshold=0.1)  # youden-like low threshold
    assert low.per_image["probability"].to_numpy() == pytest.approx(p)
    assert low.probability == pytest.approx([p, p])  # every image's, also those no measure scores
    assert list(low.predicted) == [1, 1]
    rows = low.per_image.drop_duplicates("index").set_index("index")
    assert list(rows["outcome"]) == ["TP", "FP"]
    # every map of a predicted-Pneumonia image explains Pneumonia: one row per image, class 1
    assert (low.per_image["explained_class"] == 1).all() and len(low.per_image) == 2
    high = explain_images(toy(), x, np.array([1, 0]), boxes, CHEAP, threshold=0.5)
    assert list(high.predicted) == [0, 0]
    decision = high.per_image[high.per_image["maps_for"].str.contains("decision")]
    assert list(decision["explained_class"]) == [0, 0]


def test_every_method_is_measured_on_the_same_images():
    torch.manual_seed(0)
    model = Classifier("toy", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()), channels=4, hidden=8).eval()
    x = torch.randn(6, 1, 8, 8)
    labels = np.array([1, 1, 1, 0, 0, 0])
    boxes = [[[0.0, 0.0, 4.0, 4.0]], [], [[2.0, 2.0, 4.0, 4.0]], [], [], []]
    settings = ExplainParams(
        cams=("gradcam", "scorecam", "ablationcam"),
        attributions=("saliency", "deeplift_smoothgrad"),
        measures=tuple(MEASURES),
        subset=4,
        tie_orders=2,
        faithfulness=FaithfulnessParams(steps=4, road_percentiles=(25, 50, 75)),
        sanity=SanityParams(images=2, modes=("top_down",)),
    )
    result = explain_images(model, x, labels, boxes, settings, patients=["a", "a", "b", "c", "c", "d"])
    table = result.per_image
    for c in columns():
        scored = {m: set(f.loc[f[c.name].notna(), "index"]) for m, f in table.groupby("method")}
        assert len({frozenset(v) for v in scored.values()}) == 1, c.name  # the same images for every method
    localised = set(table.loc[table["pointing"].notna(), "index"])
    assert localised == {0, 2}  # every image with a box, and only those
    faithful = set(table.loc[table["deletion"].notna(), "index"])
    assert faithful == set(result.subset) and len(faithful) == 4
    assert set(table["patient"]) <= {"a", "b", "c", "d"}
    assert table["tied_share"].between(0, 1).all()

    summary = summary_table(table, n=50, seed=0)
    assert {"method", "group", "metric", "n", "clusters", "mean", "low", "high"} <= set(summary.columns)
    pointing = summary[(summary["metric"] == "pointing") & (summary["group"] == "all")]
    assert (pointing["n"] == 2).all() and (pointing["clusters"] == 2).all()  # images 0 and 2: patients a and b

    paired = paired_table(table, n=50, seed=0)
    assert list(paired.columns) == [
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
    ]
    assert set(paired["measure"]) >= {"pointing", "deletion", "insertion", "increase"}
    deletion = paired[paired["measure"] == "deletion"]
    methods = [*settings.cams, *settings.attributions]
    pairs = len(methods) * (len(methods) - 1) // 2
    assert (deletion["n"] == 4).all() and len(deletion) == pairs * 2  # every pair × (t-test, Wilcoxon)
    assert set(paired.loc[paired["measure"] == "pointing", "test"]) == {"mcnemar"}

    curve = result.sanity
    assert set(curve["method"]) == set(methods)
    assert set(result.raw) == set(result.decision_maps) == set(settings.cams)  # every CAM's maps for the later stages
    assert set(curve["mode"]) == {"top_down"}

    # the captum methods' Pneumonia maps kept for the viewer: the boxed images' (the maps the pointing game scored)
    # and the subset's Pneumonia-predicted images' (their decision maps), nowhere else
    positive = set(result.subset[result.predicted[result.subset] == 1])
    assert list(result.attribution_rows) == sorted({0, 2} | positive)
    assert set(result.attribution_maps) == set(settings.attributions)
    for method, maps in result.attribution_maps.items():
        assert maps.dtype == np.float16 and maps.shape == (len(result.attribution_rows), 8, 8)
        boxed = np.searchsorted(result.attribution_rows, result.boxed)
        assert np.array_equal(maps[boxed], result.pneumonia_maps[method]), method
    others = sorted(positive - {0, 2})
    assert others == [4, 5]  # this toy predicts Pneumonia everywhere: two subset images without a box
    # saliency is deterministic: the decision map of a Pneumonia-predicted image is its Pneumonia map
    again = attributions.compute_attributions(model, x[others], [1] * len(others), ["saliency"])["saliency"]
    kept = result.attribution_maps["saliency"][np.searchsorted(result.attribution_rows, others)]
    np.testing.assert_allclose(kept.astype(np.float32), again.numpy(), atol=1e-3)


def _maps(rows: list[int], classes: list[int], values: list[float]) -> _Maps:
    maps = torch.tensor(values).view(-1, 1, 1).expand(-1, 2, 2)
    return _Maps(np.array(rows), torch.tensor(classes), maps, None)


def test_pneumonia_attributions_keep_every_class1_map_once():
    # boxed images 1 and 3 (localisation maps), the subset 0, 1, 2 with 0 and 1 predicted Pneumonia (decision maps)
    roles = {
        "pneumonia": {"saliency": _maps([1, 3], [1, 1], [0.25, 0.5])},
        "decision": {"saliency": _maps([0, 1, 2], [1, 1, 0], [0.75, 1.0, 0.125])},
    }
    boxed, subset, predicted = np.array([1, 3]), np.array([0, 1, 2]), np.array([1, 1, 0, 0])
    rows, maps = pneumonia_attributions(roles, ["saliency"], boxed, subset, predicted)
    assert rows.tolist() == [0, 1, 3]  # image 2's only map explains No Finding: not kept
    assert maps["saliency"].dtype == np.float16
    assert maps["saliency"][:, 0, 0].tolist() == [0.75, 0.25, 0.5]  # image 1: its localisation map, not 1.0
    no_methods = pneumonia_attributions(roles, [], boxed, subset, predicted)
    no_images = pneumonia_attributions(
        {"pneumonia": {}, "decision": {"saliency": _maps([2], [0], [0.5])}}, ["saliency"], [], [2], predicted
    )
    for rows, maps in (no_methods, no_images):
        assert rows.dtype == np.int64 and len(rows) == 0 and maps == {}


def test_youden_threshold_separates_perfectly_separable_predictions():
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.35, 0.6, 0.9])
    t = youden_threshold(labels, probs)
    assert t == pytest.approx((0.35 + 0.6) / 2)
    assert ((probs > t) == labels.astype(bool)).all()
    saturated = np.array([1e-4, 2e-3, 5e-3, 0.9996, 0.9999])
    assert 0.4 < youden_threshold(labels, saturated) < 0.6


def test_summary_groups_are_all_and_each_outcome():
    table = pd.DataFrame(
        {
            "method": ["m"] * 4,
            "index": [0, 1, 2, 3],
            "patient": ["a", "b", "c", "d"],
            "outcome": ["TP", "TP", "FN", "FN"],
            "pointing": [1.0, 0.0, 1.0, 1.0],
            "tied_share": [0.0, 0.0, 0.0, 0.0],
        }
    )
    summary = summary_table(table, n=50).set_index(["group", "metric"])
    assert summary.loc[("all", "pointing"), "mean"] == 0.75
    assert summary.loc[("TP", "pointing"), "mean"] == 0.5 and summary.loc[("FN", "pointing"), "n"] == 2
