"""DICOM chest radiographs as the project's 8-bit grayscale: ``explain-image`` and ``sample --from-dicom``.

A radiograph goes through the DICOM grayscale pipeline (PS3.3 C.11, PS3.4 N.2), each step with pydicom's own function:

1. stored values: ``Dataset.pixel_array``, which keeps the low ``BitsStored`` bits of each ``BitsAllocated`` word
   (12-bit in 16: the 4 high bits, overlays or garbage, are dropped) and sign-extends them when
   ``PixelRepresentation`` is 1 (two's complement); Float and Double Float Pixel Data (7FE0,0008 / 0009) give
   their 32- or 64-bit values. Padding (PS3.3 C.7.5.1.1.2): the stored values from ``PixelPaddingValue`` to
   ``PixelPaddingRangeLimit`` (or that one value without a limit; ``FloatPixelPaddingValue`` and its limit for
   float pixels, ``DoubleFloat...`` for double) mark pixels outside the patient. They take no part in the
   percentile window of step 4 and come out 0, black, whatever the window and the photometric interpretation
   (the standard leaves their display to the application; black is what a collimated film shows);
2. modality values: ``apply_modality_lut`` (the Modality LUT Sequence, or ``RescaleSlope`` and ``RescaleIntercept``);
3. display values: ``apply_voi_lut`` with its defaults (the first VOI LUT Sequence item if there is one, else the
   first of the ``WindowCenter`` / ``WindowWidth`` pairs: several values are alternative views and the first is the
   default one; ``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID);
4. 8 bits: the display range is mapped linearly onto 0..255 and rounded. The range is what pydicom's step 3 can
   output: for a window, the values it gives below and above the window (pydicom's ``y_min`` and ``y_max``, from
   ``BitsStored``, the pixel representation and the rescale); for a VOI LUT, the smallest and largest entry of the
   LUT (its descriptor's bit count is not used: many 12-bit LUTs declare 16 bits, and would come out nearly black).
   A file with neither a VOI LUT nor a window is windowed like a 16-bit PNG
   (:func:`cxrexplain.data.sample.robust_gray8`: the 0.5th to 99.5th percentile of its own modality values, padding
   left out). Floating point pixels have no ``BitsStored``: their window is pydicom's on a 16-bit stand-in range,
   which the linear map to 0..255 cancels (the window functions are affine in their output range);
5. inversion, ``g -> 255 - g``, after the window (the Presentation LUT, PS3.3 C.11.6, PS3.4 N.2): by
   ``PresentationLUTShape`` when the file has it (INVERSE inverted, IDENTITY not), else by the photometric
   interpretation (``MONOCHROME1``, low values bright, inverted; ``MONOCHROME2`` kept). The DX Image module (PS3.3
   C.8.11.3) defines the shape as the transformation that accounts for the photometric interpretation, to be INVERSE
   exactly for MONOCHROME1: the pair is one inversion, not two. A file that contradicts it (IDENTITY with
   MONOCHROME1, INVERSE with MONOCHROME2) is shown as its shape says, with a warning naming it (dcm4chee's rendering
   does the same by default; files with a wrong shape exist, so the warning matters).

Then the image is resized to the square like every other image of the project (:func:`sample.square_gray8`).

Compressed pixel data is decoded by pydicom's plugins, which the project's dependencies install: RLE Lossless
(pylibjpeg-rle, or pydicom's own), JPEG-LS (pyjpegls), JPEG 2000 and HTJ2K (pylibjpeg-openjpeg, or GDCM, or Pillow),
JPEG Lossless process 14 and JPEG baseline / extended (GDCM, or Pillow for the lossy ones).

Files are hostile: a file that is not DICOM (no ``DICM`` marker), truncated, compressed with a transfer syntax for
which no decoder is installed (or which pydicom cannot decode at all: MPEG, JPEG 2000 Part 2), multi-frame, colour,
or larger than :data:`MAX_DICOM_BYTES` is a :class:`~cxrexplain.errors.CxrError` naming the file and the problem.
:func:`build_dicom_cache` writes the cache format of :mod:`cxrexplain.data.sample` (``images.npy``, ``index.csv``,
``rejects.csv``) from a folder of such files and a labels CSV; an unreadable file is listed in ``rejects.csv`` and
skipped, and too many of them fail the run.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels.processing import apply_voi, apply_windowing

from cxrexplain.data import layout
from cxrexplain.data.sample import (
    IMAGES_FILE,
    INDEX_COLUMNS,
    INDEX_FILE,
    MAX_REJECTED_SHARE,
    REJECT_COLUMNS,
    REJECTS_FILE,
    BoxCounts,
    CacheResult,
    _compact,
    _fitted_boxes,
    cached_counts,
    robust_gray8,
    square_gray8,
)
from cxrexplain.errors import CxrError
from cxrexplain.progress import item_progress

log = logging.getLogger("cxrexplain.dicom")
_DECODER_LOG = logging.getLogger("pydicom.pixels.decoders.base")

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
"""Names read as DICOM by ``explain-image`` even without the ``DICM`` marker (which then fails, naming the file)."""
MAX_DICOM_BYTES = 512 * 2**20
"""A larger file is refused unread (a 4,300² 16-bit radiograph is 37 MB): a crafted file cannot fill memory."""
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
LABEL_VALUES = {"1": 1, "0": 0, layout.PNEUMONIA.lower(): 1, layout.NO_FINDING.lower(): 0}
LABEL_COLUMNS = ("file", "label")  # required; ``patient`` and ``view`` are optional (else from the DICOM header)
BOX_FILE_COLUMNS = ("file", "x", "y", "w", "h")
SOURCE = "dicom"
PIXEL_KEYS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
"""(7FE0,0010), (7FE0,0008) and (7FE0,0009): integer, 32-bit and 64-bit floating point pixels."""
PADDING_KEYS = {  # the pixel data's key -> its padding value and range limit (PS3.3 C.7.5.1.1.2, C.7.6.24)
    "PixelData": ("PixelPaddingValue", "PixelPaddingRangeLimit"),
    "FloatPixelData": ("FloatPixelPaddingValue", "FloatPixelPaddingRangeLimit"),
    "DoubleFloatPixelData": ("DoubleFloatPixelPaddingValue", "DoubleFloatPixelPaddingRangeLimit"),
}


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: a 128-byte preamble, then ``DICM``."""
    return data[128:132] == b"DICM"


