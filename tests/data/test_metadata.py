"""The NIH metadata readers: exact headers, and a clear error naming file, line and column for a bad value."""

import pandas as pd
import pytest

from cxrexplain.data import layout, metadata
from cxrexplain.errors import CxrError

GOOD = "00000001_000.png,Pneumonia,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,"


def write(tmp_path, *rows: str):
    path = tmp_path / layout.BBOX_LIST
    path.write_text("\n".join([layout.BBOX_HEADER, *rows]) + "\n")
    return path


def test_box_list_reads_numbers_as_floats(tmp_path):
    frame = metadata.read_bbox_list(write(tmp_path, GOOD, "00000002_000.png,Effusion,0,1,2,3,,,"))
    assert tuple(frame.columns) == metadata.BOX_COLUMNS
    assert frame["x"].dtype == float and frame.loc[0, "x"] == pytest.approx(225.084745762712)
    assert frame.loc[1].tolist() == ["00000002_000.png", "Effusion", 0.0, 1.0, 2.0, 3.0]


def test_box_list_round_trips_through_the_writer(tmp_path):
    boxes = pd.DataFrame([("00000003_001.png", "Mass", 1.5, 2.25, 30.0, 40.0)], columns=list(metadata.BOX_COLUMNS))
    metadata.write_bbox_list(boxes, tmp_path / layout.BBOX_LIST)
    pd.testing.assert_frame_equal(metadata.read_bbox_list(tmp_path / layout.BBOX_LIST), boxes)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("00000002_000.png,Pneumonia,12,abc,10,10,,,", r"line 3, column 'y': 'abc' is not a finite number"),
        ("00000002_000.png,Pneumonia,12,7,10,,,,", r"line 3, column 'h\]': '' is not a finite number"),
        ("00000002_000.png,Pneumonia,inf,7,10,10,,,", r"line 3, column 'Bbox \[x': 'inf' is not a finite number"),
        (",Pneumonia,1,7,10,10,,,", r"line 3, column 'Image Index': empty"),
    ],
)
def test_a_bad_value_in_the_box_list_names_file_line_and_column(tmp_path, bad, message):
    path = write(tmp_path, GOOD, bad)
    with pytest.raises(CxrError, match=rf"{layout.BBOX_LIST}: {message}"):
        metadata.read_bbox_list(path)
