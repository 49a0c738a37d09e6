"""Drawing explanations: jet overlays on the grayscale image, boxes outlined, captions; grids saved as PNG.

Everything here takes numpy arrays (images in 0..1 or 0..255, maps in 0..1) and writes files atomically; nothing here
computes an explanation. :func:`explanation_galleries` draws the explain stage's two figures from what
:func:`~cxrexplain.explain.evaluate.explain_images` returned. Matplotlib runs on the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from cxrexplain.evaluation.figures import save_figure
from cxrexplain.explain.evaluate import outcomes

if TYPE_CHECKING:
    from cxrexplain.config import GalleryParams
    from cxrexplain.explain.evaluate import Explained
    from cxrexplain.workspace import ExplainFiles

OUTCOMES = ("TP", "FP", "FN", "TN")
OUTCOME_TITLES = {
    "TP": "true positives (Pneumonia, predicted Pneumonia)",
    "FP": "false positives (No Finding, predicted Pneumonia)",
    "FN": "false negatives (Pneumonia, predicted No Finding)",
    "TN": "true negatives (No Finding, predicted No Finding)",
}
Box = Sequence[float]  # x, y, w, h in pixels of the image drawn


def to_unit(image: np.ndarray) -> np.ndarray:
    """A grayscale image as float32 in 0..1 (uint8 is divided by 255; floats are min-max scaled)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB float image: the grayscale ``image`` blended with ``heatmap`` (0..1) in the jet colour map.

    ``(1 - alpha) * gray + alpha * jet(map)``, as in the study's figures.
    """
    gray = to_unit(image)
    if gray.shape != heatmap.shape:
        raise ValueError(f"image {gray.shape} and map {heatmap.shape} differ in shape")
    jet = matplotlib.colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3]
    return np.clip((1.0 - alpha) * np.repeat(gray[..., None], 3, axis=2) + alpha * jet, 0.0, 1.0)


def _draw(ax: plt.Axes, image: np.ndarray, heatmap: np.ndarray | None, boxes: Sequence[Box], caption: str) -> None:
    shown = overlay(image, heatmap) if heatmap is not None else to_unit(image)
    ax.imshow(shown, cmap=None if heatmap is not None else "gray", vmin=0, vmax=1, interpolation="nearest")
    for x, y, w, h in boxes:
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="white", linewidth=1.2))
    ax.set_title(caption, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def caption(label: int, probability: float, image: str | None = None) -> str:
    """``"<image>\\nlabel Pneumonia · p=0.91"``: what each gallery tile says."""
    name = "Pneumonia" if label == 1 else "No Finding"
    head = f"{image}\n" if image else ""
    return f"{head}label {name} · p={probability:.2f}"


def outcome_gallery(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Box]],
    captions: Sequence[str],
    outcomes: Sequence[str],
    path: Path,
    *,
    per_outcome: int = 8,
    title: str = "",
) -> Path:
    """One row per outcome (TP, FP, FN, TN), up to ``per_outcome`` tiles each, in the order given.

    A row with no images of that outcome says so instead of staying blank.
    """
    fig, axes = plt.subplots(
        len(OUTCOMES), per_outcome, figsize=(1.9 * per_outcome, 2.2 * len(OUTCOMES)), squeeze=False
    )
    for r, outcome in enumerate(OUTCOMES):
        chosen = [i for i, o in enumerate(outcomes) if o == outcome][:per_outcome]
        for c in range(per_outcome):
            ax = axes[r, c]
            if c < len(chosen):
                i = chosen[c]
                _draw(ax, images[i], maps[i], boxes[i], captions[i])
            else:
                ax.axis("off")
        if not chosen:
            axes[r, 0].text(0.0, 0.5, f"no {OUTCOME_TITLES[outcome]}", fontsize=8, transform=axes[r, 0].transAxes)
        axes[r, 0].text(
            -0.08, 0.5, outcome, fontsize=10, rotation=90, va="center", ha="right", transform=axes[r, 0].transAxes
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def method_grid(
    images: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    boxes: Sequence[Sequence[Box]],
    captions: Sequence[str],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """Images (rows) × methods (columns): the image with its boxes first, then each method's overlay."""
    methods = list(maps)
    cols = 1 + len(methods)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 2.1 * len(images)), squeeze=False)
    for r, image in enumerate(images):
        _draw(axes[r, 0], image, None, boxes[r], captions[r])
        for c, method in enumerate(methods, start=1):
            _draw(axes[r, c], image, maps[method][r], boxes[r], method if r == 0 else "")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def single_overlay(image: np.ndarray, heatmap: np.ndarray, path: Path, *, title: str = "") -> Path:
    """One image and its overlay side by side (``cxrexplain explain-image``)."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.8), squeeze=False)
    _draw(axes[0, 0], image, None, [], "input")
    _draw(axes[0, 1], image, heatmap, [], title)
    return save_figure(fig, path)


SYNTHETIC_NOTE = " · SYNTHETIC data, not medical evidence"


def explanation_galleries(
    files: ExplainFiles,
    shown: np.ndarray,
    boxes: Sequence[Sequence[Box]],
    labels: np.ndarray,
    result: Explained,
    threshold: float,
    *,
    title: str,
    config: GalleryParams,
    synthetic: bool,
) -> list[Path]:
    """The explain stage's figures: the decision maps of Grad-CAM (else the first CAM) per outcome at ``threshold``
    (``gallery_<method>.png``) and every method's Pneumonia map on the first images with boxes (``methods.png``).

    ``shown`` (N, H, W) are the network's inputs in 0..1, ``boxes`` in their pixels, ``labels`` the true classes;
    ``title`` (the architecture) heads each figure, marked as synthetic data when ``synthetic``.
    """
    note = SYNTHETIC_NOTE if synthetic else ""
    outcome = outcomes(labels, result.predicted)
    captions = [
        caption(int(lab), float(p)) + f"\nmap of {'Pneumonia' if c == 1 else 'No Finding'}"
        for lab, p, c in zip(labels, result.probability, result.predicted, strict=True)
    ]
    figures = []
    for method in [m for m in ("gradcam",) if m in result.decision_maps] or list(result.decision_maps)[:1]:
        maps = result.decision_maps[method].astype(np.float32)
        figures.append(
            outcome_gallery(
                shown,
                list(maps),
                boxes,
                captions,
                list(outcome),
                files.gallery(method),
                per_outcome=config.per_outcome,
                title=f"{title} · {method} · decision maps at threshold {threshold:.2f}{note}",
            )
        )
    rows = list(range(min(config.compare_images, len(result.boxed))))
    if rows:
        chosen = [int(result.boxed[r]) for r in rows]
        figures.append(
            method_grid(
                [shown[i] for i in chosen],
                {m: [maps[r].astype(np.float32) for r in rows] for m, maps in result.pneumonia_maps.items()},
                [boxes[i] for i in chosen],
                [caption(int(labels[i]), float(result.probability[i])) for i in chosen],
                files.methods_figure,
                title=f"{title} · every method's map of Pneumonia on images with boxes{note}",
            )
        )
    return figures
