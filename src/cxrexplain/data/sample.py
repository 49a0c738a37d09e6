"""Pick the cohort and stream only its images out of the NIH archives into one compact cache.

The cache is ``images.npy`` (N × S × S, uint8 grayscale, S = ``sample.image_size``) and ``index.csv`` (one row per
array row: image, patient, label, view, …, and the Pneumonia boxes scaled to S). Archives are read once each, in
parallel, as gzip streams (never extracted to disk); a worker decodes a chosen member once and writes its row straight
into the array file, so memory does not grow with the cohort. A member that cannot be read is listed in
``rejects.csv`` with the reason and skipped.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from cxrexplain.data import layout, metadata
from cxrexplain.errors import CxrError
from cxrexplain.progress import item_progress

log = logging.getLogger("cxrexplain.sample")

IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
REJECTS_FILE = "rejects.csv"
INDEX_COLUMNS = (
    "row",
    "image",
    "patient",
    "label",
    "labels",
    "view",
    "follow_up",
    "age",
    "sex",
    "archive",
    "width",
    "height",
    "boxes",
)
REJECT_COLUMNS = ("image", "archive", "reason")


# ----------------------------------------------------------------------------------------------------------------------
# Cohort


@dataclass(frozen=True)
class ClassCount:
    """How many images of a class were asked for, exist (after the view filter), and were taken."""

    requested: int
    available: int
    available_patients: int
    selected: int
    selected_patients: int

    @property
    def shortfall(self) -> bool:
        return self.selected < self.requested


def is_positive(labels: str, mode: Literal["contains", "only"]) -> bool:
    """Pneumonia among the labels (``contains``) or as the only label (``only``)."""
    found = metadata.split_labels(labels)
    return found == [layout.PNEUMONIA] if mode == "only" else layout.PNEUMONIA in found


def select_cohort(
    entries: pd.DataFrame,
    *,
    positive: Literal["contains", "only"],
    views: Sequence[str],
    per_class: int,
    balance: bool,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, ClassCount]]:
    """The cohort (entries with a ``label`` column: 1 Pneumonia, 0 No Finding), sorted by image, and its counts.

    Positives: labels containing Pneumonia (or only Pneumonia); negatives: exactly ``No Finding``; both restricted to
    ``views``. Each class takes ``per_class`` images at random (seeded) or all that exist when fewer do; with
    ``balance`` the negatives are matched to the number of positives taken.
    """
    in_view = entries[entries["view"].isin(list(views))]
    pos = in_view[in_view["labels"].map(lambda s: is_positive(s, positive))]
    neg = in_view[in_view["labels"] == layout.NO_FINDING]
    rng = np.random.default_rng(seed)

    def take(frame: pd.DataFrame, n: int) -> pd.DataFrame:
        if len(frame) <= n:
            return frame
        return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]

    pos_taken = take(pos, per_class)
    neg_wanted = len(pos_taken) if balance else per_class
    neg_taken = take(neg, neg_wanted)
    counts = {
        "pneumonia": ClassCount(
            per_class, len(pos), pos["patient"].nunique(), len(pos_taken), pos_taken["patient"].nunique()
        ),
        "no_finding": ClassCount(
            neg_wanted, len(neg), neg["patient"].nunique(), len(neg_taken), neg_taken["patient"].nunique()
        ),
    }
    cohort = pd.concat([pos_taken.assign(label=1), neg_taken.assign(label=0)])
    return cohort.sort_values("image").reset_index(drop=True), counts


# ----------------------------------------------------------------------------------------------------------------------
# Decoding


def to_gray8(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a PNG once into an 8-bit grayscale ``size`` × ``size`` array; also returns the decoded (width, height).

    8-bit grayscale is kept as is; RGB(A) and palette images are converted to luminance (alpha dropped); 16-bit and
    32-bit integer images are min-max rescaled to 0-255 (their bit depth varies between scanners). Non-square images are
    resized to the square (NIH's PNGs are all 1024 × 1024). Raises on a truncated or undecodable file.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            values = np.asarray(image, dtype=np.float64)
            lo, hi = float(values.min()), float(values.max())
            scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
            gray = Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
        elif image.mode != "L":
            gray = image.convert("L")
        else:
            gray = image
        if gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(gray, dtype=np.uint8), (width, height)


# ----------------------------------------------------------------------------------------------------------------------
# Streaming the archives

_progress_queue = None


def _init_worker(queue) -> None:  # a multiprocessing queue
    global _progress_queue
    _progress_queue = queue


@dataclass(frozen=True)
class _ArchiveJob:
    archive: Path
    wanted: dict[str, int]  # image name -> row of the output array
    array_path: Path
    offset: int  # bytes before row 0 in the .npy file
    size: int


def _read_archive(job: _ArchiveJob) -> tuple[list[tuple[int, int, int]], list[tuple[str, str, str]]]:
    """Stream one archive, decode and write the wanted members; returns (row, width, height) found and rejects."""
    remaining = dict(job.wanted)
    found: list[tuple[int, int, int]] = []
    rejects: list[tuple[str, str, str]] = []
    archive = job.archive.name
    row_bytes = job.size * job.size
    failure = None
    fd = os.open(job.array_path, os.O_WRONLY)
    try:
        with tarfile.open(job.archive, mode="r|gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name).name
                if not member.isfile() or name not in remaining:
                    continue
                row = remaining.pop(name)
                try:
                    handle = tar.extractfile(member)
                    pixels, (width, height) = to_gray8(handle.read() if handle else b"", job.size)
                except Exception as error:  # any decoding failure is this member's, not the stage's
                    rejects.append((name, archive, f"unreadable image: {type(error).__name__}: {error}"))
                else:
                    os.pwrite(fd, pixels.tobytes(), job.offset + row * row_bytes)
                    found.append((row, width, height))
                if _progress_queue is not None:
                    _progress_queue.put(1)
                if not remaining:
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        failure = f"archive unreadable before this member: {type(error).__name__}: {error}"
    finally:
        os.close(fd)
    for name in remaining:
        rejects.append((name, archive, failure or f"not found in {archive}"))
        if _progress_queue is not None:
            _progress_queue.put(1)
    return found, rejects


def _scaled_boxes(boxes: list[tuple[float, float, float, float]], width: int, height: int, size: int) -> str:
    sx, sy = size / width, size / height
    return json.dumps(
        [[round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2)] for x, y, w, h in boxes]
    )


@dataclass(frozen=True)
class CacheResult:
    index: pd.DataFrame  # INDEX_COLUMNS, one row per array row
    rejects: pd.DataFrame  # REJECT_COLUMNS


def build_cache(
    raw_dir: Path,
    cohort: pd.DataFrame,
    archive_of: dict[str, str],
    boxes: pd.DataFrame,
    out_dir: Path,
    *,
    image_size: int,
    workers: int = 1,
    show_progress: bool = True,
) -> CacheResult:
    """Write ``images.npy``, ``index.csv`` and ``rejects.csv`` for ``cohort`` into ``out_dir`` (which must exist).

    ``archive_of`` maps every image name to its archive (:func:`layout.assign_archives` of the full index);
    ``boxes`` is the box list (metadata.BOX_COLUMNS), of which the Pneumonia boxes are scaled into the index.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    images = cohort["image"].tolist()
    archives = sorted({archive_of[i] for i in images})
    missing = [a for a in archives if not (raw_dir / a).is_file()]
    if missing:
        raise CxrError(
            f"{raw_dir}: missing archive(s) {', '.join(missing)} holding images of the cohort; "
            "run the download stage (dvc repro download)"
        )
    array_path = out_dir / IMAGES_FILE
    array = np.lib.format.open_memmap(
        array_path, mode="w+", dtype=np.uint8, shape=(len(images), image_size, image_size)
    )
    offset = int(array.offset)
    del array
    jobs = [
        _ArchiveJob(
            raw_dir / a,
            {image: row for row, image in enumerate(images) if archive_of[image] == a},
            array_path,
            offset,
            image_size,
        )
        for a in archives
    ]
    ctx = get_context("fork")
    queue = ctx.SimpleQueue()
    found: list[tuple[int, int, int]] = []
    rejects: list[tuple[str, str, str]] = []
    with (
        item_progress("sampling images", total=len(images), unit="images", enabled=show_progress) as advance,
        ProcessPoolExecutor(
            max_workers=max(1, min(workers, len(jobs))), mp_context=ctx, initializer=_init_worker, initargs=(queue,)
        ) as pool,
    ):
        pending = {pool.submit(_read_archive, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while not queue.empty():
                advance(queue.get())
            for future in done:
                got, bad = future.result()
                found.extend(got)
                rejects.extend(bad)
        while not queue.empty():
            advance(queue.get())

    sizes = {row: (w, h) for row, w, h in found}
    rejected = {name for name, _, _ in rejects}
    kept = cohort[~cohort["image"].isin(rejected)].copy()
    row_of = {image: row for row, image in enumerate(images)}
    old_rows = [row_of[i] for i in kept["image"]]
    if rejected:
        _compact(array_path, old_rows, image_size)
    pneumonia_boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in boxes[boxes["finding"] == layout.PNEUMONIA].itertuples(index=False):
        pneumonia_boxes.setdefault(r.image, []).append((float(r.x), float(r.y), float(r.w), float(r.h)))
    kept["row"] = range(len(kept))
    kept["archive"] = [archive_of[i] for i in kept["image"]]
    kept["width"] = [sizes[r][0] for r in old_rows]
    kept["height"] = [sizes[r][1] for r in old_rows]
    kept["boxes"] = [
        _scaled_boxes(pneumonia_boxes.get(img, []) if lab == 1 else [], sizes[r][0], sizes[r][1], image_size)
        for img, lab, r in zip(kept["image"], kept["label"], old_rows, strict=True)
    ]
    index = kept[list(INDEX_COLUMNS)].reset_index(drop=True)
    reject_frame = pd.DataFrame(sorted(rejects), columns=list(REJECT_COLUMNS))
    index.to_csv(out_dir / INDEX_FILE, index=False)
    reject_frame.to_csv(out_dir / REJECTS_FILE, index=False)
    return CacheResult(index, reject_frame)


def _compact(array_path: Path, rows: list[int], size: int, chunk: int = 256) -> None:
    """Rewrite the array keeping only ``rows`` (in order), a chunk at a time."""
    source = np.load(array_path, mmap_mode="r")
    tmp = array_path.with_name(array_path.name + ".compact")
    target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), size, size))
    for start in range(0, len(rows), chunk):
        target[start : start + chunk] = source[rows[start : start + chunk]]
    target.flush()
    del target, source
    os.replace(tmp, array_path)


def load_cache(cache_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The cached array (memory-mapped, read-only) and its index."""
    cache_dir = Path(cache_dir)
    try:
        images = np.load(cache_dir / IMAGES_FILE, mmap_mode="r")
        index = pd.read_csv(cache_dir / INDEX_FILE)
    except FileNotFoundError as error:
        raise CxrError(f"{error.filename}: not found; run the sample stage first (dvc repro sample)") from None
    if len(index) != len(images):
        raise CxrError(f"{cache_dir}: index has {len(index)} rows but the array {len(images)}; re-run dvc repro sample")
    return images, index
