"""Image transforms (albumentations): the evaluation transform of val, test and explain, and the study's training
augmentations. Kept apart from the datamodule so that explaining imports no Lightning."""

from __future__ import annotations

import albumentations as A

from cxrexplain.config import AugmentParams
from cxrexplain.models.backbones import GRAY_MEAN, GRAY_STD


def eval_transform(size: int) -> A.Compose:
    """Resize to ``size`` and normalise to the grayscale ImageNet statistics (val, test, explain)."""
    return A.Compose([A.Resize(size, size), A.Normalize(mean=GRAY_MEAN, std=GRAY_STD, max_pixel_value=255.0)])


def train_transform(size: int, aug: AugmentParams) -> A.Compose:
    """The study's augmentations, then :func:`eval_transform`'s resize and normalisation."""
    steps: list[A.BasicTransform] = [A.Resize(size, size)]
    if aug.rotate_deg or aug.zoom:
        steps.append(
            A.Affine(
                rotate=(-aug.rotate_deg, aug.rotate_deg),
                scale=(1 - aug.zoom, 1 + aug.zoom),
                border_mode=0,
                fill=0,
                p=1.0,
            )
        )
    if aug.hflip:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    if aug.contrast or aug.brightness:
        steps.append(A.RandomBrightnessContrast(brightness_limit=aug.brightness, contrast_limit=aug.contrast, p=0.8))
    steps.append(A.Normalize(mean=GRAY_MEAN, std=GRAY_STD, max_pixel_value=255.0))
    return A.Compose(steps)
