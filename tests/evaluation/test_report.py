"""The report's library: which galleries it links, the paired table, DeLong on two prediction tables, publishing."""

import math

import numpy as np
import pandas as pd
import pytest

from cxrexplain.errors import CxrError
from cxrexplain.evaluation import classification as cls
from cxrexplain.evaluation import report
from cxrexplain.explain.measures.registry import MEASURES
from cxrexplain.workspace import Workspace


def test_linked_galleries_are_the_ones_the_explain_stage_makes(tmp_path):
    files = Workspace(tmp_path).explain("resnet50", 42)
    both = report.linked_galleries({"methods": {"gradcam": {}, "saliency": {}}, "images_with_boxes": 3}, files)
    assert both == {"gallery_gradcam": files.gallery("gradcam"), "methods": files.methods_figure}
    assert report.linked_galleries({"methods": {"gradcam": {}}, "images_with_boxes": 0}, files) == {
        "gallery_gradcam": files.gallery("gradcam")
    }  # no image with a box: no method grid
    assert report.linked_galleries({"methods": {"layercam": {}}, "images_with_boxes": 2}, files) == {
        "methods": files.methods_figure
    }  # no Grad-CAM: its gallery is not linked


def test_paired_rows_show_gradcam_against_each_method_on_the_headline_measures_in_order():
    table = pd.DataFrame(
        [
            ("gradcam", "saliency", "deletion", 10, -0.05, -0.1, 0.0, 0.2, 0.4, "t"),
            ("gradcam", "saliency", "deletion", 10, -0.05, -0.1, 0.0, 0.0004, 0.0008, "wilcoxon"),
            ("gradcam", "layercam", "pointing", 8, 0.125, 0.0, 0.25, 0.5, 1.0, "mcnemar"),
            ("gradcam", "layercam", "iou", 8, 0.1, 0.0, 0.2, 0.01, 0.02, "t"),  # not a headline measure
            ("layercam", "saliency", "pointing", 8, 0.1, 0.0, 0.2, 0.01, 0.02, "mcnemar"),  # not against Grad-CAM
        ],
        columns=["method_a", "method_b", "measure", "n", "mean_difference", "low", "high", "p", "p_holm", "test"],
    )
    assert report.paired_rows(table) == [
        ["pointing", "layercam", "8", "+0.125 (+0.000 to +0.250)", "McNemar 0.500 (1.000)"],
        ["deletion", "saliency", "10", "-0.050 (-0.100 to +0.000)", "t 0.200 (0.400) · Wilcoxon 4.0e-04 (8.0e-04)"],
    ]


def test_every_registry_column_has_one_explanation_table():
    shown = [c.name for _, columns in report.explanation_tables() for c in columns]
    expected = [c.name for m in MEASURES.values() for c in m.columns]
    assert sorted(shown) == sorted([*expected, "tied_share"])


def _predictions(images: list[str], probabilities: list[float], labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": images,
            "patient": [f"p{k // 2}" for k in range(len(images))],
            "label": labels,
            "probability": probabilities,
            "split": "test",
        }
    )


def test_delong_comparison_pairs_the_two_tables_by_image_name():
    labels = [0, 1, 0, 1, 1, 0]
    a = _predictions(list("abcdef"), [0.1, 0.8, 0.3, 0.6, 0.4, 0.5], labels)
    b = _predictions(list("abcdef"), [0.2, 0.9, 0.7, 0.5, 0.6, 0.1], labels)
    expected = cls.delong(np.array(labels), a["probability"].to_numpy(), b["probability"].to_numpy())
    shuffled = b.iloc[::-1]  # row order does not matter: rows are matched by image name
    result = report.delong_comparison({"resnet50": a, "densenet121": shuffled})
    assert result.pop("archs") == ["resnet50", "densenet121"]
    assert result == pytest.approx({"images": 6, **expected})
    with pytest.raises(CxrError, match="resnet50 and densenet121 were tested on different images"):
        report.delong_comparison({"resnet50": a, "densenet121": b.assign(image=list("abcdeX"))})


def test_classification_chooses_the_threshold_on_val_and_counts_test_patients():
    frame = pd.concat(
        [
            _predictions(["v1", "v2", "v3", "v4"], [0.2, 0.3, 0.7, 0.9], [0, 0, 1, 1]).assign(split="val"),
            _predictions([f"t{k}" for k in range(6)], [0.1, 0.8, 0.3, 0.6, 0.4, 0.55], [0, 1, 0, 1, 1, 0]),
        ]
    )
    result = report.classification(frame, bootstrap=50, seed=0)
    assert result["test_images"] == 6 and result["test_patients"] == 3
    assert 0.3 < result["threshold_youden"] <= 0.7  # separates the val classes
    assert result["at_0.5"]["accuracy"]["value"] == pytest.approx(4 / 6)


def test_flat_metrics_leave_out_nan_and_name_the_threshold():
    entry = {"at_0.5": {"auroc": {"value": 0.75}, "ece": {"value": math.nan}}, "at_youden": {"auroc": {"value": 0.7}}}
    assert report.flat_metrics(entry) == {"report/at_0.5/auroc": 0.75, "report/at_youden/auroc": 0.7}


def test_publish_replaces_folders_whole_and_writes_the_markdown_last(tmp_path):
    reports, built = tmp_path / "reports", tmp_path / ".reports.x.part"
    (reports / "figures").mkdir(parents=True)
    (reports / "figures" / "sanity_vgg16.png").write_bytes(b"old")  # a figure of an architecture no longer reported
    (reports / "report.md").write_text("old")
    for name in ("figures", "plots"):
        (built / name).mkdir(parents=True)
        (built / name / "roc.png").write_bytes(b"new")
    for name in ("metrics.json", "report.html", "report.md"):
        (built / name).write_text("new")
    report.publish(built, reports)
    assert sorted(p.relative_to(reports).as_posix() for p in reports.rglob("*") if p.is_file()) == [
        "figures/roc.png",
        "metrics.json",
        "plots/roc.png",
        "report.html",
        "report.md",
    ]
    assert (reports / "report.md").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".reports.x.part", "reports"]  # emptied; write() removes it
    assert list(built.iterdir()) == []
