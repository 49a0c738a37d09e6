"""A tiny cache + split on disk (bright square = Pneumonia), for tests that train for seconds, not minutes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def write_tiny_dataset(
    root: Path, n: int = 48, size: int = 32, seed: int = 0, val_against_train: bool = False
) -> tuple[Path, Path]:
    """``root/cache`` (images.npy, index.csv) and ``root/split.csv``: ``n`` images, half with a bright box.

    ``val_against_train``: the validation images' labels are the opposite of the box rule, so every epoch that learns
    the training images makes the val loss worse: the best epoch is the first, whatever the backbone or the CPU's
    rounding (the resume and early-stopping tests need epochs that do not improve)."""
    rng = np.random.default_rng(seed)
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    images = rng.integers(40, 90, size=(n, size, size), dtype=np.uint8)
    rows = []
    for i in range(n):
        label = i % 2
        boxes = []
        if label:
            x, y = (int(v) for v in rng.integers(2, size - 12, size=2))
            images[i, y : y + 10, x : x + 10] = 230
            boxes = [[float(x), float(y), 10.0, 10.0]]
        rows.append(
            {
                "row": i,
                "image": f"{i + 1:08d}_000.png",
                "patient": i + 1,
                "label": label,
                "labels": "Pneumonia" if label else "No Finding",
                "view": "PA",
                "follow_up": 0,
                "age": 50,
                "sex": "F",
                "archive": "images_001.tar.gz",
                "width": size,
                "height": size,
                "boxes": json.dumps(boxes),
            }
        )
    np.save(cache / "images.npy", images)
    index = pd.DataFrame(rows)
    split = np.array(["train"] * n, dtype=object)
    split[n // 2 : n // 2 + n // 4] = "val"
    split[n // 2 + n // 4 :] = "test"
    if val_against_train:
        val = split == "val"
        index.loc[val, "label"] = 1 - index.loc[val, "label"]
        index.loc[val, "labels"] = np.where(index.loc[val, "label"] == 1, "Pneumonia", "No Finding")
        index.loc[val, "boxes"] = "[]"
    index.to_csv(cache / "index.csv", index=False)
    split_file = root / "split.csv"
    index.assign(split=split)[["image", "patient", "label", "split"]].to_csv(split_file, index=False)
    return cache, split_file
