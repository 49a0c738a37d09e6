"""Pick the cohort and stream only its images out of the NIH archives into one compact cache.

The cache is ``images.npy`` (N × S × S, uint8 grayscale, S = ``sample.image_size``) and ``index.csv`` (one row per
array row: image, patient, label, view, …, and the Pneumonia boxes scaled to S). Which archive holds an image comes
from the archives' headers (:mod:`cxrexplain.data.archives`), never from the image's position in the CSV. Archives
are read once each, in parallel, as gzip streams (members are read by name into memory, never extracted to disk); a
worker decodes a chosen member once and writes its row straight into the array file, so memory does not grow with
the cohort. Workers die with the process that started them.

An image that is in no archive, or cannot be read, is listed in ``rejects.csv`` with the reason and skipped; when
more than :data:`MAX_REJECTED_SHARE` of the cohort is rejected the sampling fails (:func:`check_rejects`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from cxrexplain.config import SampleParams
from cxrexplain.data import archives, layout, metadata
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
NOT_IN_ARCHIVE = "not in any archive"
# The real release has no missing or unreadable image. Up to 1 % of the cohort may be rejected (each one listed in
# rejects.csv) so that a few damaged files do not block a 10,000-image study; more means the metadata and the
# archives do not belong together (or archives are missing or damaged), and sampling fails instead of caching a
# different cohort than the one asked for.
MAX_REJECTED_SHARE = 0.01
# A member larger than this is not an image of this dataset (NIH's PNGs are < 1 MiB; a 4096² 16-bit PNG is < 40 MiB):
# it is rejected unread, so that a crafted archive cannot make a worker read gigabytes into memory.
MAX_MEMBER_BYTES = 128 * 2**20
# Percentiles of the window that maps an image of more than 8 bits to 0..255 (see to_gray8).
ROBUST_WINDOW = (0.5, 99.5)


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
    negatives: Literal["no_finding", "all_others"] = "no_finding",
) -> tuple[pd.DataFrame, dict[str, ClassCount]]:
    """The cohort (entries with a ``label`` column: 1 Pneumonia, 0 negative), sorted by image, and its counts
    (``pneumonia``, ``negative``).

    Positives: labels containing Pneumonia (or only Pneumonia); negatives: exactly ``No Finding`` (``no_finding``, the
    study's task) or every image whose labels do not contain Pneumonia (``all_others``: one-vs-rest, as CheXNet and
    the ChestX-ray14 literature; with ``positive: only``, an image with Pneumonia among other labels is neither
    class); both restricted to ``views``. Each class takes ``per_class`` images at random (seeded) or all that exist
    when fewer do; with ``balance`` the negatives are matched to the number of positives taken.
    """
    in_view = entries[entries["view"].isin(list(views))]
    pos = in_view[in_view["labels"].map(lambda s: is_positive(s, positive))]
    if negatives == "no_finding":
        neg = in_view[in_view["labels"] == layout.NO_FINDING]
    elif negatives == "all_others":
        neg = in_view[~in_view["labels"].map(lambda s: is_positive(s, "contains"))]
    else:
        raise ValueError(f"negatives must be 'no_finding' or 'all_others', got {negatives!r}")
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
        "negative": ClassCount(
            neg_wanted, len(neg), neg["patient"].nunique(), len(neg_taken), neg_taken["patient"].nunique()
        ),
    }
    cohort = pd.concat([pos_taken.assign(label=1), neg_taken.assign(label=0)])
    return cohort.sort_values("image").reset_index(drop=True), counts


# ----------------------------------------------------------------------------------------------------------------------
# Decoding


def to_gray8(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a PNG once into an 8-bit grayscale ``size`` × ``size`` array; also returns the decoded (width, height).

    8-bit grayscale is kept as is; RGB(A) and palette images are converted to luminance (alpha dropped). Images of
    more than 8 bits (16-bit, 32-bit integer, float; their bit depth and range vary between scanners) are windowed
    by :func:`robust_gray8`. Non-square images are resized to the square (:func:`square_gray8`; NIH's PNGs are all
    1024 × 1024). Raises on a truncated or undecodable file.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            gray = robust_gray8(np.asarray(image, dtype=np.float64))
        elif image.mode != "L":
            gray = np.asarray(image.convert("L"), dtype=np.uint8)
        else:
            gray = np.asarray(image, dtype=np.uint8)
        return square_gray8(gray, size), (width, height)


def robust_gray8(values: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Values of more than 8 bits as 8-bit gray, windowed to their own 0.5th and 99.5th percentiles.

    ``among`` (a boolean mask of ``values``' shape): take the percentiles among these values only (a DICOM's pixels
    that are not padding); all values are then scaled by that window.

    Values below and above the window (:data:`ROBUST_WINDOW`) are clipped to 0 and 255, the rest scaled linearly. A
    plain min-max would let a handful of hot or dead detector pixels, a burnt-in marker or zero padding set the range
    and squeeze the anatomy into a few gray levels; 0.5 % of a 1024² image is about 5,000 pixels, more than such
    defects cover and far less than any anatomy. When 99 % or more of the pixels share one value the window is empty
    and the full range is used; a constant image becomes 0.
    """
    values = np.asarray(values, dtype=np.float64)
    sample = values if among is None else values[among]
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(sample, ROBUST_WINDOW))
    if hi <= lo:  # 99 % or more of the pixels share one value: the window is empty, use the full range
        lo, hi = float(sample.min()), float(sample.max())
    scaled = (np.clip(values, lo, hi) - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.rint(scaled).astype(np.uint8)


def square_gray8(gray: np.ndarray, size: int) -> np.ndarray:
    """An 8-bit grayscale array resized (bilinear, Pillow) to ``size`` × ``size``; unchanged when it already is."""
    if gray.shape == (size, size):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# Streaming the archives

_progress_queue = None


def _init_worker(queue) -> None:  # a multiprocessing queue
    global _progress_queue
    _progress_queue = queue


def _advance() -> None:
    if _progress_queue is not None:
        _progress_queue.put(1)


@dataclass(frozen=True)
class _ArchiveJob:
    archive: Path
    wanted: dict[str, int]  # image name -> row of the output array
    array_path: Path
    offset: int  # bytes before row 0 in the .npy file
    size: int


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    if member.size > MAX_MEMBER_BYTES:
        raise ValueError(f"member of {member.size:,} bytes, more than {MAX_MEMBER_BYTES:,}: not an image of this set")
    handle = tar.extractfile(member)
    return to_gray8(handle.read() if handle else b"", size)


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
                archives.exit_if_orphaned()
                name = archives.image_of(member.name)
                if not member.isfile() or name not in remaining:
                    continue
                row = remaining.pop(name)
                try:
                    pixels, (width, height) = _read_member(tar, member, job.size)
                except Exception as error:  # any decoding failure is this member's, not the stage's
                    rejects.append((name, archive, f"unreadable image: {type(error).__name__}: {error}"))
                else:
                    os.pwrite(fd, pixels.tobytes(), job.offset + row * row_bytes)
                    found.append((row, width, height))
                _advance()
                if not remaining:
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        failure = f"archive unreadable before this member: {type(error).__name__}: {error}"
    finally:
        os.close(fd)
    for name in remaining:
        rejects.append((name, archive, failure or f"not found in {archive}"))
        _advance()
    return found, rejects


@dataclass(frozen=True)
class BoxCounts:
    """What became of the Pneumonia boxes of the cached Pneumonia images (see :func:`fit_box`)."""

    kept: int = 0  # inside the image as given
    clipped: int = 0  # partly outside: clipped to the image
    dropped: int = 0  # wholly outside, or of no positive width or height


def fit_box(box: Sequence[float], width: int, height: int) -> tuple[tuple[float, float, float, float] | None, str]:
    """A box ``(x, y, w, h)`` fitted to a ``width`` × ``height`` image, and what was done: kept, clipped or dropped.

    A box partly outside the image is clipped to it (the part inside is still where the finding is); a box wholly
    outside, or with no positive width or height, is dropped (None): no part of it can be scored.
    """
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        return None, "dropped"
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None, "dropped"
    if (x0, y0, x1, y1) == (x, y, x + w, y + h):
        return (x, y, w, h), "kept"
    return (x0, y0, x1 - x0, y1 - y0), "clipped"


def _fitted_boxes(
    image: str,
    boxes: list[tuple[float, float, float, float]],
    width: int,
    height: int,
    size: int,
    tally: dict[str, int],
) -> str:
    """The image's boxes fitted to it (warning for each one clipped or dropped), scaled to ``size``, as JSON."""
    sx, sy = size / width, size / height
    out = []
    for box in boxes:
        fitted, outcome = fit_box(box, width, height)
        tally[outcome] += 1
        if outcome != "kept":
            log.warning(
                "%s: Pneumonia box %s is outside the %d × %d image: %s", image, list(box), width, height, outcome
            )
        if fitted is not None:
            x, y, w, h = fitted
            out.append([round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2)])
    return json.dumps(out)