def read_file(path: Path) -> bytes:
    """The bytes of ``path``, refused unread when larger than :data:`MAX_DICOM_BYTES`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CxrError(f"{path}: not a file")
        if size > MAX_DICOM_BYTES:
            raise CxrError(f"{path}: {size:,} bytes, more than the {MAX_DICOM_BYTES:,} a radiograph needs: not read")
        return path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{path}: image not found") from None
    except OSError as error:
        raise CxrError(f"{path}: cannot be read ({error.strerror or error})") from None


def read_dataset(data: bytes, name: str | Path) -> pydicom.Dataset:
    """The parsed DICOM file, checked to hold one grayscale radiograph that an installed decoder can read."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise CxrError(f"{name}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from None
    except Exception as error:  # pydicom raises many kinds on a damaged header
        raise CxrError(f"{name}: unreadable DICOM header ({type(error).__name__}: {error})") from None
    try:
        _check_image(ds, name)
    except CxrError:
        raise
    except Exception as error:  # an attribute of the wrong type or value (a UID that is no transfer syntax, ...)
        raise CxrError(f"{name}: invalid DICOM header ({type(error).__name__}: {error})") from None
    return ds


def _check_image(ds: pydicom.Dataset, name: str | Path) -> None:
    """One grayscale frame that an installed decoder can read, else a :class:`CxrError` naming the problem."""
    if not any(key in ds for key in PIXEL_KEYS):
        raise CxrError(f"{name}: no pixel data (truncated, or not an image)")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise CxrError(f"{name}: no transfer syntax in the file meta information (truncated header?)")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation") if k not in ds]
    if missing:
        raise CxrError(f"{name}: lacks {', '.join(missing)} (truncated header, or not an image)")
    photometric = str(ds.PhotometricInterpretation)
    samples = int(ds.get("SamplesPerPixel", 1))
    if photometric not in GRAYSCALE or samples != 1:
        raise CxrError(
            f"{name}: a colour image ({photometric}, {samples} samples per pixel); only grayscale radiographs "
            "(MONOCHROME1 or MONOCHROME2) are read"
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise CxrError(f"{name}: {frames} frames; one radiograph per file is read (split multi-frame files first)")
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise CxrError(f"{name}: compressed with {syntax.name} ({syntax}), which pydicom cannot decode") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies)
            raise CxrError(
                f"{name}: compressed with {syntax.name} and no decoder for it is installed ({needs}); this "
                "project's dependencies hold one for each syntax pydicom decodes: reinstall them (pip install -e .)"
            )


