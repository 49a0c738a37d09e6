"""The NIH layout facts: archive names, links, sizes and the exact CSV headers."""

import pandas as pd

from cxrexplain.data import layout, metadata


def test_twelve_archives_with_box_links_and_md5s():
    assert [a.name for a in layout.NIH_ARCHIVES] == [f"images_{i:03d}.tar.gz" for i in range(1, 13)]
    assert layout.NIH_ARCHIVES[0].url == "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz"
    assert layout.NIH_ARCHIVES[11].md5 == "dc9fda1757c2de0032b63347a7d2895c"
    assert all(len(a.md5) == 32 for a in layout.NIH_ARCHIVES)


def test_archive_sizes_are_nihs_for_the_full_release_and_proportional_otherwise():
    assert layout.archive_sizes(112_120) == (4_999,) + (10_000,) * 10 + (7_121,)
    assert sum(layout.NIH_ARCHIVE_SIZES) == layout.NIH_IMAGE_COUNT
    small = layout.archive_sizes(500)
    assert sum(small) == 500 and all(s > 0 for s in small)
    assert small[0] < small[1] and small[11] < small[1]
    assert sum(layout.archive_sizes(5)) == 5


def test_assign_archives_cuts_sorted_names_into_contiguous_chunks():
    names = [layout.image_name(p, f) for p in range(1, 200) for f in range(2)]
    assigned = layout.assign_archives(reversed(names))
    order = [assigned[n] for n in sorted(names)]
    assert order == sorted(order)  # contiguous and in archive order
    assert assigned[layout.image_name(1, 0)] == "images_001.tar.gz"
    assert assigned[layout.image_name(199, 1)] == "images_012.tar.gz"


def test_image_and_member_names():
    assert layout.image_name(13, 5) == "00000013_005.png"
    assert layout.member_name("00000013_005.png") == "images/00000013_005.png"


def test_data_entry_round_trip_with_exact_header(tmp_path):
    frame = pd.DataFrame(
        [("00000001_000.png", "Cardiomegaly|Emphysema", 0, 1, 58, "M", "PA", 2682, 2749, 0.143, 0.143)],
        columns=list(metadata.ENTRY_COLUMNS),
    )
    path = tmp_path / layout.DATA_ENTRY
    metadata.write_data_entry(frame, path)
    lines = path.read_text().splitlines()
    assert lines[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    assert lines[1] == "00000001_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2682,2749,0.143,0.143"
    back = metadata.read_data_entry(path)
    assert back.iloc[0].to_dict() == frame.iloc[0].to_dict()


def test_bbox_list_has_three_empty_trailing_columns(tmp_path):
    frame = pd.DataFrame(
        [("00013118_008.png", "Pneumonia", 225.08, 547.0, 86.5, 79.25)], columns=list(metadata.BOX_COLUMNS)
    )
    path = tmp_path / layout.BBOX_LIST
    metadata.write_bbox_list(frame, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    assert lines[1] == "00013118_008.png,Pneumonia,225.08,547.0,86.5,79.25,,,"
    assert len(lines[1].split(",")) == layout.BBOX_FIELDS == len(lines[0].split(","))
    back = metadata.read_bbox_list(path)
    assert back.iloc[0].to_dict() == frame.iloc[0].to_dict()


def test_reader_rejects_a_wrong_header_naming_the_file(tmp_path):
    import pytest

    from cxrexplain.errors import CxrError

    path = tmp_path / layout.DATA_ENTRY
    path.write_text("Image Index,Finding Labels\nx.png,No Finding\n")
    with pytest.raises(CxrError, match=r"Data_Entry_2017_v2020\.csv: unexpected header"):
        metadata.read_data_entry(path)
    with pytest.raises(CxrError, match="file not found"):
        metadata.read_bbox_list(tmp_path / "missing.csv")
