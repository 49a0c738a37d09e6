"""The viewer with a few hundred images: server-side costs, and the page in headless Chromium when it is installed.

    python benchmarks/bench_viewer.py [--images 100 400] [--side 256] [--grid 8] [--methods 6] [--attributions 4]
                                      [--net 224] [--no-browser]

Writes, in a temporary folder, what the sample, train and explain stages leave for one model (the formats of
tests/viewer_workspace.py) with ``--images`` explained images of ``--side`` pixels, raw CAM maps of ``--grid``² cells
(ResNet-50 at 256 px: 8×8) and ``--attributions`` captum methods' maps at the network input (``--net`` px, float16,
on the Pneumonia images: as the explain stage stores them where a box gives a localisation map), then times:
``load_run`` (reading every output), the page's state (``/api/state``, first and again: a process's first request
pays one-time imports) and its size, one radiograph and one map overlay made on first request and served again, a
rating saved (the reader's CSV read back and rewritten atomically, with one rating per map already in it), and, with
Chromium, the page from navigation to its list of images drawn and 20 steps to the next image (each until its map
overlay is loaded).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from cxrexplain.evaluation import ratings as rt
from cxrexplain.viewer.data import load_run
from cxrexplain.viewer.server import Session, serving
from cxrexplain.workspace import Workspace

METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam")
ATTRIBUTIONS = ("saliency", "integrated_gradients", "occlusion", "gradient_shap")  # the study's captum baselines


def write_run(
    root: Path, images: int, side: int, grid: int, methods: int, attributions: int = 0, net: int = 224
) -> Workspace:
    ws, rng = Workspace(root), np.random.default_rng(0)
    names = [f"{k:08d}_000.png" for k in range(images)]
    labels = rng.integers(0, 2, images)
    ws.cache.dir.mkdir(parents=True)
    np.save(ws.cache.images, rng.integers(0, 256, (images, side, side), dtype=np.uint8))
    boxes = [json.dumps([[side / 4, side / 4, side / 3, side / 4]]) if y else "[]" for y in labels]
    index = pd.DataFrame({"row": range(images), "image": names, "patient": range(images), "label": labels})
    index.assign(boxes=boxes).to_csv(ws.cache.index, index=False)
    ws.cache.rejects.write_text("row\n")
    ws.model("resnet50", 42).dir.mkdir(parents=True)
    predictions = index.assign(split="test", probability=rng.random(images))
    predictions.to_csv(ws.model("resnet50", 42).predictions, index=False)
    explain = ws.explain("resnet50", 42)
    explain.dir.mkdir(parents=True)
    chosen, captum = METHODS[:methods], ATTRIBUTIONS[:attributions]
    boxed = np.flatnonzero(labels)

    def attribution(method: str) -> np.ndarray:  # min-max normalised per map, as the explain stage stores them
        maps = np.random.default_rng(sum(map(ord, method))).random((len(boxed), net, net))
        low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
        return ((maps - low) / (high - low)).astype(np.float16)

    np.savez_compressed(
        explain.maps,
        images=np.array(names),
        explained_class=np.ones(images, dtype=np.int64),
        patients=np.array([str(k) for k in range(images)]),
        **{f"raw/{m}": rng.random((images, grid, grid), dtype=np.float32) for m in chosen},
        **{f"attr/{m}": attribution(m) for m in captum},
        **{f"attr_rows/{m}": boxed.astype(np.int64) for m in captum},
    )
    per_image = pd.DataFrame(
        [
            {"method": m, "index": k, "image": names[k], "explained_class": 1, "pointing": float(rng.integers(0, 2))}
            | {"energy": rng.random(), "deletion": rng.random()}
            for m in (*chosen, *captum)
            for k in range(images)
            if labels[k]
        ]
    )
    per_image.to_csv(explain.per_image, index=False)
    ws.stage_metrics("explain", "resnet50", 42).parent.mkdir(parents=True)
    ws.stage_metrics("explain", "resnet50", 42).write_text(json.dumps({"threshold": 0.5}))
    return ws


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    started = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    return (time.perf_counter() - started) / repeat * 1000, result


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def post(url: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def in_browser(url: str, images: int) -> tuple[float, float]:
    """Milliseconds from navigation to the list drawn, and per step to the next image with its overlay loaded."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        started = time.perf_counter()
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".thumb")) == images)
        opened = (time.perf_counter() - started) * 1000
        body = driver.find_element(By.TAG_NAME, "body")
        done = "const o = document.getElementById('overlay'); return o.complete && o.naturalWidth > 0"
        started = time.perf_counter()
        for _ in range(20):
            body.send_keys(Keys.ARROW_RIGHT)
            WebDriverWait(driver, 30, poll_frequency=0.01).until(lambda d: d.execute_script(done))
        return opened, (time.perf_counter() - started) * 1000 / 20
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--methods", type=int, default=6)
    parser.add_argument("--attributions", type=int, default=4, help="captum methods' maps (0-4)")
    parser.add_argument("--net", type=int, default=224, help="network input side: the captum maps' resolution")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `cxrexplain view` does
    browser = not args.no_browser and shutil.which("chromium") and shutil.which("chromedriver")
    table = Table(
        title=f"viewer: {args.side} px images, {args.methods} CAMs ({args.grid}x{args.grid} maps), "
        f"{args.attributions} captum methods ({args.net} px maps, Pneumonia images) (ms)"
    )
    columns = ["images", "load_run", "state 1st", "state again", "state KB", "image 1st", "overlay 1st"]
    columns += ["overlay again", "rating saved"]
    for column in columns + (["page open", "next image"] if browser else []):
        table.add_column(column, justify="right")
    for n in args.images:
        with tempfile.TemporaryDirectory() as folder:
            ws = write_run(Path(folder), n, args.side, args.grid, args.methods, args.attributions, args.net)
            load_ms, run = timed(lambda ws=ws: load_run(ws, "resnet50", 42))
            file = ws.ratings.reader("bench")
            rows = [
                {c: "" for c in rt.COLUMNS}
                | {"reader": "bench", "arch": "resnet50", "seed": 42, "image": item["image"], "method": m}
                | {"rating": "off", "blinded": "False"}
                for k, item in enumerate(run.items)
                for m in (run.methods[j] for j in run.available(k))
            ]
            rt.write_reader(file, pd.DataFrame(rows))  # every map rated once already: the largest file
            session = Session(run, "bench", file, blinded=False)
            with serving(session) as url:
                first_ms, state = timed(lambda url=url: fetch(url + "api/state"))
                state_ms, state = timed(lambda url=url: fetch(url + "api/state"), repeat=3)
                image_ms, _ = timed(lambda url=url: fetch(url + "image/1.png"))
                overlay_ms, _ = timed(lambda url=url: fetch(url + "map/1/0.png"))
                again_ms, _ = timed(lambda url=url: fetch(url + "map/1/0.png"), repeat=5)
                rate_ms, _ = timed(lambda url=url: post(url + "api/rate", {"item": 2, "slot": 1, "rating": "on"}), 5)
                cells = [load_ms, first_ms, state_ms, len(state) / 1024, image_ms, overlay_ms, again_ms, rate_ms]
                if browser:
                    cells += in_browser(url, n)
            table.add_row(str(n), *(f"{v:.0f}" for v in cells))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
