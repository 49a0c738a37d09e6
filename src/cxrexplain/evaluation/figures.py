"""The report's figures (matplotlib, Agg backend): confusion matrices, ROC and PR curves, calibration, training curves.

Every function takes plain arrays, writes one PNG atomically and returns its path; a synthetic run's ``note`` is
printed on the figure itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxrexplain.io import atomic_file

CLASSES = ("No Finding", "Pneumonia")


def add_note(fig: plt.Figure, note: str) -> matplotlib.text.Text:
    """``note`` centred below everything already drawn (tick and axis labels included), so it overlaps nothing."""
    fig.canvas.draw()  # lay the labels out first: their extents are only known after a draw
    bottom = fig.get_tightbbox(fig.canvas.get_renderer()).y0 / fig.get_figheight()  # inches → figure fraction
    return fig.text(0.5, bottom - 0.01, note, ha="center", va="top", fontsize=7, color="#a00")


def save_figure(fig: plt.Figure, path: Path, note: str = "") -> Path:
    """Write ``fig`` as a PNG atomically (``note`` printed at the bottom, e.g. the synthetic-data notice), close it."""
    if note:
        add_note(fig, note)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_figure(
    matrices: Mapping[str, np.ndarray],
    path: Path,
    *,
    threshold_note: str = "",
    note: str = "",
    classes: tuple[str, str] = CLASSES,
) -> Path:
    """One row per architecture: counts, and normalised by the true class (rows sum to 1); ``classes``: the negative
    and the positive class's names (the negative is "without Pneumonia" in a one-vs-rest cohort)."""
    fig, axes = plt.subplots(len(matrices), 2, figsize=(7, 3.2 * len(matrices)), squeeze=False)
    for r, (arch, cm) in enumerate(matrices.items()):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        for c, (values, fmt, what) in enumerate(((cm, "d", "counts"), (norm, ".2f", "normalised by true class"))):
            ax = axes[r, c]
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            for i in range(2):
                for j in range(2):
                    colour = "white" if norm[i, j] > 0.5 else "black"  # readable on dark and light cells
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=11, color=colour)
            ax.set_xticks([0, 1], classes, fontsize=8)
            ax.set_yticks([0, 1], classes, fontsize=8)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{arch}: {what}{threshold_note}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, note)


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: Path, *, note: str = "") -> Path:
    """ROC curves of every architecture on one plot; AUC in the legend."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for arch, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{arch} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8, label="chance")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title("ROC, test set")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path, note)


def pr_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], prevalence: float, path: Path, *, note: str = ""
) -> Path:
    """Precision-recall curves; AUPRC in the legend; the prevalence (a random classifier) dashed."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for arch, (recall, precision, ap) in curves.items():
        ax.plot(recall, precision, label=f"{arch} (AUPRC {ap:.3f})")
    ax.axhline(prevalence, linestyle="--", color="grey", linewidth=0.8, label=f"prevalence {prevalence:.2f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall, test set")
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path, note)


def calibration_figure(bins: Mapping[str, list[tuple[float, float, int]]], path: Path, *, note: str = "") -> Path:
    """Reliability diagram: observed Pneumonia rate against mean predicted probability per bin."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for arch, points in bins.items():
        if points:
            mean, rate, _ = zip(*points, strict=True)
            ax.plot(mean, rate, "o-", label=arch, markersize=4)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8, label="perfect calibration")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed Pneumonia rate")
    ax.set_title("Calibration, test set (10 bins)")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path, note)


def training_figure(histories: Mapping[str, pd.DataFrame], path: Path, *, note: str = "") -> Path:
    """Loss and AUROC per epoch, train and val, one column per architecture."""
    fig, axes = plt.subplots(2, len(histories), figsize=(4.5 * len(histories), 6), squeeze=False)
    for c, (arch, h) in enumerate(histories.items()):
        for r, metric in enumerate(("loss", "auroc")):
            ax = axes[r, c]
            for split in ("train", "val"):
                column = f"{split}/{metric}"
                if column in h:
                    ax.plot(h["epoch"], h[column], "o-", markersize=3, label=split)
            ax.set_title(f"{arch}: {metric}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, note)


def sanity_figure(curve: pd.DataFrame, path: Path, *, threshold: float = 0.5, note: str = "") -> Path:
    """Model-randomisation curves (Adebayo et al. 2018): mean |Spearman ρ| with the trained model's maps per step.

    One panel per mode (top-down cascade, bottom-up cascade, independent blocks), one line per method; the x axis
    names the block randomised at that step (cascades: it and every block before it). The dashed line is the pass
    threshold, which a method must be under once the head and the last block are randomised (top-down step 2).
    """
    modes = [m for m in ("top_down", "bottom_up", "independent") if m in set(curve["mode"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 3.8), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        part = curve[curve["mode"] == mode]
        steps = part.groupby("step", sort=True)["block"].first()
        for method, frame in part.groupby("method", sort=False):
            mean = frame.assign(r=frame["spearman_abs"].abs()).groupby("step", sort=True)["r"].mean()
            ax.plot(mean.index, mean.to_numpy(), "o-", markersize=3, label=method)
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(list(steps.index), list(steps.to_numpy()), rotation=45, ha="right", fontsize=7)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("mean |Spearman ρ| with trained maps")
        ax.set_title(mode.replace("_", "-"), fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, note)
