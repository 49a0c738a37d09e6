"""Assign the cohort to train / val / test, stratified by label and grouped by patient.

Grouping by patient is what keeps a patient's follow-ups from sitting on both sides of the evaluation. With
``group_by="image"`` the split reproduces the study's image-level protocol, which leaks patients; :func:`leakage`
measures how much, and :func:`leakage_audit` what the image-level split of a cohort leaks into its test set (the
``leakage`` stage). :func:`split_cohort` is the whole stage's work: the split table and its metrics.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from cxrexplain.config import SplitParams
from cxrexplain.data import metadata
from cxrexplain.errors import CxrError

SPLITS = ("train", "val", "test")


def fold_counts(fractions: Mapping[str, float], max_folds: int = 100) -> tuple[int, dict[str, int]]:
    """The fewest folds ``k`` (≤ ``max_folds``) whose whole numbers of folds give ``fractions`` within 0.005 each.

    0.70/0.15/0.15 → 20 folds: 14/3/3. Falls back to ``max_folds`` with largest-remainder rounding.
    """
    names = list(fractions)
    for k in range(2, max_folds + 1):
        counts = [round(fractions[n] * k) for n in names]
        close = all(abs(c / k - fractions[n]) < 0.005 for c, n in zip(counts, names, strict=True))
        if close and sum(counts) == k and all(c > 0 for c in counts):
            return k, dict(zip(names, counts, strict=True))
    quotas = [Fraction(fractions[n]).limit_denominator(10_000) * max_folds for n in names]
    counts = [max(1, int(q)) for q in quotas]
    for i in sorted(range(len(names)), key=lambda i: quotas[i] - int(quotas[i]), reverse=True):
        if sum(counts) >= max_folds:
            break
        counts[i] += 1
    return max_folds, dict(zip(names, counts, strict=True))


def _assign_folds(
    labels: np.ndarray, groups: np.ndarray, fractions: Mapping[str, float], seed: int, by_group: bool
) -> np.ndarray:
    k, per_split = fold_counts(fractions)
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise CxrError(
            f"split: {n_groups} {'patients' if by_group else 'images'} cannot be cut into {k} folds for the fractions "
            f"{dict(fractions)}; sample more images (sample.per_class) or use rounder fractions"
        )
    classes, members = np.unique(labels, return_counts=True)
    if members.min() < k:  # scikit-learn's stratified folds need k images of every class (else a ValueError)
        counts = ", ".join(
            f"{'Pneumonia' if c == 1 else 'negative'}: {m}" for c, m in zip(classes, members, strict=True)
        )
        raise CxrError(
            f"split: the cohort's classes ({counts} images) cannot be stratified into {k} folds for the fractions "
            f"{dict(fractions)}: at least {k} images of each class are needed; sample more images (sample.per_class) "
            "or use rounder fractions"
        )
    splitter = (
        StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        if by_group
        else StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    )
    fold = np.empty(len(labels), dtype=np.int64)
    folds = splitter.split(np.zeros(len(labels)), labels, groups if by_group else None)
    for i, (_, test_idx) in enumerate(folds):
        fold[test_idx] = i
    bounds = np.cumsum([per_split[n] for n in fractions])
    names = np.array(list(fractions), dtype=object)
    return names[np.searchsorted(bounds, fold, side="right")]


def assign_splits(
    index: pd.DataFrame,
    *,
    train: float,
    val: float,
    test: float,
    group_by: Literal["patient", "image"] = "patient",
    seed: int = 0,
    test_images: Collection[str] | None = None,
    test_source: str = "the official test list",
) -> pd.Series:
    """A ``split`` label (train/val/test) for each row of ``index`` (columns ``image``, ``patient``, ``label``).

    With ``test_images`` (the official NIH test list) the test set is fixed: every image of a patient who has an image
    in the list goes to test (NIH's lists are patient-wise, so on real data that is exactly the list), and the rest is
    split into train/val in the ratio ``train : val``. A list that holds no image of the cohort (another release's
    list, or the wrong file) is an error naming ``test_source``, not an empty test set.
    """
    labels = index["label"].to_numpy()
    groups = index["patient"].to_numpy() if group_by == "patient" else np.arange(len(index))
    by_group = group_by == "patient"
    out = pd.Series("", index=index.index, dtype=object, name="split")
    if test_images is None:
        out[:] = _assign_folds(labels, groups, {"train": train, "val": val, "test": test}, seed, by_group)
        return out
    listed = index["image"].isin(set(test_images))
    if not listed.any():
        example = f", e.g. {next(iter(test_images))}" if len(test_images) else ""
        raise CxrError(
            f"{test_source}: none of its {len(test_images):,} image names{example} is one of the {len(index):,} cohort "
            "images, so the test set would be empty; give the test list of the same release as the metadata, or "
            "set split.official_test: false"
        )
    if by_group:
        listed = index["patient"].isin(set(index.loc[listed, "patient"]))
    out[listed] = "test"
    rest = ~listed.to_numpy()
    if rest.sum() == 0:
        raise CxrError(f"{test_source}: every cohort image is in the official test list; nothing is left to train on")
    ratio = {"train": train / (train + val), "val": val / (train + val)}
    out[rest] = _assign_folds(labels[rest], groups[rest], ratio, seed, by_group)
    return out


def leakage(index: pd.DataFrame, split: pd.Series) -> dict[str, int]:
    """Patients that appear in more than one split, overall and per pair of splits."""
    patients = {name: set(index.loc[split == name, "patient"]) for name in SPLITS}
    out = {f"{a}_{b}": len(patients[a] & patients[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :]}
    out["any"] = len(
        (patients["train"] & patients["val"])
        | (patients["train"] & patients["test"])
        | (patients["val"] & patients["test"])
    )
    return out


PROTOCOLS = ("patient", "image")


def other_protocol(group_by: str) -> str:
    """The split protocol the leakage audit compares ``group_by`` with: ``patient`` ↔ ``image``."""
    if group_by not in PROTOCOLS:
        raise CxrError(f"split.group_by: {group_by!r} is not one of {PROTOCOLS}")
    return PROTOCOLS[1 - PROTOCOLS.index(group_by)]


def leaked_test_images(table: pd.DataFrame) -> pd.Series:
    """Per row of a split table (``patient``, ``split``): a test image whose patient also has an image in train or
    val, i.e. one the model may have seen the patient of (none in a patient-wise split)."""
    seen = set(table.loc[table["split"] != "test", "patient"])
    return (table["split"] == "test") & table["patient"].isin(seen)


def leakage_audit(tables: Mapping[str, pd.DataFrame]) -> dict:
    """What the image-level split of the same cohort leaks, and each protocol's test set.

    ``tables``: protocol (``patient``, ``image``) → split table (``image``, ``patient``, ``split``). Returns the
    image-level split's ``leaked_patients`` (test patients with an image in train or val), ``leaked_test_images``
    (their test images) and ``leaked_test_image_share`` (of the test images), and per protocol ``test`` images and
    patients.
    """
    if set(tables) != set(PROTOCOLS):
        raise ValueError(f"leakage_audit needs one split table per protocol {PROTOCOLS}, got {sorted(tables)}")
    image = tables["image"]
    leaked = leaked_test_images(image)
    test_images = int((image["split"] == "test").sum())
    return {
        "leaked_patients": int(image.loc[leaked, "patient"].nunique()),
        "leaked_test_images": int(leaked.sum()),
        "leaked_test_image_share": round(int(leaked.sum()) / max(test_images, 1), 4),
        "test": {
            protocol: {
                "images": int((t["split"] == "test").sum()),
                "patients": int(t.loc[t["split"] == "test", "patient"].nunique()),
            }
            for protocol, t in tables.items()
        },
    }


def split_summary(index: pd.DataFrame, split: pd.Series) -> dict[str, dict[str, int]]:
    """Images per class and patients, per split."""
    summary: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        part = index[split == name]
        summary[name] = {
            "images": len(part),
            "pneumonia": int((part["label"] == 1).sum()),
            "negative": int((part["label"] == 0).sum()),
            "patients": int(part["patient"].nunique()),
        }
    return summary


@dataclass(frozen=True)
class SplitResult:
    table: pd.DataFrame  # image, patient, label, split: one row per cached image
    metrics: dict  # metrics/split.json


def split_cohort(index: pd.DataFrame, p: SplitParams, *, seed: int, test_list: Path | None = None) -> SplitResult:
    """Assign every image of the cache's ``index`` to a split (:func:`assign_splits`) and measure the result.

    ``test_list`` (``test_list.txt``) is read when ``p.official_test``. With ``group_by: patient`` a patient found in
    two splits is an error; with ``group_by: image`` the metrics record how many patients leak (the study's protocol).
    """
    test_images = None
    if p.official_test:
        if test_list is None:
            raise CxrError("split.official_test: true needs the official test list (test_list.txt)")
        test_images = metadata.read_image_list(test_list)
    split = assign_splits(
        index,
        train=p.train,
        val=p.val,
        test=p.test,
        group_by=p.group_by,
        seed=seed,
        test_images=test_images,
        test_source=str(test_list),
    )
    leaks = leakage(index, split)
    if p.group_by == "patient" and leaks["any"]:
        raise CxrError(f"split: {leaks['any']} patient(s) landed in two splits despite group_by: patient ({leaks})")
    summary = split_summary(index, split)
    metrics = {
        "group_by": p.group_by,
        "official_test": p.official_test,
        "splits": summary,
        "patients_in_two_splits": leaks,
        "fractions": {name: round(summary[name]["images"] / max(len(index), 1), 4) for name in summary},
    }
    table = index.assign(split=split.to_numpy())[["image", "patient", "label", "split"]]
    return SplitResult(table, metrics)


def read_split(split_file: Path, index: pd.DataFrame) -> pd.DataFrame:
    """The split table joined to the cache index by image name (so rows always point into the cached array)."""
    try:
        split = pd.read_csv(split_file, usecols=["image", "split"])
    except FileNotFoundError:
        raise CxrError(f"{split_file}: not found; run the split stage first (dvc repro split)") from None
    joined = index.merge(split, on="image", how="inner", validate="one_to_one")
    if len(joined) != len(split):
        raise CxrError(
            f"{split_file}: {len(split) - len(joined)} image(s) are not in the cache; re-run dvc repro split"
        )
    return joined
