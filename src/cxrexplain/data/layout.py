"""The NIH ChestX-ray14 file layout: file names, CSV headers, archive links and checksums.

Everything that must be byte-for-byte like the real dataset lives here, so the synthetic mirror, the downloader and the
sampler agree by construction. Facts verified on the NIH release (Box folder ``ChestXray-NIHCC``):

* 12 archives ``images_001.tar.gz`` … ``images_012.tar.gz`` holding
  ``images/<8-digit patient>_<3-digit follow-up>.png``, sorted by image name and cut into 4,999, then
  10 × 10,000, then 7,121 images (112,120 in all);
* ``Data_Entry_2017_v2020.csv``, ``BBox_List_2017.csv`` (3 empty trailing columns), ``train_val_list.txt`` and
  ``test_list.txt`` (one image name per line, patient-wise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
