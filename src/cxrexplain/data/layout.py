"""The NIH ChestX-ray14 file layout: file names, CSV headers, archive links and checksums.

Everything that must be byte-for-byte like the real dataset lives here, so the synthetic mirror, the downloader and the
sampler agree by construction. Facts verified on the NIH release (Box folder ``ChestXray-NIHCC``):

* 12 archives ``images_001.tar.gz`` … ``images_012.tar.gz`` holding
  ``images/<8-digit patient>_<3-digit follow-up>.png``, sorted by image name and cut into 4,999, then
  10 × 10,000, then 7,121 images (112,120 in all);
* ``Data_Entry_2017_v2020.csv``, ``BBox_List_2017.csv`` (3 empty trailing columns), ``train_val_list.txt`` and
  ``test_list.txt`` (one image name per line, patient-wise), with 112,120, 984, 86,524 and 25,596 rows.

:func:`content_problem` checks a file against these facts by its content (what a download cannot prove by an MD5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DATA_ENTRY = "Data_Entry_2017_v2020.csv"
BBOX_LIST = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
MD5_MANIFEST = "MD5SUMS"
METADATA_FILES = (DATA_ENTRY, BBOX_LIST, TRAIN_VAL_LIST, TEST_LIST)

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
# pandas reads the header above as these 11 columns (the bracketed pairs are two columns each).
DATA_ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# The unquoted "Bbox [x,y,w,h]" is four columns and the three trailing commas three empty ones: 9 fields a row.
BBOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
BBOX_FIELDS = 9

NO_FINDING = "No Finding"
PNEUMONIA = "Pneumonia"
NEGATIVE_NAMES = {"no_finding": NO_FINDING, "all_others": "without Pneumonia"}
"""The negative class of each ``sample.negatives`` setting, as the report and the logs name it."""
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
LABEL_SEPARATOR = "|"
ARCHIVE_MEMBER_DIR = "images"

NIH_IMAGE_COUNT = 112_120
# Rows of each metadata file in the NIH release (header excluded): the official lists split the 112,120 images.
NIH_METADATA_ROWS = {DATA_ENTRY: NIH_IMAGE_COUNT, BBOX_LIST: 984, TRAIN_VAL_LIST: 86_524, TEST_LIST: 25_596}
IMAGE_NAME_PATTERN = re.compile(r"\d{8}_\d{3}\.png")
GZIP_MAGIC = b"\x1f\x8b"
NIH_ARCHIVE_SIZES = (4_999,) + (10_000,) * 10 + (7_121,)
NIH_BOX_FOLDER = "https://nihcc.app.box.com/v/ChestXray-NIHCC"


@dataclass(frozen=True)
class Archive:
    """One official image archive: its file name, NIH Box direct link and published MD5."""

    name: str
    url: str
    md5: str


_BOX_IDS_AND_MD5 = (
    ("vfk49d74nhbxq3nqjg0900w5nvkorp5c", "fe8ed0a6961412fddcbb3603c11b3698"),
    ("i28rlmbvmfjbl8p2n3ril0pptcmcu9d1", "ab07a2d7cbe6f65ddd97b4ed7bde10bf"),
    ("f1t00wrtdk94satdfb9olcolqx20z2jp", "2301d03bde4c246388bad3876965d574"),
    ("0aowwzs5lhjrceb3qp67ahp0rd1l1etg", "9f1b7f5aae01b13f4bc8e2c44a4b8ef6"),
    ("v5e3goj22zr6h8tzualxfsqlqaygfbsn", "1861f3cd0ef7734df8104f2b0309023b"),
    ("asi7ikud9jwnkrnkj99jnpfkjdes7l6l", "456b53a8b351afd92a35bc41444c58c8"),
    ("jn1b4mw4n6lnh74ovmcjb8y48h8xj07n", "1075121ea20a137b87f290d6a4a5965e"),
    ("tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j", "b61f34cec3aa69f295fbb593cbd9d443"),
    ("upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj", "442a3caa61ae9b64e61c561294d1e183"),
    ("l6nilvfa9cg3s28tqv1qc1olm3gnz54p", "09ec81c4c31e32858ad8cf965c494b74"),
    ("hhq8fkdgvcari67vfhs7ppg2w6ni4jze", "499aefc67207a5a97692424cf5dbeed5"),
    ("ioqwiy20ihqwyr8pf4c24eazhh281pbu", "dc9fda1757c2de0032b63347a7d2895c"),
)


def archive_name(index: int) -> str:
    """``images_001.tar.gz`` for ``index`` 1."""
    return f"images_{index:03d}.tar.gz"


NIH_ARCHIVES = tuple(
    Archive(archive_name(i), f"https://nihcc.box.com/shared/static/{box_id}.gz", md5)
    for i, (box_id, md5) in enumerate(_BOX_IDS_AND_MD5, start=1)
)
ARCHIVE_NAMES = tuple(a.name for a in NIH_ARCHIVES)


def image_name(patient_id: int, follow_up: int) -> str:
    """NIH image file name: ``00000013_005.png`` for patient 13, follow-up 5."""
    return f"{patient_id:08d}_{follow_up:03d}.png"


def member_name(image: str) -> str:
    """Path of an image inside its archive."""
    return f"{ARCHIVE_MEMBER_DIR}/{image}"


def archive_sizes(n_images: int) -> tuple[int, ...]:
    """How many images each of the 12 archives holds for a release of ``n_images`` sorted images.

    For the full NIH release this is exactly :data:`NIH_ARCHIVE_SIZES`; a smaller mirror is cut in the same proportions
    (largest-remainder rounding), so that each archive is non-empty whenever ``n_images >= 12``.
    """
    if n_images == NIH_IMAGE_COUNT:
        return NIH_ARCHIVE_SIZES
    quotas = [n_images * s / NIH_IMAGE_COUNT for s in NIH_ARCHIVE_SIZES]
    sizes = [int(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: quotas[i] - sizes[i], reverse=True)
    for i in order[: n_images - sum(sizes)]:
        sizes[i] += 1
    if n_images >= len(sizes):  # no empty archive: move one image from the largest to each empty one
        for i, size in enumerate(sizes):
            if size == 0:
                sizes[max(range(len(sizes)), key=sizes.__getitem__)] -= 1
                sizes[i] = 1
    return tuple(sizes)


def assign_archives(images: Sequence[str]) -> dict[str, str]:
    """Map each image name to the archive that holds it: sorted names cut into :func:`archive_sizes` chunks."""
    ordered = sorted(images)
    out: dict[str, str] = {}
    start = 0
    for archive, size in zip(ARCHIVE_NAMES, archive_sizes(len(ordered)), strict=True):
        for image in ordered[start : start + size]:
            out[image] = archive
        start += size
    return out


# --------------------------------------------------------------------------------------------------------------------
# Content checks

# CSV header, values a row, and at most how many fields (the extra ones empty): the header's bracketed pairs are
# split by their commas like the rows; a box row's three trailing empty fields are allowed, not required.
_CSV_FORMATS = {
    DATA_ENTRY: (DATA_ENTRY_HEADER, len(DATA_ENTRY_COLUMNS), len(DATA_ENTRY_COLUMNS)),
    BBOX_LIST: (BBOX_HEADER, len(BBOX_COLUMNS), BBOX_FIELDS),
}


def content_problem(name: str, path: Path, *, release_rows: bool = False) -> str | None:
    """Why the file at ``path`` is not a valid NIH ``name``, or ``None`` when it is.

    Archives (:data:`ARCHIVE_NAMES`) must start with the gzip magic bytes. The two CSVs must start with their exact
    NIH header line (a UTF-8 byte order mark is allowed) and every further line must have the NIH number of values
    (11; 6 in the box list, where the header's three empty trailing fields may follow) and an image name
    (``00000001_000.png``) first; every line of the two lists must be an image name. Blank lines
    are ignored (the readers skip them too); only the box list may have no row. With ``release_rows`` the number of
    rows must also be the NIH release's (:data:`NIH_METADATA_ROWS`): the check for the official files, not for a
    mirror, which may hold a subset or the synthetic mirror. Other names are not checked.
    """
    path = Path(path)
    if name in ARCHIVE_NAMES:
        with path.open("rb") as fh:
            head = fh.read(len(GZIP_MAGIC))
        return None if head == GZIP_MAGIC else f"not a gzip archive (starts with {head!r}, not {GZIP_MAGIC!r})"
    if name not in NIH_METADATA_ROWS:
        return None
    header, values, fields = _CSV_FORMATS.get(name, (None, 0, 0))
    rows = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                return f"line {number} is not UTF-8 text: {raw[:60]!r}"
            if number == 1 and header is not None:
                if line.removeprefix("\ufeff") != header:
                    return f"line 1 is {line[:100]!r}, not the NIH header {header!r}"
                continue
            if not line.strip():
                continue
            first = line.split(",", 1)[0] if header is not None else line.strip()
            if IMAGE_NAME_PATTERN.fullmatch(first) is None:
                return f"line {number} is {line[:100]!r}, which does not start with an image name like 00000001_000.png"
            cells = line.split(",")
            if header is not None and not (values <= len(cells) <= fields and not any(cells[values:])):
                expected = f"{values}" if values == fields else f"{values} (then up to {fields - values} empty)"
                return f"line {number} has {len(cells)} fields, the NIH file {expected}: {line[:100]!r}"
            rows += 1
    if rows == 0 and name != BBOX_LIST:  # a subset may have no box, never no image
        return "the file is empty" if path.stat().st_size == 0 else "no image listed"
    expected = NIH_METADATA_ROWS[name]
    if release_rows and rows != expected:
        return f"{rows:,} rows, the NIH release has {expected:,} (a truncated or different file)"
    return None
