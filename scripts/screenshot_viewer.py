"""Screenshots of the viewer (``cxrexplain view``) on this workspace's explain outputs, for the README.

    python scripts/screenshot_viewer.py [--arch resnet18] [--seed 42] [--out docs]

Serves the model's explanations as ``cxrexplain view`` does, opens the page in headless Chromium (selenium; Debian's
``chromium`` and ``chromium-driver`` packages), filters to true positives with a box, rates the first two maps with
the keyboard (into a temporary reader file: nothing is written under ``ratings/``) and saves ``viewer.png``; then the
same model read blinded (``viewer_blinded.png``). Prints what each screenshot shows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cxrexplain.config import load_params
from cxrexplain.viewer.data import load_run
from cxrexplain.viewer.server import Session, serving
from cxrexplain.workspace import Workspace


def browser():
    from selenium import webdriver

    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        sys.exit("no Chromium or chromedriver: apt-get install chromium chromium-driver, then run this again")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--hide-scrollbars"):
        options.add_argument(argument)
    options.binary_location = chromium
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


def settle(driver) -> None:
    """Wait until every image of the page that has started loading is complete."""
    for _ in range(100):
        if driver.execute_script("return [...document.images].every((i) => !i.src || i.complete)"):
            return
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="default: model.archs[0]")
    parser.add_argument("--seed", type=int, default=None, help="default: the primary training seed")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    params = load_params()
    arch, seed = args.arch or params.model.archs[0], args.seed if args.seed is not None else params.primary_seed
    run = load_run(Workspace(), arch, seed)
    args.out.mkdir(parents=True, exist_ok=True)
    driver = browser()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for blinded, name in ((False, "viewer.png"), (True, "viewer_blinded.png")):
                # the file is named after its reader (the server checks it): one folder per mode
                (Path(scratch) / str(int(blinded))).mkdir()
                session = Session(run, "demo", Path(scratch) / str(int(blinded)) / "demo.csv", blinded=blinded)
                with serving(session) as url:
                    driver.get(url)
                    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".thumb"))
                    Select(driver.find_element(By.ID, "f-outcome")).select_by_value("TP")
                    Select(driver.find_element(By.ID, "f-box")).select_by_value("yes")
                    body = driver.find_element(By.TAG_NAME, "body")
                    body.send_keys("1", Keys.ARROW_DOWN, "2")
                    WebDriverWait(driver, 10).until(lambda d, s=session: len(s.table) == 2, f"ratings: {session.table}")
                    body.send_keys(Keys.ARROW_UP)
                    settle(driver)
                    driver.save_screenshot(str(args.out / name))
                    shown = driver.find_element(By.ID, "facts").text.replace("\n", " ")
                    print(f"{args.out / name}: {arch} seed {seed}, {'blinded, ' if blinded else ''}{shown}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
