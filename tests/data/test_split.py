"""Patient-wise stratified splitting: no leakage, the asked fractions, determinism, the official test list."""

import numpy as np
import pandas as pd
import pytest

from cxrexplain.config import SplitParams
from cxrexplain.data.split import (
    assign_splits,
    fold_counts,
    leakage,
    leakage_audit,
    leaked_test_images,
    other_protocol,
    split_cohort,
    split_summary,
)
from cxrexplain.errors import CxrError


def cohort(n_patients: int = 400, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-6 images; a patient's images are mostly of one class, some mixed."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(1, n_patients + 1):
        base = rng.random() < 0.4
        for follow_up in range(int(rng.integers(1, 7))):
            label = int(base if rng.random() < 0.85 else not base)
            rows.append((f"{patient:08d}_{follow_up:03d}.png", patient, label))
    return pd.DataFrame(rows, columns=["image", "patient", "label"])


def test_fold_counts():
    assert fold_counts({"train": 0.7, "val": 0.15, "test": 0.15}) == (20, {"train": 14, "val": 3, "test": 3})
    assert fold_counts({"train": 0.8, "val": 0.1, "test": 0.1}) == (10, {"train": 8, "val": 1, "test": 1})
    assert fold_counts({"train": 0.5, "val": 0.5}) == (2, {"train": 1, "val": 1})
    k, counts = fold_counts({"train": 0.7 / 0.85, "val": 0.15 / 0.85})
    assert (k, counts) == (17, {"train": 14, "val": 3})


def test_patient_split_has_no_leakage_and_the_asked_fractions():
    index = cohort()
    split = assign_splits(index, train=0.7, val=0.15, test=0.15, seed=1)
    assert leakage(index, split)["any"] == 0
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.70) < 0.04
    assert abs(shares["val"] - 0.15) < 0.03
    assert abs(shares["test"] - 0.15) < 0.03
    summary = split_summary(index, split)
    prevalence = index["label"].mean()
    for name in ("train", "val", "test"):  # stratified: each split's prevalence near the cohort's
        assert abs(summary[name]["pneumonia"] / summary[name]["images"] - prevalence) < 0.08
    assert sum(s["images"] for s in summary.values()) == len(index)


def test_image_split_leaks_patients_and_says_how_many():
    index = cohort()
    split = assign_splits(index, train=0.7, val=0.15, test=0.15, group_by="image", seed=1)
    leaks = leakage(index, split)
    assert leaks["any"] > 50  # most multi-image patients straddle splits
    assert leaks["train_test"] > 0


def test_leaked_test_images_and_the_audit_by_hand():
    image_level = pd.DataFrame(
        {
            "image": ["a0", "a1", "b0", "b1", "c0", "d0", "e0", "e1"],
            "patient": [1, 1, 2, 2, 3, 4, 5, 5],
            "split": ["train", "test", "val", "test", "test", "train", "test", "test"],
        }
    )
    # a1 (patient 1 also in train) and b1 (patient 2 also in val) leak; c0 and e0/e1 (all of 5 in test) do not
    assert leaked_test_images(image_level).tolist() == [False, True, False, True, False, False, False, False]
    patient_wise = image_level.assign(split=["train", "train", "val", "val", "test", "train", "test", "test"])
    assert not leaked_test_images(patient_wise).any()
    assert leakage_audit({"image": image_level, "patient": patient_wise}) == {
        "leaked_patients": 2,
        "leaked_test_images": 2,
        "leaked_test_image_share": 0.4,  # 2 of 5 test images
        "test": {"image": {"images": 5, "patients": 4}, "patient": {"images": 3, "patients": 2}},
    }
    with pytest.raises(ValueError, match="one split table per protocol"):
        leakage_audit({"image": image_level})
    assert other_protocol("patient") == "image" and other_protocol("image") == "patient"
    with pytest.raises(CxrError, match="not one of"):
        other_protocol("study")