def _voi_kind(ds: pydicom.Dataset) -> str | None:
    """What ``apply_voi_lut`` (``prefer_lut=True``) applies to ``ds``: ``lut``, ``window`` or nothing (None)."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _display_range(ds: pydicom.Dataset, kind: str) -> tuple[float, float]:
    """The values ``apply_voi_lut`` can output for ``ds`` (see the module docstring, step 4), from pydicom itself."""
    if kind == "window":  # everything below the window gives y_min, everything above y_max (LINEAR and SIGMOID)
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
        return float(lo), float(hi)
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, index=0)
    return float(lut.min()), float(lut.max())


def _pixel_key(ds: pydicom.Dataset) -> str:
    return next(key for key in PIXEL_KEYS if key in ds)


def _padding(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    """The padding pixels (module docstring, step 0): stored values from the padding value to the range limit
    (either may be the larger; the value alone pads that one value), or None when the file declares no padding."""
    value_key, limit_key = PADDING_KEYS[_pixel_key(ds)]
    value = ds.get(value_key)
    if value is None:
        return None
    limit = ds.get(limit_key, value)
    lo, hi = sorted((float(value), float(limit)))
    return (stored >= lo) & (stored <= hi)


def _window_view(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` as pydicom's windowing reads it. Floating point pixels have no ``BitsStored`` nor pixel representation,
    from which pydicom takes its output range: a view with 16 unsigned bits and no rescale stands in. Step 4 maps the
    output range onto 0..255, and LINEAR, LINEAR_EXACT and SIGMOID are affine in that range, so the 8-bit image does
    not depend on it."""
    if _pixel_key(ds) == "PixelData":
        return ds
    view = pydicom.Dataset()
    for key in ("PhotometricInterpretation", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"):
        if key in ds:
            view[key] = ds[key]
    view.BitsStored, view.PixelRepresentation = 16, 0
    return view


def _inverted(ds: pydicom.Dataset, name: str | Path) -> bool:
    """Whether low display values are shown bright (module docstring, step 5)."""
    photometric = str(ds.PhotometricInterpretation)
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    if shape not in ("IDENTITY", "INVERSE"):
        if shape:
            log.warning("%s: PresentationLUTShape %r is neither IDENTITY nor INVERSE: not read", name, shape)
        return photometric == "MONOCHROME1"
    if (shape == "INVERSE") != (photometric == "MONOCHROME1"):
        log.warning(
            "%s: PresentationLUTShape %s with %s (the standard pairs INVERSE with MONOCHROME1): the shape decides, "
            "the image is %sinverted",
            name,
            shape,
            photometric,
            "" if shape == "INVERSE" else "not ",
        )
    return shape == "INVERSE"


def dicom_gray8(ds: pydicom.Dataset, name: str | Path) -> np.ndarray:
    """The radiograph of ``ds`` (from :func:`read_dataset`) as 8-bit grayscale at its own size (module docstring)."""
    try:
        with _quiet_decoders():
            stored = ds.pixel_array
    except Exception as error:  # truncated or corrupt pixel data, a decoder failing on its input
        syntax = ds.file_meta.TransferSyntaxUID
        reason = " ".join(str(error).split())  # pydicom lists each plugin's failure on its own line
        raise CxrError(f"{name}: pixel data unreadable ({syntax.name}; {type(error).__name__}: {reason})") from None
    if stored.ndim != 2:
        raise CxrError(f"{name}: pixel array of shape {stored.shape}, expected one grayscale frame")
    try:
        padding = _padding(ds, stored)
        modality = apply_modality_lut(stored, ds)
        kind = _voi_kind(ds)
        if kind == "lut" and not np.issubdtype(modality.dtype, np.integer):
            # a VOI LUT is indexed by whole numbers: floor, as pydicom's own float path would, without its warning
            modality = np.floor(modality).astype(np.int64)
        if kind is None:
            gray = robust_gray8(modality, among=None if padding is None else ~padding)
        else:
            view = _window_view(ds)
            shown = np.asarray(apply_voi_lut(modality, view, index=0), dtype=np.float64)
            lo, hi = _display_range(view, kind)
            if hi == lo:
                gray = np.zeros(shown.shape, dtype=np.uint8)
            else:
                gray = np.rint(np.clip((shown - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
        inverted = _inverted(ds, name)
    except CxrError:
        raise
    except Exception as error:  # e.g. a window width below 1, an unsupported LUT depth, a LUT item missing
        raise CxrError(f"{name}: modality or VOI attributes unusable ({type(error).__name__}: {error})") from None
    if inverted:
        gray = 255 - gray
    if padding is not None:
        gray[padding] = 0
    return gray


@contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Silence pydicom's decoder log while decoding: it logs each failing plugin's traceback before raising the error
    that names them all, which becomes this module's :class:`CxrError` (no traceback for a user's bad file)."""
    was = _DECODER_LOG.disabled
    _DECODER_LOG.disabled = True
    try:
        yield
    finally:
        _DECODER_LOG.disabled = was


def decode_dicom(data: bytes, size: int, name: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """A DICOM file's bytes as the project's ``size`` × ``size`` 8-bit grayscale, and its (width, height)."""
    gray = dicom_gray8(read_dataset(data, name), name)
    return square_gray8(gray, size), (gray.shape[1], gray.shape[0])


# ----------------------------------------------------------------------------------------------------------------------
# A cache from a folder of DICOM files


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise CxrError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CxrError(f"{path}: not a readable CSV ({error})") from None
    frame.columns = [c.strip() for c in frame.columns]
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise CxrError(f"{path}: lacks column(s) {', '.join(absent)} (has {', '.join(frame.columns) or 'none'})")
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    return frame


def read_labels(path: Path) -> pd.DataFrame:
    """The labels CSV: ``file`` (a path under the DICOM folder), ``label`` (1 or Pneumonia, 0 or No Finding) and
    optionally ``patient`` and ``view``; a :class:`CxrError` names the line and the value at fault."""
    path = Path(path)
    frame = _read_csv(path, LABEL_COLUMNS)
    if frame.empty:
        raise CxrError(f"{path}: no image listed")
    for i, row in enumerate(frame.itertuples(index=False), start=2):
        if not row.file:
            raise CxrError(f"{path}: line {i}: empty file name")
        if row.label.lower() not in LABEL_VALUES:
            raise CxrError(f"{path}: line {i}: label {row.label!r}, expected 1, 0, Pneumonia or No Finding")
    repeated = frame["file"].duplicated()
    if repeated.any():
        raise CxrError(f"{path}: {frame['file'][repeated].iloc[0]} is listed twice")
    frame["label"] = [LABEL_VALUES[v.lower()] for v in frame["label"]]
    return frame


def read_box_file(path: Path) -> pd.DataFrame:
    """The boxes CSV: ``file``, ``x``, ``y``, ``w``, ``h`` in the DICOM image's own pixels (one row per box)."""
    path = Path(path)
    frame = _read_csv(path, BOX_FILE_COLUMNS)
    for column in BOX_FILE_COLUMNS[1:]:
        numbers = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(numbers)
        if bad.any():
            row = int(bad.argmax())
            raise CxrError(f"{path}: line {row + 2}, column {column}: {frame[column].iloc[row]!r} is not a number")
        frame[column] = numbers
    return frame


def _age_years(value: object) -> float:
    """DICOM PatientAge (``045Y``) in years; NaN when absent or in other units."""
    text = str(value or "")
    return float(text[:-1]) if len(text) == 4 and text.endswith("Y") and text[:-1].isdigit() else math.nan


@dataclass(frozen=True)
class DicomSample:
    """A cache written from DICOM files: what was cached and skipped, and ``metrics/sample.json``'s content."""

    cache: CacheResult
    listed: int

    def metrics(self, image_size: int, dicom_dir: Path, labels: Path) -> dict:
        index = self.cache.index
        return {
            "source": SOURCE,
            "dicom_dir": str(dicom_dir),
            "labels": str(labels),
            "image_size": image_size,
            "negatives": "no_finding",
            "listed": self.listed,
            "rejected": len(self.cache.rejects),
            "boxes": {k: getattr(self.cache.boxes, k) for k in ("kept", "clipped", "dropped")},
            "cached": cached_counts(index),
        }


def build_dicom_cache(
    dicom_dir: Path,
    labels: pd.DataFrame,
    boxes: pd.DataFrame | None,
    out_dir: Path,
    *,
    image_size: int,
    max_skipped: float = MAX_REJECTED_SHARE,
    show_progress: bool = True,
) -> DicomSample:
    """Decode each file of ``labels`` (:func:`read_labels`) under ``dicom_dir`` into ``out_dir``'s cache.

    The index has the cache's columns (:data:`sample.INDEX_COLUMNS`): ``image`` is the file's path as the labels
    give it, ``patient`` the labels' or else the DICOM PatientID, ``view`` the labels' or else ViewPosition, ``age``
    and ``sex`` from the header, ``archive`` and ``follow_up`` empty, ``width`` and ``height`` the DICOM's columns and
    rows, ``boxes`` those of ``boxes`` (:func:`read_box_file`) for Pneumonia images, fitted and scaled as the NIH
    boxes are. A file that is missing, outside ``dicom_dir``, unreadable or without a patient id is listed in
    ``rejects.csv`` with the reason and skipped; when more than ``max_skipped`` of the listed files are, or none is
    left, a :class:`CxrError` says how many and why (give ``out_dir`` through an atomic output so nothing is kept).
    """
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    if not dicom_dir.is_dir():
        raise CxrError(f"{dicom_dir}: not a folder")
    if not 0 <= max_skipped < 1:
        raise CxrError(f"--max-skipped: a share between 0 and 1, got {max_skipped}")
    root = dicom_dir.resolve()
    names = labels["file"].tolist()
    array_path = out_dir / IMAGES_FILE
    array = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(len(names), image_size, image_size))
    rows: list[dict] = []
    kept_rows: list[int] = []
    rejects: list[tuple[str, str, str]] = []
    with item_progress("decoding DICOM", total=len(names), unit="images", enabled=show_progress) as advance:
        for i, row in enumerate(labels.to_dict("records")):
            advance(1)
            path = dicom_dir / row["file"]
            if not path.resolve().is_relative_to(root):
                rejects.append((row["file"], "", f"outside {dicom_dir}"))
                continue
            try:
                ds = read_dataset(read_file(path), path)
                gray = dicom_gray8(ds, path)
            except CxrError as error:
                rejects.append((row["file"], "", str(error).removeprefix(f"{path}: ")))
                continue
            except Exception as error:  # a failure no check foresaw is still this file's, not the run's
                rejects.append((row["file"], "", f"unreadable ({type(error).__name__}: {error})"))
                continue
            patient = row.get("patient") or str(ds.get("PatientID", "")).strip()
            if not patient:
                rejects.append((row["file"], "", "no patient id (labels CSV column 'patient' or DICOM PatientID)"))
                continue
            array[i] = square_gray8(gray, image_size)
            kept_rows.append(i)
            rows.append(
                {
                    "image": row["file"],
                    "patient": patient,
                    "label": row["label"],
                    "labels": layout.PNEUMONIA if row["label"] == 1 else layout.NO_FINDING,
                    "view": row.get("view") or str(ds.get("ViewPosition", "")).strip(),
                    "follow_up": "",
                    "age": _age_years(ds.get("PatientAge")),
                    "sex": str(ds.get("PatientSex", "")).strip(),
                    "archive": "",
                    "width": gray.shape[1],
                    "height": gray.shape[0],
                }
            )
    array.flush()
    del array
    _check_skipped(rejects, len(names), max_skipped, dicom_dir)
    if len(kept_rows) < len(names):
        _compact(array_path, kept_rows, image_size)
    by_file: dict[str, list[tuple[float, float, float, float]]] = {}
    if boxes is not None:
        for b in boxes.itertuples(index=False):
            by_file.setdefault(b.file, []).append((b.x, b.y, b.w, b.h))
        unknown = sorted(set(by_file) - set(names))
        if unknown:
            log.warning("%d box file(s) not in the labels, ignored, e.g. %s", len(unknown), unknown[0])
    tally = dict.fromkeys(("kept", "clipped", "dropped"), 0)
    for r in rows:
        own = by_file.get(r["image"], []) if r["label"] == 1 else []
        r["boxes"] = _fitted_boxes(r["image"], own, r["width"], r["height"], image_size, tally)
    negatives_with_boxes = sum(1 for r in rows if r["label"] == 0 and r["image"] in by_file)
    if negatives_with_boxes:
        log.warning("%d No Finding image(s) have boxes: ignored (boxes mark Pneumonia)", negatives_with_boxes)
    index = pd.DataFrame(rows, columns=[c for c in INDEX_COLUMNS if c != "row"])
    index.insert(0, "row", range(len(index)))
    reject_frame = pd.DataFrame(sorted(rejects), columns=list(REJECT_COLUMNS))
    index.to_csv(out_dir / INDEX_FILE, index=False)
    reject_frame.to_csv(out_dir / REJECTS_FILE, index=False)
    return DicomSample(CacheResult(index, reject_frame, BoxCounts(**tally)), len(names))


def _check_skipped(rejects: Sequence[tuple[str, str, str]], listed: int, max_skipped: float, where: Path) -> None:
    """Fail when more than ``max_skipped`` of the ``listed`` files, or all of them, could not be cached."""
    if len(rejects) <= max_skipped * listed and len(rejects) < listed:
        return
    shown = "; ".join(f"{image}: {reason}" for image, _, reason in list(rejects)[:3])
    raise CxrError(
        f"{where}: {len(rejects):,} of the {listed:,} listed DICOM files cannot be cached "
        f"({len(rejects) / listed:.1%}; at most {max_skipped:.1%} may be skipped, --max-skipped), e.g. {shown}"
    )


def sample_from_dicom(
    dicom_dir: Path,
    labels_csv: Path,
    boxes_csv: Path | None,
    out_dir: Path,
    *,
    image_size: int,
    max_skipped: float = MAX_REJECTED_SHARE,
    show_progress: bool = True,
) -> DicomSample:
    """Read the labels (and boxes) CSV, then :func:`build_dicom_cache` into ``out_dir`` (which must exist)."""
    labels = read_labels(labels_csv)
    boxes = read_box_file(boxes_csv) if boxes_csv is not None else None
    return build_dicom_cache(
        dicom_dir,
        labels,
        boxes,
        out_dir,
        image_size=image_size,
        max_skipped=max_skipped,
        show_progress=show_progress,
    )


__all__ = [
    "DicomSample",
    "build_dicom_cache",
    "decode_dicom",
    "dicom_gray8",
    "is_dicom",
    "read_box_file",
    "read_dataset",
    "read_file",
    "read_labels",
    "sample_from_dicom",
]
