"""The report's library: which galleries it links, the paired table, DeLong on two prediction tables, publishing."""

import dataclasses
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


def test_delong_comparisons_test_every_pair_with_holms_adjustment():
    """Three architectures: the three pairs in order, each equal to its own comparison, p Holm-adjusted over the three
    (statsmodels' multipletests as the reference)."""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(5)
    labels = list(rng.integers(0, 2, 40))
    names = [f"i{k}" for k in range(40)]
    tables = {
        arch: _predictions(names, np.clip(0.3 * np.array(labels) + w * rng.random(40), 0, 1), labels)
        for arch, w in (("resnet18", 0.5), ("densenet121", 0.9), ("resnet50", 0.7))
    }
    found = report.delong_comparisons(tables)
    assert [c["archs"] for c in found] == [
        ["resnet18", "densenet121"],
        ["resnet18", "resnet50"],
        ["densenet121", "resnet50"],
    ]
    for c in found:
        alone = report.delong_comparison({a: tables[a] for a in c["archs"]})
        assert {k: v for k, v in c.items() if k != "p_holm"} == alone
    expected = multipletests([c["p"] for c in found], method="holm")[1]
    assert [c["p_holm"] for c in found] == pytest.approx(expected)
    assert report.delong_comparisons({"resnet18": tables["resnet18"]}) == []


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


def _leakage_by_hand() -> report.LeakageInputs:
    """Patient-wise test: 4 images of 4 patients, AUROC 3/4, accuracy 3/4. Image-level test: 5 images, AUROC 5/6,
    accuracy 4/5; a1 and b1 leak (their patients have images in train / val): AUROC 1 among them, 1/2 among the
    other three."""
    from cxrexplain.data.split import leakage_audit

    patient_split = pd.DataFrame(
        {
            "image": ["q1", "q2", "q3", "q4", "t1", "v1"],
            "patient": [11, 12, 13, 14, 15, 16],
            "split": ["test"] * 4 + ["train", "val"],
        }
    )
    image_split = pd.DataFrame(
        {
            "image": ["a0", "a1", "b0", "b1", "c0", "d0", "e0"],
            "patient": [1, 1, 2, 2, 3, 4, 5],
            "split": ["train", "test", "val", "test", "test", "test", "test"],
        }
    )
    patient_predictions = pd.DataFrame(
        {
            "split": "test",
            "image": ["q1", "q2", "q3", "q4"],
            "patient": [11, 12, 13, 14],
            "label": [0, 1, 0, 1],
            "probability": [0.2, 0.6, 0.7, 0.9],
        }
    )
    image_predictions = pd.DataFrame(
        {
            "split": ["val", *["test"] * 5],
            "image": ["b0", "a1", "b1", "c0", "d0", "e0"],
            "patient": [2, 1, 2, 3, 4, 5],
            "label": [0, 1, 0, 1, 0, 0],
            "probability": [0.5, 0.95, 0.05, 0.6, 0.4, 0.7],
        }
    )
    audit = {
        "arch": "resnet50",
        "protocols": {"pipeline": "patient", "audit": "image"},
        **leakage_audit({"patient": patient_split, "image": image_split}),
    }
    return report.LeakageInputs(
        "resnet50",
        {"patient": patient_predictions, "image": image_predictions},
        {"patient": patient_split, "image": image_split},
        audit,
    )


def test_leakage_comparison_by_hand():
    leakage = _leakage_by_hand()
    result = report.leakage_comparison(leakage, bootstrap=300, seed=0)
    assert (result["leaked_patients"], result["leaked_test_images"], result["leaked_test_image_share"]) == (2, 2, 0.4)
    assert result["patient"]["auroc"]["value"] == 0.75 and result["patient"]["accuracy"]["value"] == 0.75
    assert result["image"]["auroc"]["value"] == pytest.approx(5 / 6) and result["image"]["accuracy"]["value"] == 0.8
    assert (result["patient"]["images"], result["patient"]["patients"]) == (4, 4)
    assert (result["image"]["images"], result["image"]["patients"]) == (5, 5)
    assert result["difference"]["auroc"]["value"] == pytest.approx(5 / 6 - 3 / 4)
    assert result["difference"]["accuracy"]["value"] == pytest.approx(0.05)
    # the difference's interval is the two-sample patient-clustered bootstrap of the two test sets
    tests = {p: leakage.predictions[p][leakage.predictions[p]["split"] == "test"] for p in ("patient", "image")}
    expected = cls.bootstrap_difference(
        *((t["label"].to_numpy(), t["probability"].to_numpy()) for t in tests.values()),
        0.5,
        n=300,
        seed=0,
        clusters_a=tests["patient"]["patient"].astype(str).to_numpy(),
        clusters_b=tests["image"]["patient"].astype(str).to_numpy(),
    )
    assert result["difference"]["auroc"] == expected["auroc"]
    assert result["difference"]["auroc"]["low"] <= 1 / 12 <= result["difference"]["auroc"]["high"]
    leaked, other = result["image_level_test"]["leaked"], result["image_level_test"]["other"]
    assert (leaked["images"], leaked["auroc"]["value"]) == (2, 1.0)
    assert (other["images"], other["auroc"]["value"]) == (3, 0.5)
    assert report.leakage_comparison(None, bootstrap=10, seed=0) is None