def test_the_audit_of_two_real_splits_of_one_cohort():
    index = cohort()
    tables = {
        protocol: index.assign(split=assign_splits(index, train=0.7, val=0.15, test=0.15, group_by=protocol, seed=1))
        for protocol in ("patient", "image")
    }
    audit = leakage_audit(tables)
    test = tables["image"][tables["image"]["split"] == "test"]
    straddling = leakage(index, tables["image"]["split"])  # patients in test and in train or val
    assert audit["leaked_patients"] == len(
        set(test["patient"]) & set(tables["image"].loc[tables["image"]["split"] != "test", "patient"])
    )
    assert 0 < audit["leaked_patients"] <= straddling["train_test"] + straddling["val_test"]
    assert audit["leaked_test_images"] >= audit["leaked_patients"]
    assert audit["test"]["image"]["images"] == len(test)


def test_deterministic_for_a_seed():
    index = cohort()
    a = assign_splits(index, train=0.7, val=0.15, test=0.15, seed=7)
    b = assign_splits(index, train=0.7, val=0.15, test=0.15, seed=7)
    c = assign_splits(index, train=0.7, val=0.15, test=0.15, seed=8)
    assert a.equals(b)
    assert not a.equals(c)


def test_official_test_list_is_the_test_set_and_pulls_in_whole_patients():
    index = cohort()
    listed = set(index.loc[index["patient"] <= 60, "image"])
    listed.discard("00000001_000.png")  # patient 1 still has another listed image? then all of them go to test
    split = assign_splits(index, train=0.7, val=0.15, test=0.15, seed=0, test_images=listed)
    assert set(index.loc[split == "test", "patient"]) == set(index.loc[index["image"].isin(listed), "patient"])
    assert leakage(index, split)["any"] == 0
    rest = split[split != "test"].value_counts(normalize=True)
    assert abs(rest["train"] - 0.7 / 0.85) < 0.05


def test_too_few_patients_for_the_folds_is_a_clear_error():
    index = cohort(n_patients=10)
    with pytest.raises(CxrError, match=r"10 patients cannot be cut into 20 folds"):
        assign_splits(index, train=0.7, val=0.15, test=0.15)


def test_a_class_too_small_for_the_stratified_folds_is_a_clear_error_not_scikit_learns():
    """Enough patients but 16 Pneumonia images for 20 folds: scikit-learn raised a ValueError (a traceback in the
    split stage, found running the papers profile at toy scale); now a CxrError naming the counts and the fix."""
    rows = [(f"{k:08d}_000.png", str(k), int(k < 16)) for k in range(40)]
    index = pd.DataFrame(rows, columns=["image", "patient", "label"])
    for group_by in ("patient", "image"):
        with pytest.raises(CxrError, match=r"Pneumonia: 16 images\) cannot be stratified into 20 folds"):
            assign_splits(index, train=0.7, val=0.15, test=0.15, group_by=group_by)


def test_an_official_test_list_that_matches_nothing_is_an_error_naming_it():
    index = cohort()
    with pytest.raises(CxrError, match=r"raw/test_list\.txt: none of its 2 image names, e\.g\. 99999999_000\.png"):
        assign_splits(
            index,
            train=0.7,
            val=0.15,
            test=0.15,
            test_images=["99999999_000.png", "99999998_000.png"],
            test_source="raw/test_list.txt",
        )
    with pytest.raises(CxrError, match=r"none of its 0 image names is one of the"):
        assign_splits(index, train=0.7, val=0.15, test=0.15, test_images=[])


def test_split_cohort_reads_the_official_list_and_measures_the_split(tmp_path):
    index = cohort()
    listed = sorted(index.loc[index["patient"] <= 60, "image"])
    (tmp_path / "test_list.txt").write_text("".join(f"{name}\n" for name in listed))
    p = SplitParams(official_test=True)
    result = split_cohort(index, p, seed=0, test_list=tmp_path / "test_list.txt")
    assert set(result.table.loc[result.table["split"] == "test", "image"]) == set(listed)
    assert list(result.table.columns) == ["image", "patient", "label", "split"]
    assert result.metrics["official_test"] is True and result.metrics["patients_in_two_splits"]["any"] == 0
    assert result.metrics["splits"]["test"]["images"] == len(listed)
    (tmp_path / "test_list.txt").write_text("00000000_000.png\n")
    with pytest.raises(CxrError, match=r"test_list\.txt: none of its 1 image names"):
        split_cohort(index, p, seed=0, test_list=tmp_path / "test_list.txt")
