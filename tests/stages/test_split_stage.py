"""Stage split through the workspace: its inputs checked first, the official test list checked against the cohort."""

import json

import pandas as pd
import pytest

from cxrexplain.config import validate
from cxrexplain.data import layout
from cxrexplain.errors import CxrError
from cxrexplain.stages import split
from cxrexplain.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """A cache index of 120 patients with one or two images each, and an official test list of patients 1-20."""
    ws = Workspace(tmp_path)
    rows = [(f"{p:08d}_{f:03d}.png", p, (p + f) % 2) for p in range(1, 121) for f in range(1 + p % 2)]
    ws.cache.dir.mkdir(parents=True)
    pd.DataFrame(rows, columns=["image", "patient", "label"]).to_csv(ws.cache.index, index=False)
    ws.raw.mkdir(parents=True)
    (ws.raw / layout.TEST_LIST).write_text("".join(f"{image}\n" for image, p, _ in rows if p <= 20))
    return ws


def test_split_writes_the_table_and_its_metrics(ws):
    metrics = split.run(validate({"seed": 3, "split": {"official_test": True}}), ws)
    table = pd.read_csv(ws.split)
    assert len(table) == 180 and set(table.loc[table["split"] == "test", "patient"]) == set(range(1, 21))
    assert json.loads(ws.stage_metrics("split").read_text()) == metrics
    assert metrics["patients_in_two_splits"]["any"] == 0 and metrics["splits"]["test"]["images"] == 30


def test_an_official_test_list_matching_no_cached_image_is_an_error_naming_it(ws):
    (ws.raw / layout.TEST_LIST).write_text("00009999_000.png\n00009998_000.png\n")
    with pytest.raises(CxrError, match=rf"{ws.raw / layout.TEST_LIST}: none of its 2 image names"):
        split.run(validate({"split": {"official_test": True}}), ws)
    assert not ws.split.exists() and not ws.stage_metrics("split").exists()


def test_missing_inputs_name_the_stage_that_makes_them(ws):
    (ws.raw / layout.TEST_LIST).unlink()
    with pytest.raises(CxrError, match=r"missing input .*test_list\.txt.*dvc repro download"):
        split.run(validate({"split": {"official_test": True}}), ws)
    split.run(validate({}), ws)  # without the official list it is not needed
    ws.cache.index.unlink()
    with pytest.raises(CxrError, match=r"split: missing input .*index\.csv.*dvc repro sample"):
        split.run(validate({}), ws)
