"""Stage ratings on ratings the viewer's sessions write (two readers) over a small workspace, and the report section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cxrexplain.config import validate
from cxrexplain.errors import CxrError
from cxrexplain.evaluation import ratings as rt
from cxrexplain.evaluation.document import Document
from cxrexplain.evaluation.report import ratings_section
from cxrexplain.stages import ratings
from cxrexplain.viewer.data import load_run
from cxrexplain.viewer.server import Session
from inprocess import cli
from viewer_workspace import ARCH, ATTRIBUTION_ROWS, ATTRIBUTIONS, CAMS, IMAGES, METHODS, SEED, make_workspace

PARAMS = validate({"explain": {"bootstrap": 50}})


def test_no_ratings_no_readers_no_section(tmp_path) -> None:
    ws = make_workspace(tmp_path)
    summary = ratings.run(PARAMS, ws=ws)
    assert summary == {"readers": [], "ratings": 0, "models": {}}
    assert json.loads(ws.ratings_metrics.read_text()) == summary
    doc = Document("r")
    ratings_section(doc, summary)
    ratings_section(doc, None)
    assert doc.blocks == []


def test_two_readers_ratings_summarised_and_reported(tmp_path) -> None:
    ws = make_workspace(tmp_path)
    run = load_run(ws, ARCH, SEED)
    rng = np.random.default_rng(0)
    given = {}
    for reader in ("ann", "bo"):  # bo reads blinded; the viewer's first rating, then the rest of the file at once
        session = Session(run, reader, ws.ratings.reader(reader), blinded=reader == "bo")
        session.rate({"item": 0, "slot": 0, "rating": "on"})
        table = rt.read_reader(session.file)
        for item in range(len(IMAGES)):
            for slot in range(len(session.slots[item])):  # every map of the image (saliency only on some)
                rating = "on" if (item, slot) == (0, 0) else str(rng.choice(list(rt.RATINGS)))
                artefact = "ribs" if rating == "artefact" else ""
                method = session.method(item, slot)
                row = table.iloc[0].to_dict() | {"image": IMAGES[item][0], "method": method}
                table = rt.upsert(table, row | {"rating": rating, "artefact": artefact})
                given[(reader, IMAGES[item][0], method)] = rating
        rt.write_reader(session.file, table)
    summary = ratings.run(PARAMS, ws=ws)
    maps = len(IMAGES) * len(CAMS) + len(ATTRIBUTION_ROWS) * len(ATTRIBUTIONS)
    assert summary["readers"] == ["ann", "bo"] and summary["ratings"] == 2 * maps
    model = summary["models"][f"{ARCH}/seed{SEED}"]
    per_image = pd.read_csv(ws.explain(ARCH, SEED).per_image)
    assert set(model["methods"]) == set(METHODS)  # the captum method is summarised like the CAMs
    for method in METHODS:
        m = model["methods"][method]
        rated = [k for k, i in enumerate(IMAGES) if method in CAMS or k in ATTRIBUTION_ROWS]
        positives = [IMAGES[k][0] for k in rated if IMAGES[k][2] == 1]
        on = [given[(r, image, method)] == "on" for r in ("ann", "bo") for image in positives]
        assert m["on_finding"]["mean"] == pytest.approx(np.mean(on)) and m["on_finding"]["n"] == len(on)
        assert m["on_finding"]["clusters"] == len({IMAGES[k][1] for k in rated if IMAGES[k][2] == 1})
        hits = per_image[(per_image["method"] == method) & per_image["pointing"].notna()]
        table = np.zeros((2, 2), dtype=int)
        for reader in ("ann", "bo"):
            for image, hit in zip(hits["image"], hits["pointing"], strict=True):
                table[0 if hit else 1, 0 if given[(reader, image, method)] == "on" else 1] += 1
        assert m["pointing"]["table"] == table.tolist()
    keys = sorted({(image, method) for _, image, method in given})
    ann, bo = ([given[(reader, *key)] for key in keys] for reader in ("ann", "bo"))
    inter = model["inter_reader"]
    assert inter["maps"] == len(ann) and inter["kappa"] == pytest.approx(cohen_kappa_score(ann, bo))

    params = tmp_path / "params.yaml"  # `cxrexplain ratings`, as DVC runs it, writes the same summary
    params.write_text("seed: 42\nexplain:\n  bootstrap: 50\n")
    assert cli("ratings", cwd=tmp_path).returncode == 0
    assert json.loads(ws.ratings_metrics.read_text()) == json.loads(json.dumps(summary))

    doc = Document("r")
    ratings_section(doc, summary)
    markdown = doc.markdown(tmp_path)
    assert "### Reader study: the maps rated" in markdown
    on = model["methods"]["gradcam"]["on_finding"]
    assert f"| {ARCH}/seed{SEED} | gradcam | {len(IMAGES) * 2} (2) | {on['mean']:.2f} (" in markdown
    assert f"Cohen's kappa {inter['kappa']:.3f} on {len(ann)} maps of 2 readers" in markdown


def test_ratings_of_a_model_not_explained_name_the_stage(tmp_path) -> None:
    ws = make_workspace(tmp_path)
    row = {c: "" for c in rt.COLUMNS} | {
        "reader": "ann",
        "arch": "densenet121",
        "seed": 7,
        "image": IMAGES[0][0],
        "method": "gradcam",
        "rating": "on",
        "blinded": "False",
    }
    rt.write_reader(ws.ratings.reader("ann"), pd.DataFrame([row]))
    with pytest.raises(CxrError, match=r"dvc repro explain@densenet121-7"):
        ratings.run(PARAMS, ws=ws)