def test_leakage_section_states_the_numbers_and_that_synthetic_ones_test_the_machinery(tmp_path):
    from cxrexplain.evaluation.document import Document

    result = report.leakage_comparison(_leakage_by_hand(), bootstrap=200, seed=0)
    result["image_level_test"]["other"]["auroc"] = None  # as for a group with one class only
    facts = report.RunFacts("synthetic", "patient", "none", 64, 0, "abc1234", False)
    doc = Document("t")
    assert report.leakage_section(doc, result, facts) is result
    markdown = doc.markdown(tmp_path)
    assert "## Leakage audit: patient-wise vs image-level split" in markdown
    assert "puts 2 of its 5 test images (40%) in test although their patients (2)" in markdown
    assert "| patient-wise | 4 | 4 | 0.750 (" in markdown and "| image-level | 5 | 5 | 0.833 (" in markdown
    d = result["difference"]["auroc"]
    assert f"| difference (image − patient) |  |  | +0.083 ({d['low']:+.3f} to {d['high']:+.3f}) | +0.050 (" in markdown
    assert "AUROC on the 2 images of leaked patients 1.000 (" in markdown
    assert "on the other 3 images n/a (one class only)." in markdown
    assert "these numbers test the audit's machinery" in markdown and "cannot show any inflation" not in markdown
    nih = Document("t")
    report.leakage_section(nih, result, dataclasses.replace(facts, source="nih"))
    assert "machinery" not in nih.markdown(tmp_path)
    for protocol in ("patient", "image"):  # both models perfect: the audit can show nothing here, and says so
        result[protocol]["auroc"] = {"value": 1.0, "low": 1.0, "high": 1.0}
    saturated = Document("t")
    report.leakage_section(saturated, result, facts)
    assert "at this setting the audit cannot show any inflation" in saturated.markdown(tmp_path)
    assert report.leakage_section(Document("t"), None, facts) is None


def test_consistency_matrix_reads_every_pair_both_ways():
    pair = lambda a, b, rho: {"archs": [a, b], "methods": {"gradcam": {"spearman": {"mean": rho}}}}  # noqa: E731
    consistency = {"pairs": [pair("a", "b", 0.5), pair("a", "c", -0.25)]}
    assert report.consistency_matrix(consistency, ["a", "b", "c"]) == [
        ["a", "1", "0.50", "-0.25"],
        ["b", "0.50", "1", "n/a"],
        ["c", "-0.25", "n/a", "1"],
    ]
    assert report.consistency_matrix(None, ["a"]) == [["a", "1"]]


def test_the_reproducibility_section_names_the_synthetic_mirror_only_for_that_source(tmp_path):
    """Regression (found running the pipeline on DICOM files): a DICOM run's report spoke of the synthetic mirror."""
    from cxrexplain.evaluation.document import Document

    facts = report.RunFacts("synthetic", "patient", "none", 64, 0, "abc1234", False)
    for source, expected in (
        ("synthetic", "Identical bytes on any machine: the synthetic mirror (its generator is seeded), the cohort"),
        ("dicom", "Identical bytes on any machine: from the same dicom files, the cohort and the split ("),
    ):
        doc = Document("t")
        report.reproducibility_section(doc, {}, dataclasses.replace(facts, source=source))
        markdown = doc.markdown(tmp_path)
        assert expected in markdown and ("synthetic mirror" in markdown) == (source == "synthetic")
