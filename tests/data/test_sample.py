"""Cohort selection, decoding to 8-bit grayscale, and streaming archives into the cache (with rejects)."""

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrexplain.data import layout, metadata
from cxrexplain.data.sample import build_cache, is_positive, load_cache, select_cohort, to_gray8
from cxrexplain.errors import CxrError


def entry(image, labels, patient, view="PA"):
    return (image, labels, 0, patient, 40, "M", view, 2500, 2500, 0.143, 0.143)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_is_positive_contains_and_only():
    assert is_positive("Pneumonia", "contains") and is_positive("Pneumonia", "only")
    assert is_positive("Effusion|Pneumonia", "contains")
    assert not is_positive("Effusion|Pneumonia", "only")
    assert not is_positive("No Finding", "contains")


@pytest.fixture
def entries():
    rows = [entry(f"{i:08d}_000.png", "Pneumonia", i) for i in range(1, 9)]  # 8 Pneumonia only
    rows += [entry(f"{i:08d}_000.png", "Infiltration|Pneumonia", i, "AP") for i in range(9, 13)]  # 4 multi-label, AP
    rows += [entry(f"{i:08d}_000.png", "No Finding", i) for i in range(13, 53)]  # 40 No Finding
    rows += [entry(f"{i:08d}_000.png", "Effusion", i) for i in range(53, 60)]  # 7 other findings, never taken
    return pd.DataFrame(rows, columns=list(metadata.ENTRY_COLUMNS))


def test_shortfall_takes_all_positives_and_matches_negatives(entries):
    cohort, counts = select_cohort(
        entries, positive="contains", views=["PA", "AP"], per_class=5000, balance=True, seed=0
    )
    assert counts["pneumonia"].requested == 5000
    assert counts["pneumonia"].available == 12 and counts["pneumonia"].selected == 12
    assert counts["pneumonia"].shortfall
    assert counts["no_finding"].requested == 12 and counts["no_finding"].selected == 12
    assert not counts["no_finding"].shortfall
    assert int(cohort["label"].sum()) == 12 and len(cohort) == 24
    assert list(cohort["image"]) == sorted(cohort["image"])
    assert not cohort["labels"].str.contains("Effusion").any()


def test_only_view_and_unbalanced_options(entries):
    cohort, counts = select_cohort(entries, positive="only", views=["PA"], per_class=30, balance=False, seed=0)
    assert counts["pneumonia"].available == 8 and counts["pneumonia"].selected == 8
    assert counts["no_finding"].available == 40 and counts["no_finding"].selected == 30
    assert set(cohort.loc[cohort["label"] == 1, "labels"]) == {"Pneumonia"}
    assert set(cohort["view"]) == {"PA"}


def test_selection_is_deterministic_for_a_seed(entries):
    def picked(seed):
        return select_cohort(entries, positive="contains", views=["PA", "AP"], per_class=5, balance=False, seed=seed)[0]

    assert picked(3)["image"].tolist() == picked(3)["image"].tolist()
    assert picked(3)["image"].tolist() != picked(4)["image"].tolist()


def test_to_gray8_keeps_8bit_and_resizes():
    pixels, size = to_gray8(png(np.full((64, 48), 77, np.uint8)), 32)
    assert size == (48, 64)
    assert pixels.shape == (32, 32) and pixels.dtype == np.uint8
    assert (pixels == 77).all()


def test_to_gray8_tolerates_rgba_and_16bit():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 100, 100, 100, 255
    pixels, _ = to_gray8(png(rgba, "RGBA"), 16)
    assert (pixels == 100).all()
    ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16 + 1000).astype(np.uint16)
    pixels, _ = to_gray8(png(ramp), 16)  # 16-bit: min-max rescaled to 0..255
    assert pixels.min() == 0 and pixels.max() == 255
    assert (np.diff(pixels.ravel().astype(int)) >= 0).all()