@dataclass(frozen=True)
class CacheResult:
    index: pd.DataFrame  # INDEX_COLUMNS, one row per array row
    rejects: pd.DataFrame  # REJECT_COLUMNS
    boxes: BoxCounts = field(default_factory=BoxCounts)


def build_cache(
    raw_dir: Path,
    cohort: pd.DataFrame,
    archive_of: Mapping[str, str],
    boxes: pd.DataFrame,
    out_dir: Path,
    *,
    image_size: int,
    workers: int = 1,
    show_progress: bool = True,
) -> CacheResult:
    """Write ``images.npy``, ``index.csv`` and ``rejects.csv`` for ``cohort`` into ``out_dir`` (which must exist).

    ``archive_of`` maps image names to the archive that holds them (:func:`archives.archive_members`); an image of the
    cohort it lacks is a reject ("not in any archive"). ``boxes`` is the box list (metadata.BOX_COLUMNS), of which the
    Pneumonia boxes of Pneumonia images are fitted to the decoded image (:func:`fit_box`) and scaled into the index.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    images = cohort["image"].tolist()
    rejects: list[tuple[str, str, str]] = [(i, "", NOT_IN_ARCHIVE) for i in images if i not in archive_of]
    located = [i for i in images if i in archive_of]
    needed = sorted({archive_of[i] for i in located})
    missing = [a for a in needed if not (raw_dir / a).is_file()]
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
    row_of = {image: row for row, image in enumerate(images)}
    jobs = [
        _ArchiveJob(raw_dir / a, {i: row_of[i] for i in located if archive_of[i] == a}, array_path, offset, image_size)
        for a in needed
    ]
    ctx = get_context("fork")
    queue = ctx.SimpleQueue()
    found: list[tuple[int, int, int]] = []
    with (
        item_progress("sampling images", total=len(images), unit="images", enabled=show_progress) as advance,
        archives.worker_pool(min(workers, len(jobs)), _init_worker, (queue,)) as pool,
    ):
        advance(len(images) - len(located))
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
    old_rows = [row_of[i] for i in kept["image"]]
    if rejected:
        _compact(array_path, old_rows, image_size)
    pneumonia_boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in boxes[boxes["finding"] == layout.PNEUMONIA].itertuples(index=False):
        pneumonia_boxes.setdefault(r.image, []).append((float(r.x), float(r.y), float(r.w), float(r.h)))
    tally = dict.fromkeys(("kept", "clipped", "dropped"), 0)
    kept["row"] = range(len(kept))
    kept["archive"] = [archive_of[i] for i in kept["image"]]
    kept["width"] = [sizes[r][0] for r in old_rows]
    kept["height"] = [sizes[r][1] for r in old_rows]
    kept["boxes"] = [
        _fitted_boxes(img, pneumonia_boxes.get(img, []) if lab == 1 else [], *sizes[r], image_size, tally)
        for img, lab, r in zip(kept["image"], kept["label"], old_rows, strict=True)
    ]
    index = kept[list(INDEX_COLUMNS)].reset_index(drop=True)
    reject_frame = pd.DataFrame(sorted(rejects), columns=list(REJECT_COLUMNS))
    index.to_csv(out_dir / INDEX_FILE, index=False)
    reject_frame.to_csv(out_dir / REJECTS_FILE, index=False)
    return CacheResult(index, reject_frame, BoxCounts(**tally))


def check_rejects(rejects: Sequence[tuple[str, str]], cohort_size: int, where: Path) -> None:
    """Fail when more than :data:`MAX_REJECTED_SHARE` of the cohort is rejected (``rejects``: (image, reason) pairs).

    The message gives the count, the share, the first reasons and what to do; nothing has been written then.
    """
    if len(rejects) <= MAX_REJECTED_SHARE * cohort_size:
        return
    shown = "; ".join(f"{image}: {reason}" for image, reason in list(rejects)[:3])
    raise CxrError(
        f"{where}: {len(rejects):,} of the {cohort_size:,} cohort images cannot be cached "
        f"({len(rejects) / max(cohort_size, 1):.1%}, more than the {MAX_REJECTED_SHARE:.0%} tolerated), e.g. {shown}. "
        f"The metadata ({layout.DATA_ENTRY}) and the archives do not belong together, or archives are missing or "
        "damaged: run the download stage (dvc repro download)"
    )


# ----------------------------------------------------------------------------------------------------------------------
# The whole sampling


def shortfall_lines(counts: Mapping[str, ClassCount]) -> list[str]:
    """One line per class with fewer images than asked (ChestX-ray14 has 1,431 Pneumonia images, not 5,000)."""
    return [
        f"{name}: asked for {c.requested:,}, {c.available:,} exist ({c.available_patients:,} patients); "
        f"taking {c.selected:,}"
        for name, c in counts.items()
        if c.shortfall
    ]


@dataclass(frozen=True)
class SampleResult:
    """The cohort's counts (asked, available, taken) and the cache written for it."""

    counts: dict[str, ClassCount]
    cache: CacheResult

    @property
    def shortfall(self) -> list[str]:
        return shortfall_lines(self.counts)

    def metrics(self, source: str, image_size: int, negatives: str = "no_finding") -> dict:
        """``metrics/sample.json``: the real counts, so a shortfall or a reject is on record, not only on screen, and
        which negatives the cohort has (``negatives``: the task every later number belongs to)."""
        index, boxes = self.cache.index, self.cache.boxes
        reasons = self.cache.rejects["reason"]
        return {
            "source": source,
            "image_size": image_size,
            "negatives": negatives,
            "requested": {name: c.requested for name, c in self.counts.items()},
            "counts": {name: asdict(c) for name, c in self.counts.items()},
            "shortfall": bool(self.shortfall),
            "rejected": len(self.cache.rejects),
            "not_in_archive": int((reasons == NOT_IN_ARCHIVE).sum()),
            "boxes": asdict(boxes),
            "cached": cached_counts(index),
        }


