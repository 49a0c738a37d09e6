"""The viewer's data and server, over HTTP without a browser (tests/test_viewer_browser.py drives the page)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxrexplain.errors import CxrError
from cxrexplain.evaluation import ratings as rt
from cxrexplain.viewer.data import blinded_order, load_run
from cxrexplain.viewer.server import Session, serving
from inprocess import cli
from viewer_workspace import (
    ARCH,
    ATTRIBUTION_ROWS,
    CAMS,
    IMAGES,
    METHODS,
    SEED,
    SIDE,
    attribution_maps,
    make_workspace,
    raw_maps,
)

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"  # the demo profile: resnet18 and seeds 42, 43, 44


@pytest.fixture
def ws(tmp_path: Path):
    return make_workspace(tmp_path)


def _get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _post(url: str, body: object, kind: str = "application/json") -> tuple[int, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url + "api/rate", data=data, headers={"Content-Type": kind}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_load_run_joins_the_stages_outputs(ws) -> None:
    run = load_run(ws, ARCH, SEED)
    assert run.methods == list(METHODS) and run.side == SIDE
    assert [i["image"] for i in run.items] == [i[0] for i in IMAGES]
    assert [i["outcome"] for i in run.items] == ["TP", "FN", "FP", "TN", "TP", "TN", "TP", "TN"]
    assert run.items[0]["boxes"] == [[4.0, 6.0, 10.0, 8.0]] and run.items[2]["boxes"] == []
    # a map's measures come from its rows of per_image.csv (localisation on the class-1 row, faithfulness on the other)
    assert run.items[0]["measures"]["gradcam"] == {"pointing": float(len("gradcam") % 2), "energy": pytest.approx(0.1)}
    assert run.items[3]["measures"]["layercam"] == {"deletion": 0.5}
    assert {m["name"] for m in run.measures} == {"pointing", "energy", "deletion"}
    assert np.array_equal(np.asarray(run.cache[run.rows[5]]), np.load(ws.cache.images)[5])


def test_overlay_is_the_measured_map_at_cache_resolution(ws) -> None:
    """Bilinear upsampling (align_corners=False) and min-max normalisation of the raw map, as cam.py does."""
    run = load_run(ws, ARCH, SEED)
    raw = torch.from_numpy(raw_maps("layercam")[4])
    up = F.interpolate(raw[None, None], size=(SIDE, SIDE), mode="bilinear", align_corners=False)[0, 0]
    expected = ((up - up.min()) / (up.max() - up.min())).numpy()
    shown = run.map_at_cache_size("layercam", 4)
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    png = np.asarray(Image.open(io.BytesIO(run.overlay_png("layercam", 4))))
    jet = (matplotlib.colormaps["jet"](expected)[..., :3] * 255).round()
    assert png.shape == (SIDE, SIDE, 3) and np.abs(png.astype(float) - jet).max() <= 1
    radiograph = np.asarray(Image.open(io.BytesIO(run.radiograph_png(2))))
    assert np.array_equal(radiograph, np.load(ws.cache.images)[2])


def test_captum_maps_are_listed_on_the_images_they_were_computed_on(ws) -> None:
    """saliency has a map of images 0, 1, 4 and 6 only: listed there after the CAMs, served and rated like them."""
    run = load_run(ws, ARCH, SEED)
    assert run.methods == [*CAMS, "saliency"]
    assert [run.available(i) for i in range(len(IMAGES))] == [
        [0, 1, 2] if i in ATTRIBUTION_ROWS else [0, 1] for i in range(len(IMAGES))
    ]
    # its localisation measures on a boxed image, its faithfulness on image 6 (the decision map, class Pneumonia)
    assert run.items[4]["measures"]["saliency"] == {"pointing": float((4 + 8) % 2), "energy": pytest.approx(0.5)}
    assert run.items[6]["measures"]["saliency"] == {"deletion": 0.75}
    # the 16-px network-input map resized to the 32-px cache (bilinear, align_corners=False) and normalised again
    stored = attribution_maps("saliency")[2].astype(np.float32)  # image 4's map
    shown = run.map_at_cache_size("saliency", 4)
    up = F.interpolate(torch.from_numpy(stored)[None, None], size=(SIDE, SIDE), mode="bilinear")[0, 0]
    np.testing.assert_allclose(shown, ((up - up.min()) / (up.max() - up.min())).numpy(), atol=1e-6)
    # by hand: output pixel (1, 1) sits a quarter of an input pixel from input pixel (0, 0), towards (1, 1)
    a = stored[:2, :2].astype(np.float64)
    by_hand = 0.5625 * a[0, 0] + 0.1875 * (a[0, 1] + a[1, 0]) + 0.0625 * a[1, 1]
    low, high = float(up.min()), float(up.max())
    assert shown[1, 1] == pytest.approx((by_hand - low) / (high - low), abs=1e-5)
    with pytest.raises(KeyError):
        run.map_at_cache_size("saliency", 2)  # no saliency map of image 2

    file = ws.ratings.reader("eve")
    with serving(Session(run, "eve", file, blinded=False)) as url:
        state = json.loads(_get(url + "api/state")[1])
        assert state["methods"] == list(METHODS)
        names = {entry["item"]: [m["name"] for m in entry["maps"]] for entry in state["items"]}
        assert names[4] == list(METHODS) and names[2] == list(CAMS)
        assert _get(url + "map/4/2.png")[0] == 200 and _get(url + "map/2/2.png")[0] == 404
        assert _post(url, {"item": 4, "slot": 2, "rating": "off"})[0] == 200
        status, answer = _post(url, {"item": 2, "slot": 2, "rating": "on"})
        assert status == 400 and "no map 2 of image 2" in answer["error"]
    assert rt.read_reader(file)[["image", "method", "rating"]].values.tolist() == [[IMAGES[4][0], "saliency", "off"]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attr_rows/saliency": np.array([0, 1, 4, 8])}, r"attr_rows/saliency must be 4 increasing image indices"),
        ({"attr_rows/saliency": np.array([0, 4, 1, 6])}, r"attr_rows/saliency must be 4 increasing image indices"),
        (
            {"attr_rows/saliency": np.array([0.0, 1.0, 4.0, 6.0])},
            r"attr/saliency must be \(K, H, W\) floats and attr_rows/saliency \(K,\) integers",
        ),
        ({"attr/saliency": np.full((4, 16, 16), 2.0)}, r"attr/saliency holds values outside \[0, 1\]"),
        ({"attr/saliency": np.full((4, 16, 16), np.nan)}, r"attr/saliency holds values outside \[0, 1\]"),
        ({"attr_rows/saliency": None}, r"attr/saliency without attr_rows/saliency"),
        ({"attr/saliency": None}, r"attr_rows/saliency without its maps attr/saliency"),
    ],
)
def test_a_broken_captum_map_in_maps_npz_is_named(ws, change: dict, message: str) -> None:
    path = ws.explain(ARCH, SEED).maps
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays = {k: v for k, v in (arrays | change).items() if v is not None}
    np.savez(path, **arrays)
    with pytest.raises(CxrError, match=rf"maps\.npz: {message}"):
        load_run(ws, ARCH, SEED)


def test_missing_maps_name_the_stage(ws) -> None:
    ws.explain(ARCH, SEED).maps.unlink()
    with pytest.raises(CxrError, match=r"maps\.npz.*dvc repro explain@resnet18-42"):
        load_run(ws, ARCH, SEED)


def test_rating_is_on_disk_when_answered_and_survives_a_restart(ws) -> None:
    file = ws.ratings.reader("ann")
    session = Session(load_run(ws, ARCH, SEED), "ann", file, blinded=False)
    with serving(session) as url:
        status, page = _get(url)
        assert status == 200 and b"cxrexplain viewer" in page
        state = json.loads(_get(url + "api/state")[1])
        assert state["methods"] == list(METHODS) and state["ratings"] == {}
        assert [m["name"] for m in state["items"][0]["maps"]] == list(METHODS)
        status, answer = _post(url, {"item": 1, "slot": 1, "rating": "partly", "note": 'left base, "faint", 2'})
        assert status == 200 and answer["rating"] == "partly"
        saved = rt.read_reader(file)  # written before the answer
        assert saved[["reader", "arch", "seed", "image", "method", "rating", "blinded"]].values.tolist() == [
            ["ann", ARCH, SEED, IMAGES[1][0], "layercam", "partly", "False"]
        ]
        assert saved["note"][0] == 'left base, "faint", 2'
        assert _post(url, {"item": 1, "slot": 1, "rating": "artefact", "artefact": "ecg_leads"})[0] == 200
        assert _post(url, {"item": 2, "slot": 0, "rating": "on"})[0] == 200
        assert len(rt.read_reader(file)) == 2  # the second rating of a map replaced the first
        # refused, and the file is left as it was
        before = file.read_bytes()
        for bad in (
            {"item": 1, "slot": 0, "rating": "great"},
            {"item": 1, "slot": 0, "rating": "artefact"},  # which artefact?
            {"item": 1, "slot": 0, "rating": "on", "artefact": "ribs"},
            {"item": 99, "slot": 0, "rating": "on"},
            {"item": 1, "slot": 5, "rating": "on"},
            {"item": 1, "slot": 0, "rating": "on", "note": "x" * (rt.MAX_NOTE + 1)},
            {"slot": 0, "rating": "on"},
        ):
            status, answer = _post(url, bad)
            assert status == 400 and answer["error"], bad
        assert _post(url, {"item": 1, "slot": 0, "rating": "on"}, kind="text/plain")[0] == 415
        assert _get(url + "api/state", host="evil.example:80")[0] == 403
        assert _get(url + "map/0/7.png")[0] == 404
        assert file.read_bytes() == before
    # a new session (a restart, or a reload) reads the ratings back
    again = Session(load_run(ws, ARCH, SEED), "ann", file, blinded=False)
    assert again.ratings() == {
        "1": {"1": {"rating": "artefact", "artefact": "ecg_leads", "note": ""}},
        "2": {"0": {"rating": "on", "artefact": "", "note": ""}},
    }
    with serving(again) as url:
        assert _post(url, {"item": 2, "slot": 0, "rating": ""})[0] == 200  # an empty rating removes it
    assert rt.read_reader(file)["image"].tolist() == [IMAGES[1][0]]


def test_two_viewers_of_one_reader_keep_each_others_ratings(ws) -> None:
    """Two sessions (two `cxrexplain view` of the same reader, e.g. two models) on one file: each change re-reads it."""
    file = ws.ratings.reader("ann")
    run = load_run(ws, ARCH, SEED)
    first, second = (Session(run, "ann", file, blinded=False) for _ in range(2))
    first.rate({"item": 0, "slot": 0, "rating": "on"})
    second.rate({"item": 1, "slot": 1, "rating": "off"})
    first.rate({"item": 2, "slot": 0, "rating": "partly"})
    assert sorted(rt.read_reader(file)["rating"]) == ["off", "on", "partly"]
    assert second.ratings()["2"] == {"0": {"rating": "partly", "artefact": "", "note": ""}}
    file.write_text("not,a\nratings,file\n")  # broken by hand while the viewer runs: said, not served as empty
    with serving(first) as url:
        status, body = _get(url + "api/state")
        assert status == 500 and b"ann.csv: columns" in body
        status, answer = _post(url, {"item": 0, "slot": 0, "rating": "on"})
        assert status == 400 and "ann.csv: columns" in answer["error"]
    assert file.read_text() == "not,a\nratings,file\n"


def test_blinded_reading_hides_the_methods(ws) -> None:
    run = load_run(ws, ARCH, SEED)
    file = ws.ratings.reader("bo")
    session = Session(run, "bo", file, blinded=True)
    with serving(session) as url:
        text = _get(url + "api/state")[1].decode()
        state = json.loads(text)
        assert not any(m in text for m in METHODS) and state["measures"] == []
        order, slots = blinded_order("bo", len(IMAGES), len(METHODS))
        assert [i["item"] for i in state["items"]] == order
        for entry in state["items"]:  # every map the image has (saliency only on some), in the reader's own order
            have = [METHODS[k] for k in slots[entry["item"]] if entry["item"] in ATTRIBUTION_ROWS or k < len(CAMS)]
            assert [m["name"] for m in entry["maps"]] == [f"map {s + 1}" for s in range(len(have))]
            assert [session.method(entry["item"], s) for s in range(len(have))] == have
        item = next(entry["item"] for entry in state["items"] if entry["item"] in ATTRIBUTION_ROWS)
        last = len(METHODS) - 1
        assert _post(url, {"item": item, "slot": last, "rating": "off"})[0] == 200
    saved = rt.read_reader(file)
    assert saved[["image", "method", "blinded"]].values.tolist() == [
        [IMAGES[item][0], METHODS[slots[item][last]], "True"]
    ]
    # the reader's own order: the same every session, another reader's differs
    assert blinded_order("bo", 50, 6) == blinded_order("bo", 50, 6)
    assert blinded_order("bo", 50, 6)[0] != blinded_order("cy", 50, 6)[0]
    assert sorted(blinded_order("bo", 50, 6)[0]) == list(range(50))


def test_a_bad_ratings_file_or_reader_stops_the_viewer(ws) -> None:
    run = load_run(ws, ARCH, SEED)
    with pytest.raises(CxrError, match="reader id"):
        Session(run, "../etc/x", ws.ratings.dir / "x.csv", blinded=False)
    bad = ws.ratings.reader("cy")
    pd.DataFrame({"reader": ["cy"], "image": ["a.png"]}).to_csv(bad, index=False)
    with pytest.raises(CxrError, match=r"cy\.csv: columns"):
        Session(run, "cy", bad, blinded=False)


def test_view_command_checks_before_serving(ws) -> None:
    """Errors a user can cause end `cxrexplain view` with one line (exit 2) before any server starts."""
    bad_reader = cli("view", "--params", str(PARAMS_FILE), "--reader", "../x", "--no-browser", cwd=ws.root)
    assert bad_reader.returncode == 2 and "reader id '../x'" in bad_reader.stderr
    assert "Traceback" not in bad_reader.stderr
    not_explained = cli("view", "--params", str(PARAMS_FILE), "--arch", "densenet121", "--reader", "a", cwd=ws.root)
    assert not_explained.returncode == 2 and "dvc repro explain@densenet121-42" in " ".join(
        not_explained.stderr.split()
    )
    unknown_seed = cli("view", "--params", str(PARAMS_FILE), "--seed", "7", "--reader", "a", cwd=ws.root)
    assert unknown_seed.returncode == 2 and "seed 7 is not one of the training seeds" in unknown_seed.stderr


def test_a_dropped_connection_is_not_a_traceback_but_a_bug_is_logged(ws, capsys, caplog) -> None:
    """A reader closing the tab while an overlay is sent (BrokenPipeError in the handler) prints nothing; any other
    error of a request is logged with its traceback."""
    import logging

    from cxrexplain.viewer.server import make_server

    server = make_server(Session(load_run(ws, ARCH, SEED), "ann", ws.ratings.reader("ann"), blinded=False))
    try:
        with caplog.at_level(logging.DEBUG, logger="cxrexplain"):
            try:
                raise BrokenPipeError(32, "Broken pipe")
            except BrokenPipeError:
                server.handle_error(None, ("127.0.0.1", 5000))
            try:
                raise KeyError("a bug")
            except KeyError:
                server.handle_error(None, ("127.0.0.1", 5001))
    finally:
        server.server_close()
    assert capsys.readouterr().err == ""
    levels = [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records if "viewer:" in r.getMessage()]
    assert levels == [
        ("DEBUG", "viewer: 127.0.0.1 closed the connection (BrokenPipeError)", False),
        ("ERROR", "viewer: a request from 127.0.0.1 failed", True),
    ]