def test_to_gray8_raises_on_truncated_and_garbage():
    data = png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(OSError, match="truncated"):
        to_gray8(data[: len(data) // 2], 32)
    with pytest.raises(OSError, match="cannot identify image file"):
        to_gray8(b"not a png at all", 32)


def write_archives(raw, members: dict[str, bytes], archive_of: dict[str, str]):
    by_archive: dict[str, list[str]] = {}
    for name in sorted(members):
        by_archive.setdefault(archive_of[name], []).append(name)
    for archive, names in by_archive.items():
        with tarfile.open(raw / archive, "w:gz") as tar:
            for name in names:
                info = tarfile.TarInfo(layout.member_name(name))
                info.size = len(members[name])
                tar.addfile(info, io.BytesIO(members[name]))


def test_build_cache_streams_members_scales_boxes_and_rejects_bad_ones(tmp_path, entries):
    raw, out = tmp_path / "raw", tmp_path / "cache"
    raw.mkdir()
    out.mkdir()
    cohort, _ = select_cohort(entries, positive="contains", views=["PA", "AP"], per_class=100, balance=True, seed=0)
    archive_of = layout.assign_archives(entries["image"].tolist())
    members = {}
    for n, image in enumerate(cohort["image"]):
        members[image] = png(np.full((64, 64), n + 1, np.uint8))
    corrupt, missing = cohort["image"].iloc[3], cohort["image"].iloc[5]
    members[corrupt] = members[corrupt][:40]  # truncated PNG
    del members[missing]
    write_archives(raw, members, archive_of)
    boxes = pd.DataFrame(
        [
            (cohort["image"].iloc[0], "Pneumonia", 8.0, 16.0, 32.0, 16.0),
            (cohort["image"].iloc[0], "Effusion", 0, 0, 4, 4),
        ],
        columns=list(metadata.BOX_COLUMNS),
    )
    result = build_cache(raw, cohort, archive_of, boxes, out, image_size=32, workers=2, show_progress=False)

    assert set(result.rejects["image"]) == {corrupt, missing}
    reasons = dict(zip(result.rejects["image"], result.rejects["reason"], strict=True))
    assert reasons[corrupt].startswith("unreadable image")
    assert reasons[missing] == f"not found in {archive_of[missing]}"
    images, index = load_cache(out)
    assert len(index) == len(cohort) - 2 == images.shape[0]
    assert images.shape[1:] == (32, 32)
    original_position = {image: n for n, image in enumerate(cohort["image"])}
    for row, image in zip(index["row"], index["image"], strict=True):
        assert (images[row] == original_position[image] + 1).all()  # each row holds its own image
    first = index.iloc[0]
    assert json.loads(first["boxes"]) == [[4.0, 8.0, 16.0, 8.0]]  # Pneumonia box only, 64 px -> 32 px
    assert (first["width"], first["height"]) == (64, 64)
    assert set(index["archive"]) <= set(layout.ARCHIVE_NAMES)
    assert pd.read_csv(out / "rejects.csv").shape == (2, 3)


def test_unreadable_archive_rejects_its_remaining_members(tmp_path, entries):
    raw, out = tmp_path / "raw", tmp_path / "cache"
    raw.mkdir()
    out.mkdir()
    cohort, _ = select_cohort(entries, positive="contains", views=["PA", "AP"], per_class=100, balance=True, seed=0)
    archive_of = layout.assign_archives(entries["image"].tolist())
    write_archives(raw, {i: png(np.full((8, 8), 5, np.uint8)) for i in cohort["image"]}, archive_of)
    victim = archive_of[cohort["image"].iloc[-1]]
    data = (raw / victim).read_bytes()
    (raw / victim).write_bytes(data[: len(data) // 2])  # cut gzip stream
    result = build_cache(
        raw,
        cohort,
        archive_of,
        pd.DataFrame(columns=list(metadata.BOX_COLUMNS)),
        out,
        image_size=8,
        workers=1,
        show_progress=False,
    )
    lost = set(cohort.loc[cohort["image"].map(archive_of) == victim, "image"])
    assert lost and len(result.rejects) > 0 and set(result.rejects["image"]) <= lost
    assert result.rejects["reason"].str.contains("archive unreadable").all()
    assert len(result.index) == len(cohort) - len(result.rejects)


def test_missing_archive_is_an_error_before_any_work(tmp_path, entries):
    cohort, _ = select_cohort(entries, positive="contains", views=["PA", "AP"], per_class=100, balance=True, seed=0)
    archive_of = layout.assign_archives(entries["image"].tolist())
    with pytest.raises(CxrError, match=r"missing archive\(s\) images_0"):
        build_cache(
            tmp_path,
            cohort,
            archive_of,
            pd.DataFrame(columns=list(metadata.BOX_COLUMNS)),
            tmp_path,
            image_size=8,
            show_progress=False,
        )
