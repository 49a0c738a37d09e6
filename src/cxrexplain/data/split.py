"""Assign the cohort to train / val / test, stratified by label and grouped by patient.

Grouping by patient is what keeps a patient's follow-ups from sitting on both sides of the evaluation. With
``group_by="image"`` the split reproduces the study's image-level protocol, which leaks patients; :func:`leakage`
measures how much, for an audit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from fractions import Fraction
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

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
) -> pd.Series:
    """A ``split`` label (train/val/test) for each row of ``index`` (columns ``image``, ``patient``, ``label``).

    With ``test_images`` (the official NIH test list) the test set is fixed: every image of a patient who has an image
    in the list goes to test (NIH's lists are patient-wise, so on real data that is exactly the list), and the rest is
    split into train/val in the ratio ``train : val``.
    """
    labels = index["label"].to_numpy()
    groups = index["patient"].to_numpy() if group_by == "patient" else np.arange(len(index))
    by_group = group_by == "patient"
    out = pd.Series("", index=index.index, dtype=object, name="split")
    if test_images is None:
        out[:] = _assign_folds(labels, groups, {"train": train, "val": val, "test": test}, seed, by_group)
        return out
    listed = index["image"].isin(set(test_images))
    if by_group:
        listed = index["patient"].isin(set(index.loc[listed, "patient"]))
    out[listed] = "test"
    rest = ~listed.to_numpy()
    if rest.sum() == 0:
        raise CxrError("split: every cohort image is in the official test list; nothing is left to train on")
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


def split_summary(index: pd.DataFrame, split: pd.Series) -> dict[str, dict[str, int]]:
    """Images per class and patients, per split."""
    summary: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        part = index[split == name]
        summary[name] = {
            "images": len(part),
            "pneumonia": int((part["label"] == 1).sum()),
            "no_finding": int((part["label"] == 0).sum()),
            "patients": int(part["patient"].nunique()),
        }
    return summary
