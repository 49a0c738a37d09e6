"""Explain one image a user points at (``cxrexplain explain-image``): decode, resize, normalise, explain, draw.

A PNG (or any format Pillow reads) is decoded as the sample stage decodes NIH's PNGs
(:func:`cxrexplain.data.sample.to_gray8`); a DICOM file (the ``DICM`` marker, or a ``.dcm``/``.dicom``/``.dic`` name)
through the DICOM grayscale pipeline (:mod:`cxrexplain.data.dicom`: modality LUT, VOI LUT or window, MONOCHROME1
inverted), checked before the checkpoint is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrexplain import names
from cxrexplain.config import MAX_INPUT_SIDE, MIN_INPUT_SIDE
from cxrexplain.data import dicom
from cxrexplain.data.sample import square_gray8, to_gray8
from cxrexplain.data.transforms import eval_transform
from cxrexplain.errors import CxrError
from cxrexplain.explain import attributions, cam, gallery
from cxrexplain.models.checkpoint import load_classifier

CLASS_NAMES = {0: "No Finding", 1: "Pneumonia"}


@dataclass(frozen=True)
class SingleExplanation:
    probability: float  # P(Pneumonia)
    explained_class: int
    heatmap: np.ndarray  # (S, S) in [0, 1]
    image: np.ndarray  # (S, S) uint8, the network's input before normalisation
    path: Path  # the overlay written


def explain_file(
    image_path: Path,
    checkpoint: Path,
    method: str = "gradcam",
    out: Path | None = None,
    *,
    explain_class: str = "predicted",
    size: int | None = None,
    device: str = "cpu",
) -> SingleExplanation:
    """Explain ``image_path`` with ``method`` (a CAM or a captum baseline) and write the overlay PNG.

    ``explain_class``: ``predicted``, ``pneumonia`` or ``no-finding``. ``size``: the network input side (default: the
    checkpoint's training size). ``out`` defaults to ``<image stem>.<method>.png`` in the current directory.
    """
    image_path, checkpoint = Path(image_path), Path(checkpoint)
    if method not in cam.CAM_METHODS and method not in attributions.ATTRIBUTION_METHODS:
        known = [*cam.CAM_METHODS, *attributions.ATTRIBUTION_METHODS]
        raise CxrError(f"--method {method!r}: unknown (available: {', '.join(known)})")
    if explain_class not in ("predicted", "pneumonia", "no-finding"):
        raise CxrError(f"--class {explain_class!r}: expected predicted, pneumonia or no-finding")
    if size is not None and not MIN_INPUT_SIDE <= size <= MAX_INPUT_SIDE:
        raise CxrError(f"--size {size}: must be between {MIN_INPUT_SIDE} and {MAX_INPUT_SIDE} pixels")
    if not checkpoint.is_file():
        raise CxrError(f"{checkpoint}: checkpoint not found")
    try:
        data = image_path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{image_path}: image not found") from None
    radiograph = None  # a DICOM file's 8-bit gray at its own size: decoded (and refused) before the model loads
    if dicom.is_dicom(data) or image_path.suffix.lower() in dicom.DICOM_SUFFIXES:
        if len(data) > dicom.MAX_DICOM_BYTES:
            raise CxrError(
                f"{image_path}: {len(data):,} bytes, more than the {dicom.MAX_DICOM_BYTES:,} a radiograph needs"
            )
        radiograph = dicom.dicom_gray8(dicom.read_dataset(data, image_path), image_path)
    model, hparams = load_classifier(checkpoint, device)
    if reason := names.not_applicable(hparams["arch"], (method,)).get(method):
        raise CxrError(f"--method {method}: does not apply to {checkpoint}'s model: {reason}")
    side = size or hparams.get("image_size")
    if not side:
        raise CxrError(f"{checkpoint}: records no training image size; pass --size")
    if not isinstance(side, int) or not MIN_INPUT_SIDE <= side <= MAX_INPUT_SIDE:
        raise CxrError(
            f"{checkpoint}: records image size {side!r}, outside {MIN_INPUT_SIDE}..{MAX_INPUT_SIDE} pixels; pass --size"
        )
    try:
        gray = square_gray8(radiograph, int(side)) if radiograph is not None else to_gray8(data, int(side))[0]
    except Exception as error:
        raise CxrError(f"{image_path}: not a readable image ({type(error).__name__}: {error})") from None
    x = torch.from_numpy(eval_transform(int(side))(image=gray)["image"])[None, None].to(device)
    with torch.no_grad():
        logit = model(x)
    if explain_class == "predicted":
        classes = (logit > 0).long()
    else:
        classes = torch.tensor([1 if explain_class == "pneumonia" else 0], device=device)
    if method in cam.CAM_METHODS:
        heatmap = cam.compute_cams(model, x, (method,), classes=classes).maps[method][0]
    else:
        heatmap = attributions.compute_attributions(model, x, classes, (method,))[method][0]
    probability = float(torch.sigmoid(logit)[0])
    target = out or Path(f"{image_path.stem}.{method}.png")
    explained = CLASS_NAMES[int(classes[0])]
    title = f"{method} · explaining {explained}\nP(Pneumonia) = {probability:.3f} · {hparams['arch']}"
    path = gallery.single_overlay(gray, heatmap.cpu().numpy(), target, title=title)
    return SingleExplanation(probability, int(classes[0]), heatmap.cpu().numpy(), gray, path)