def cached_counts(index: pd.DataFrame) -> dict[str, int]:
    """The ``cached`` block of ``metrics/sample.json`` (the report's cohort line): images, classes, patients, boxes."""
    return {
        "images": len(index),
        "pneumonia": int((index["label"] == 1).sum()),
        "negative": int((index["label"] == 0).sum()),
        "patients": int(index["patient"].nunique()),
        "pneumonia_with_boxes": int(((index["label"] == 1) & (index["boxes"] != "[]")).sum()),
    }


def sample_cache(
    raw_dir: Path, p: SampleParams, out_dir: Path, *, seed: int, workers: int = 1, show_progress: bool = True
) -> SampleResult:
    """Read the metadata in ``raw_dir``, pick the cohort (:func:`select_cohort`), find its archives from their
    headers and write the cache into ``out_dir`` (:func:`build_cache`).

    Fails before decoding anything when more than :data:`MAX_REJECTED_SHARE` of the cohort is in no archive, and
    after, when that share cannot be cached at all (:func:`check_rejects`).
    """
    raw_dir = Path(raw_dir)
    entries = metadata.read_data_entry(raw_dir / layout.DATA_ENTRY)
    boxes = metadata.read_bbox_list(raw_dir / layout.BBOX_LIST)
    cohort, counts = select_cohort(
        entries,
        positive=p.positive,
        views=p.views,
        per_class=p.per_class,
        balance=p.balance,
        seed=seed,
        negatives=p.negatives,
    )
    for line in shortfall_lines(counts):
        log.warning("cohort shortfall: %s", line)
    archive_of = archives.archive_members(raw_dir, workers=workers)
    absent = [(i, NOT_IN_ARCHIVE) for i in cohort["image"] if i not in archive_of]
    check_rejects(absent, len(cohort), raw_dir)
    cache = build_cache(
        raw_dir,
        cohort,
        archive_of,
        boxes,
        out_dir,
        image_size=p.image_size,
        workers=workers,
        show_progress=show_progress,
    )
    check_rejects(list(zip(cache.rejects["image"], cache.rejects["reason"], strict=True)), len(cohort), raw_dir)
    return SampleResult(counts, cache)


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
