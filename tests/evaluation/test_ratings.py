"""Readers' ratings: the CSV per reader, Cohen's and Fleiss' κ against scikit-learn and statsmodels, the summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

from cxrexplain.errors import CxrError
from cxrexplain.evaluation import ratings as rt
from cxrexplain.explain.measures.statistics import bootstrap_ci

CATEGORIES = list(rt.RATINGS)


def _row(reader="ann", image="a.png", method="gradcam", rating="on", artefact="", note="", arch="resnet18", seed=42):
    return {
        "reader": reader,
        "arch": arch,
        "seed": seed,
        "image": image,
        "method": method,
        "rating": rating,
        "artefact": artefact,
        "note": note,
        "blinded": "False",
        "time": "2026-01-01T00:00:00+00:00",
    }


# ------------------------------------------------------------------------------------------------------------ κ


def test_cohen_kappa_by_hand() -> None:
    # p_o = 35/50 = 0.7, p_e = 0.5·0.6 + 0.5·0.4 = 0.5: κ = 0.4
    assert rt.cohen_kappa(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    assert rt.cohen_kappa(np.array([[7, 0], [0, 3]])) == pytest.approx(1.0)
    assert math.isnan(rt.cohen_kappa(np.array([[9, 0], [0, 0]])))  # one category throughout: undefined
    assert math.isnan(rt.cohen_kappa(np.zeros((2, 2))))


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.choice(CATEGORIES, size=40)
    b = np.where(rng.random(40) < 0.5, a, rng.choice(CATEGORIES, size=40))  # agreeing more than chance
    table = rt.contingency(a, b, CATEGORIES)
    assert table.sum() == 40
    assert rt.cohen_kappa(table) == pytest.approx(cohen_kappa_score(a, b, labels=CATEGORIES), abs=1e-12)


def test_fleiss_kappa_by_hand() -> None:
    """Fleiss' κ of the worked example in Wikipedia's "Fleiss' kappa" (10 items, 14 raters, 5 categories): 0.210."""
    counts = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert rt.fleiss_kappa(counts) == pytest.approx(0.20993, abs=5e-5)
    with pytest.raises(ValueError, match="same number"):
        rt.fleiss_kappa(np.array([[2, 0], [1, 2]]))


@pytest.mark.parametrize(("seed", "raters"), [(0, 2), (1, 3), (2, 5)])
def test_fleiss_kappa_matches_statsmodels(seed: int, raters: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, size=30)
    votes = np.where(rng.random((30, raters)) < 0.6, truth[:, None], rng.integers(0, 4, size=(30, raters)))
    counts = np.stack([(votes == c).sum(axis=1) for c in range(4)], axis=1)
    assert rt.fleiss_kappa(counts) == pytest.approx(statsmodels_fleiss(counts, method="fleiss"), abs=1e-12)


def test_inter_reader_cohen_for_two_fleiss_for_more() -> None:
    rng = np.random.default_rng(3)
    maps = [(f"{i}.png", m) for i in range(15) for m in ("gradcam", "layercam")]
    votes = {r: rng.choice(CATEGORIES, size=len(maps)) for r in ("ann", "bo", "cy")}
    votes["bo"] = np.where(rng.random(len(maps)) < 0.5, votes["ann"], votes["bo"])
    rows = [
        _row(reader=r, image=i, method=m, rating=v) for r in votes for (i, m), v in zip(maps, votes[r], strict=True)
    ]
    table = pd.DataFrame(rows[:-1])  # cy left one map unrated: it is not shared by every reader
    assert rt.inter_reader(table[table["reader"] == "ann"]) is None
    two = rt.inter_reader(table[table["reader"] != "cy"])
    assert two["statistic"] == "Cohen's kappa" and two["maps"] == len(maps)
    assert two["kappa"] == pytest.approx(cohen_kappa_score(votes["ann"], votes["bo"], labels=CATEGORIES))
    assert two["agreement"] == pytest.approx(np.mean(votes["ann"] == votes["bo"]))
    three = rt.inter_reader(table)
    assert three["statistic"] == "Fleiss' kappa" and three["readers"] == 3 and three["maps"] == len(maps) - 1
    wide = np.stack([votes[r][:-1] for r in ("ann", "bo", "cy")], axis=1)
    counts = np.stack([(wide == c).sum(axis=1) for c in CATEGORIES], axis=1)
    assert three["kappa"] == pytest.approx(statsmodels_fleiss(counts, method="fleiss"))


# --------------------------------------------------------------------------------------------------------- files


def test_a_reader_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "ann.csv"
    table = rt.upsert(rt.empty(), _row(image="b.png", note='on the "left", 2 lines\nsecond'))
    table = rt.upsert(table, _row(image="a.png", rating="artefact", artefact="clavicles"))
    table = rt.upsert(table, _row(image="b.png", rating="off"))  # replaces b.png's first rating
    rt.write_reader(path, table)
    back = rt.read_reader(path)
    assert back[["image", "rating", "artefact", "note"]].values.tolist() == [
        ["a.png", "artefact", "clavicles", ""],
        ["b.png", "off", "", ""],
    ]
    assert back["seed"].tolist() == [42, 42]
    assert rt.remove(back, _row(image="a.png"))["image"].tolist() == ["b.png"]
    assert rt.read_reader(tmp_path / "nobody.csv").empty


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rating": "good"}, "rating 'good'"),
        ({"rating": "artefact"}, "names which one"),
        ({"artefact": "ribs"}, "only 'artefact' takes one"),
        ({"reader": "bo"}, "reader 'bo' in the file of reader 'ann'"),
        ({"seed": "x"}, "seed 'x'"),
        ({"seed": "²"}, "seed '²'"),
        ({"blinded": "maybe"}, "blinded"),
    ],
)
def test_a_bad_reader_file_names_the_file_and_line(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "ann.csv"
    pd.DataFrame([_row(image="a.png"), {**_row(image="b.png"), **change}]).to_csv(path, index=False)
    with pytest.raises(CxrError, match=rf"ann\.csv, line 3: .*{message}"):
        rt.read_reader(path)


def test_bad_files_and_reader_ids(tmp_path: Path) -> None:
    path = tmp_path / "ann.csv"
    pd.DataFrame([_row(), _row()]).to_csv(path, index=False)
    with pytest.raises(CxrError, match="rated twice"):
        rt.read_reader(path)
    pd.DataFrame([_row()]).drop(columns="note").to_csv(path, index=False)
    with pytest.raises(CxrError, match="columns"):
        rt.read_reader(path)
    for bad in ("", "../x", "a/b", ".hidden", "x" * 41, "é"):
        with pytest.raises(CxrError, match="reader id"):
            rt.check_reader(bad)
    assert rt.check_reader("reader_2-b") == "reader_2-b"


# ------------------------------------------------------------------------------------------------------ summary


def test_summarise_by_hand() -> None:
    """Five images of four patients; two readers rate gradcam's maps, one reader layercam's."""
    images = pd.DataFrame(
        {
            "image": ["p1a.png", "p1b.png", "p2.png", "p3.png", "n4.png"],
            "patient": ["1", "1", "2", "3", "4"],
            "label": [1, 1, 1, 1, 0],
        }
    )
    pointing = {
        ("resnet18", 42): pd.DataFrame(
            {"image": ["p1a.png", "p1b.png", "p2.png"], "method": ["gradcam"] * 3, "pointing": [1.0, 0.0, 1.0]}
        )
    }
    rows = [
        _row("ann", "p1a.png", rating="on"),
        _row("ann", "p1b.png", rating="partly"),
        _row("ann", "p2.png", rating="on"),
        _row("ann", "p3.png", rating="off"),
        _row("ann", "n4.png", rating="artefact", artefact="ecg_leads"),
        _row("bo", "p1a.png", rating="on"),
        _row("bo", "p1b.png", rating="off"),
        _row("bo", "p2.png", rating="artefact", artefact="ribs"),
        _row("bo", "p3.png", rating="off"),
        _row("ann", "p1a.png", method="layercam", rating="on"),
    ]
    summary = rt.summarise(pd.DataFrame(rows), images, pointing, n=200, seed=0)
    assert summary["readers"] == ["ann", "bo"] and summary["ratings"] == 10
    model = summary["models"]["resnet18/seed42"]
    grad = model["methods"]["gradcam"]
    assert (grad["ratings"], grad["readers"], grad["images"]) == (9, 2, 5)
    # on the finding: 3 of the 8 ratings of Pneumonia images (n4.png has no finding), 3 patients
    on = grad["on_finding"]
    assert (on["mean"], on["n"], on["clusters"]) == (pytest.approx(3 / 8), 8, 3)
    values = [1, 0, 1, 0, 1, 0, 0, 0]  # ann p1a p1b p2 p3, bo p1a p1b p2 p3
    expected = bootstrap_ci(values, n=200, seed=0, clusters=["1", "1", "2", "3", "1", "1", "2", "3"])
    assert (on["low"], on["high"]) == pytest.approx(expected[1:])
    assert grad["on_or_partly"]["mean"] == pytest.approx(4 / 8)
    assert grad["artefact"]["mean"] == pytest.approx(2 / 9) and grad["artefact"]["n"] == 9
    assert grad["artefacts"] == {"ribs": 1, "clavicles": 0, "ecg_leads": 1, "image_edges": 0}
    # pointing hit × rated on: ann p1a (hit, on) p1b (miss, not) p2 (hit, on); bo p1a (hit, on) p1b (miss, not)
    # p2 (hit, not on)
    assert grad["pointing"]["table"] == [[3, 1], [0, 2]] and grad["pointing"]["n"] == 6
    assert grad["pointing"]["agreement"] == pytest.approx(5 / 6)
    assert grad["pointing"]["kappa"] == pytest.approx(rt.cohen_kappa(np.array([[3, 1], [0, 2]])))
    assert model["methods"]["layercam"]["pointing"] == {
        "n": 0,
        "table": [[0, 0], [0, 0]],
        "agreement": None,
        "kappa": None,
    }
    # the maps both readers rated: gradcam's of the four Pneumonia images (not n4.png, not layercam's)
    inter = model["inter_reader"]
    assert inter["maps"] == 4 and inter["statistic"] == "Cohen's kappa"
    assert inter["agreement"] == pytest.approx(2 / 4)
    ann, bo = ["on", "partly", "on", "off"], ["on", "off", "artefact", "off"]
    assert inter["kappa"] == pytest.approx(cohen_kappa_score(ann, bo, labels=CATEGORIES))
    with pytest.raises(CxrError, match=r"not in the cache index: zz\.png"):
        rt.summarise(pd.DataFrame([_row("ann", "zz.png")]), images, pointing, n=10, seed=0)
    assert rt.summarise(rt.empty(), images, pointing, n=10, seed=0) == {"readers": [], "ratings": 0, "models": {}}
