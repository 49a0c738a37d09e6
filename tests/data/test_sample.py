"""Cohort selection, decoding to 8-bit grayscale, and streaming archives into the cache (with rejects)."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrexplain.config import SampleParams
from cxrexplain.data import layout, metadata
from cxrexplain.data import sample as sample_module
from cxrexplain.data.sample import (
    BoxCounts,
    build_cache,
    check_rejects,
    fit_box,
    is_positive,
    load_cache,
    sample_cache,
    select_cohort,
    to_gray8,
)
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
    assert counts["negative"].requested == 12 and counts["negative"].selected == 12
    assert not counts["negative"].shortfall
    assert int(cohort["label"].sum()) == 12 and len(cohort) == 24
    assert list(cohort["image"]) == sorted(cohort["image"])
    assert not cohort["labels"].str.contains("Effusion").any()


def test_only_view_and_unbalanced_options(entries):
    cohort, counts = select_cohort(entries, positive="only", views=["PA"], per_class=30, balance=False, seed=0)
    assert counts["pneumonia"].available == 8 and counts["pneumonia"].selected == 8
    assert counts["negative"].available == 40 and counts["negative"].selected == 30
    assert set(cohort.loc[cohort["label"] == 1, "labels"]) == {"Pneumonia"}
    assert set(cohort["view"]) == {"PA"}


@pytest.mark.parametrize("positive", ["contains", "only"])
def test_all_others_negatives_are_every_image_without_pneumonia(entries, positive):
    """One-vs-rest (CheXNet's setting): No Finding and other findings are negatives; an image with Pneumonia among
    other labels is never a negative (with ``positive: only`` it is in neither class)."""
    cohort, counts = select_cohort(
        entries,
        positive=positive,
        views=["PA", "AP"],
        per_class=5000,
        balance=False,
        seed=0,
        negatives="all_others",
    )
    negatives = cohort[cohort["label"] == 0]
    assert counts["negative"].available == 47 and len(negatives) == 47  # 40 No Finding + 7 Effusion
    assert set(negatives["labels"]) == {"No Finding", "Effusion"}
    assert not negatives["labels"].str.contains("Pneumonia").any()
    assert counts["pneumonia"].selected == (12 if positive == "contains" else 8)
    study = select_cohort(entries, positive=positive, views=["PA", "AP"], per_class=5000, balance=False, seed=0)[0]
    assert set(study.loc[study["label"] == 0, "labels"]) == {"No Finding"}  # the default: the study's task
    with pytest.raises(ValueError, match="negatives must be"):
        select_cohort(entries, positive=positive, views=["PA"], per_class=5, balance=False, seed=0, negatives="x")


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


def test_16bit_images_are_windowed_to_robust_percentiles_not_min_max():
    rng = np.random.default_rng(0)
    values = rng.integers(1000, 5001, size=(64, 64)).astype(np.uint16)  # the anatomy: 1000..5000
    values[0, :5] = 65535  # five hot pixels (0.12 %) ...
    values[1, :5] = 0  # ... and five dead ones
    pixels, size = to_gray8(png(values), 64)
    assert size == (64, 64)
    lo, hi = np.percentile(values.astype(float), [0.5, 99.5])
    assert 1000 <= lo < 1100 and 4900 < hi <= 5000  # the window ignores the outliers
    expected = np.rint((np.clip(values.astype(float), lo, hi) - lo) * 255 / (hi - lo)).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    assert (pixels[0, :5] == 255).all() and (pixels[1, :5] == 0).all()
    body = pixels[2:]
    assert np.percentile(body, 1) < 5 and np.percentile(body, 99) > 250  # min-max would squeeze it into 16 levels
    assert len(np.unique(body)) == 256


def test_a_16bit_image_with_one_value_almost_everywhere_uses_its_full_range():
    values = np.full((32, 32), 700, np.uint16)
    values[0, :3] = 900  # 0.3 %: the 0.5-99.5 % window is empty
    pixels, _ = to_gray8(png(values), 32)
    assert (pixels[0, :3] == 255).all() and (pixels[1:] == 0).all()
    assert (to_gray8(png(np.full((8, 8), 700, np.uint16)), 8)[0] == 0).all()


def test_fit_box_keeps_clips_or_drops():
    assert fit_box((10, 20, 30, 40), 64, 64) == ((10.0, 20.0, 30.0, 40.0), "kept")
    assert fit_box((50, -4, 30, 10), 64, 64) == ((50.0, 0.0, 14.0, 6.0), "clipped")
    assert fit_box((70, 10, 5, 5), 64, 64) == (None, "dropped")  # wholly outside
    assert fit_box((10, 10, 0, 5), 64, 64) == (None, "dropped")  # no width
    assert fit_box((0, 0, 64, 64), 64, 64) == ((0.0, 0.0, 64.0, 64.0), "kept")


def test_boxes_outside_the_image_are_clipped_or_dropped_counted_and_warned(tmp_path, entries, caplog):
    raw, out = tmp_path / "raw", tmp_path / "cache"
    raw.mkdir()
    out.mkdir()
    cohort, _ = select_cohort(entries, positive="contains", views=["PA", "AP"], per_class=100, balance=True, seed=0)
    archive_of = layout.assign_archives(entries["image"].tolist())
    write_archives(raw, {i: png(np.full((64, 64), 9, np.uint8)) for i in cohort["image"]}, archive_of)
    first, second = cohort.loc[cohort["label"] == 1, "image"].iloc[:2]
    boxes = pd.DataFrame(
        [
            (first, "Pneumonia", 8.0, 16.0, 32.0, 16.0),  # inside
            (first, "Pneumonia", 48.0, 56.0, 32.0, 16.0),  # partly outside: clipped to 16 x 8
            (second, "Pneumonia", 100.0, 10.0, 8.0, 8.0),  # wholly outside: dropped
        ],
        columns=list(metadata.BOX_COLUMNS),
    )
    with caplog.at_level("WARNING", logger="cxrexplain.sample"):
        result = build_cache(raw, cohort, archive_of, boxes, out, image_size=32, show_progress=False)
    assert result.boxes == BoxCounts(kept=1, clipped=1, dropped=1)
    boxes_of = dict(zip(result.index["image"], result.index["boxes"], strict=True))
    assert json.loads(boxes_of[first]) == [[4.0, 8.0, 16.0, 8.0], [24.0, 28.0, 8.0, 4.0]]  # 64 px -> 32 px
    assert json.loads(boxes_of[second]) == []
    warned = [r.getMessage() for r in caplog.records]
    assert any(first in m and "clipped" in m for m in warned) and any(second in m and "dropped" in m for m in warned)


def test_an_image_in_no_archive_is_a_reject_with_that_reason(tmp_path, entries):
    raw, out = tmp_path / "raw", tmp_path / "cache"
    raw.mkdir()
    out.mkdir()
    cohort, _ = select_cohort(entries, positive="contains", views=["PA", "AP"], per_class=100, balance=True, seed=0)
    archive_of = layout.assign_archives(entries["image"].tolist())
    write_archives(raw, {i: png(np.full((8, 8), 3, np.uint8)) for i in cohort["image"]}, archive_of)
    lost = cohort["image"].iloc[4]
    located = {image: archive for image, archive in archive_of.items() if image != lost}
    empty_boxes = pd.DataFrame(columns=list(metadata.BOX_COLUMNS))
    result = build_cache(raw, cohort, located, empty_boxes, out, image_size=8, show_progress=False)
    assert result.rejects.to_dict("records") == [{"image": lost, "archive": "", "reason": "not in any archive"}]
    assert lost not in set(result.index["image"]) and len(result.index) == len(cohort) - 1


def test_more_than_one_percent_rejected_is_an_error():
    check_rejects([("a.png", "not in any archive")], 100, Path("data/raw"))  # 1 %: tolerated
    check_rejects([], 0, Path("data/raw"))
    with pytest.raises(CxrError, match=r"data/raw: 2 of the 100 cohort images cannot be cached \(2\.0%.*a\.png: x"):
        check_rejects([("a.png", "x"), ("b.png", "y")], 100, Path("data/raw"))


def test_sampling_a_cohort_the_archives_do_not_hold_fails_before_decoding(tmp_path, entries, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "cache"
    raw.mkdir()
    out.mkdir()
    metadata.write_data_entry(entries, raw / layout.DATA_ENTRY)
    metadata.write_bbox_list(pd.DataFrame(columns=list(metadata.BOX_COLUMNS)), raw / layout.BBOX_LIST)
    images = sorted(entries["image"])
    half = {i: png(np.full((8, 8), 3, np.uint8)) for i in images[: len(images) // 2]}
    write_archives(raw, half, dict.fromkeys(half, "images_001.tar.gz"))
    monkeypatch.setattr(sample_module, "build_cache", lambda *a, **k: pytest.fail("decoded although most are missing"))
    p = SampleParams(per_class=100, balance=False, image_size=32)
    with pytest.raises(CxrError, match=r"cohort images cannot be cached .* 00000\d{3}_000\.png: not in any archive"):
        sample_cache(raw, p, out, seed=0, show_progress=False)
    assert list(out.iterdir()) == []


def test_an_oversized_member_is_rejected_unread(tmp_path, entries, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "cache"
    raw.mkdir()
    out.mkdir()
    cohort, _ = select_cohort(entries, positive="contains", views=["PA", "AP"], per_class=100, balance=True, seed=0)
    archive_of = layout.assign_archives(entries["image"].tolist())
    small, large = png(np.full((8, 8), 3, np.uint8)), png(np.random.default_rng(1).integers(0, 255, (64, 64), np.uint8))
    big = cohort["image"].iloc[2]
    write_archives(raw, {i: large if i == big else small for i in cohort["image"]}, archive_of)
    monkeypatch.setattr(sample_module, "MAX_MEMBER_BYTES", len(small) + 100)  # the forked workers inherit it
    empty_boxes = pd.DataFrame(columns=list(metadata.BOX_COLUMNS))
    result = build_cache(raw, cohort, archive_of, empty_boxes, out, image_size=8, workers=2, show_progress=False)
    assert result.rejects["image"].tolist() == [big]
    assert f"member of {len(large):,} bytes, more than" in result.rejects["reason"].iloc[0]
