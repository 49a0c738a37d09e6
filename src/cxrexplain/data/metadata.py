"""Read and write the NIH metadata files exactly as NIH ships them.

Readers check the header line byte for byte and return tidy frames with short column names; writers produce the
NIH text (the same header, ``|``-joined labels, three empty trailing columns in the box list).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrexplain.data import layout
from cxrexplain.errors import CxrError

ENTRY_COLUMNS = (
    "image",
    "labels",
    "follow_up",
    "patient",
    "age",
    "sex",
    "view",
    "orig_width",
    "orig_height",
    "spacing_x",
    "spacing_y",
)
BOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")


def _check_header(path: Path, expected: str) -> None:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = f.readline().rstrip("\r\n")
    except FileNotFoundError:
        raise CxrError(f"{path}: file not found (run the download stage first: dvc repro download)") from None
    if header != expected:
        raise CxrError(f"{path}: unexpected header {header!r}; the NIH file starts with {expected!r}")


def read_data_entry(path: Path) -> pd.DataFrame:
    """``Data_Entry_2017_v2020.csv`` as a frame with :data:`ENTRY_COLUMNS` (one row per image)."""
    path = Path(path)
    _check_header(path, layout.DATA_ENTRY_HEADER)
    frame = pd.read_csv(path, dtype={"Image Index": str, "Finding Labels": str, "View Position": str})
    if tuple(frame.columns) != layout.DATA_ENTRY_COLUMNS:
        raise CxrError(f"{path}: expected {len(layout.DATA_ENTRY_COLUMNS)} columns, found {len(frame.columns)}")
    frame.columns = list(ENTRY_COLUMNS)
    if frame["image"].duplicated().any():
        dup = frame.loc[frame["image"].duplicated(), "image"].iloc[0]
        raise CxrError(f"{path}: image {dup} is listed twice")
    missing = frame[["image", "labels", "patient"]].isna().any(axis=1)
    if missing.any():
        row = int(missing.idxmax()) + 2  # 1-based, after the header
        raise CxrError(f"{path}: line {row} lacks an image name, labels or patient id")
    return frame


def read_bbox_list(path: Path) -> pd.DataFrame:
    """``BBox_List_2017.csv`` as a frame with :data:`BOX_COLUMNS` (one row per box, original-image pixels).

    Every row needs an image name, a finding and four finite numbers; anything else is a :class:`CxrError` naming
    the file, the line (1 is the header) and the column.
    """
    path = Path(path)
    _check_header(path, layout.BBOX_HEADER)
    frame = pd.read_csv(path, usecols=range(len(BOX_COLUMNS)), dtype=str, keep_default_na=False)
    frame.columns = list(BOX_COLUMNS)
    for short, column in zip(BOX_COLUMNS[:2], layout.BBOX_COLUMNS[:2], strict=True):
        empty = frame[short].str.strip() == ""
        if empty.any():
            raise CxrError(f"{path}: line {int(empty.to_numpy().argmax()) + 2}, column {column!r}: empty")
    for short, column in zip(BOX_COLUMNS[2:], layout.BBOX_COLUMNS[2:], strict=True):
        numbers = pd.to_numeric(frame[short], errors="coerce")
        bad = ~np.isfinite(numbers.to_numpy(dtype=float))
        if bad.any():
            row = int(bad.argmax())
            raise CxrError(
                f"{path}: line {row + 2}, column {column!r}: {frame[short].iloc[row]!r} is not a finite number"
            )
        frame[short] = numbers.astype(float)
    return frame


def read_image_list(path: Path) -> list[str]:
    """``train_val_list.txt`` / ``test_list.txt``: one image name a line."""
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise CxrError(f"{path}: file not found (run the download stage first: dvc repro download)") from None


def split_labels(labels: str) -> list[str]:
    """``"Effusion|Pneumonia"`` → ``["Effusion", "Pneumonia"]``."""
    return labels.split(layout.LABEL_SEPARATOR)


def _num(value: float) -> str:
    return repr(float(value))


def write_data_entry(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame with :data:`ENTRY_COLUMNS` as the NIH CSV (sorted by image name)."""
    lines = [layout.DATA_ENTRY_HEADER]
    for r in frame.sort_values("image").itertuples(index=False):
        lines.append(
            f"{r.image},{r.labels},{int(r.follow_up)},{int(r.patient)},{int(r.age)},{r.sex},{r.view},"
            f"{int(r.orig_width)},{int(r.orig_height)},{r.spacing_x:g},{r.spacing_y:g}"
        )
    Path(path).write_text("\n".join(lines) + "\n")


def write_bbox_list(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame with :data:`BOX_COLUMNS` as the NIH box list, three empty columns closing each row."""
    lines = [layout.BBOX_HEADER]
    for r in frame.itertuples(index=False):
        lines.append(f"{r.image},{r.finding},{_num(r.x)},{_num(r.y)},{_num(r.w)},{_num(r.h)},,,")
    Path(path).write_text("\n".join(lines) + "\n")


def write_image_list(images: Iterable[str], path: Path) -> None:
    """One image name a line, sorted."""
    Path(path).write_text("".join(f"{name}\n" for name in sorted(images)))
