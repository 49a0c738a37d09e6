"""The viewer in a real browser: headless Chromium driven by selenium opens the page, switches maps, rates three
images with the mouse and the keyboard, reloads, and finds the ratings kept, in the page and in the reader's CSV;
then filters, and rates a captum method's map (saliency, on the images that have one).

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them) and selenium (dev extras);
skipped, saying which is missing, without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxrexplain.evaluation import ratings as rt
from cxrexplain.viewer.data import load_run
from cxrexplain.viewer.server import Session, serving
from viewer_workspace import ARCH, ATTRIBUTION_ROWS, IMAGES, SEED, make_workspace

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="the browser test needs Chromium and its driver: apt-get install chromium chromium-driver (.ci/run does)",
)


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the dev extras)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))  # no Selenium Manager lookup
    yield driver
    driver.quit()


def test_rate_three_images_reload_and_find_them(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    ws = make_workspace(tmp_path)
    file = ws.ratings.reader("dee")
    wait = WebDriverWait(browser, 10, poll_frequency=0.05)
    css = browser.find_elements

    def opened(url: str) -> None:
        browser.get(url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".thumb")) == len(IMAGES))

    def press(key: str) -> None:
        browser.find_element(By.TAG_NAME, "body").send_keys(key)

    def saved(slot: int) -> None:
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, f'#maps tr[data-slot="{slot}"] .saved').text.startswith("saved ")
        )

    def checked(slot: int) -> str | None:
        boxes = css(By.CSS_SELECTOR, f'#maps tr[data-slot="{slot}"] input[type=radio]:checked')
        return boxes[0].get_attribute("value") if boxes else None

    session = Session(load_run(ws, ARCH, SEED), "dee", file, blinded=False)
    with serving(session) as url:
        opened(url)
        assert browser.find_element(By.ID, "map-name").text == "gradcam"
        press(Keys.ARROW_DOWN)  # the next method's map
        assert browser.find_element(By.ID, "map-name").text == "layercam"
        assert browser.find_element(By.ID, "overlay").get_attribute("src").endswith("/map/0/1.png")
        slider = browser.find_element(By.ID, "opacity")
        browser.execute_script("arguments[0].value = 0.8; arguments[0].dispatchEvent(new Event('input'))", slider)
        assert browser.find_element(By.ID, "overlay").value_of_css_property("opacity") == "0.8"
        press("b")  # boxes off
        assert not browser.find_element(By.ID, "boxes").is_displayed()

        press("1")  # image 1, layercam: on the finding (keyboard)
        saved(1)
        press(Keys.ARROW_RIGHT)  # image 2: gradcam off the finding (mouse)
        browser.find_element(By.CSS_SELECTOR, '#maps tr[data-slot="0"]').click()
        browser.find_element(By.CSS_SELECTOR, '#maps tr[data-slot="0"] input[value="off"]').click()
        saved(0)
        press(Keys.ARROW_RIGHT)  # image 3: gradcam on an artefact, the ECG leads, with a note
        assert css(By.CSS_SELECTOR, "#maps tr.missing")[0].text.startswith("no map of saliency")  # not computed here
        press("4")
        Select(browser.find_element(By.CSS_SELECTOR, '#maps tr[data-slot="0"] select.artefact')).select_by_value(
            "ecg_leads"
        )
        saved(0)
        note = browser.find_element(By.CSS_SELECTOR, '#maps tr[data-slot="0"] input.note')
        note.send_keys("lead over the left lung", Keys.TAB)
        wait.until(lambda d: len(rt.read_reader(file)) == 3 and "lead" in rt.read_reader(file)["note"].str.cat())

        browser.refresh()  # the page forgets everything it held; the server reads nothing new
        opened(url)
        assert (checked(0), checked(1)) == (None, "on")
        press(Keys.ARROW_RIGHT)
        assert (checked(0), checked(1)) == ("off", None)
        press(Keys.ARROW_RIGHT)
        assert checked(0) == "artefact"
        row = browser.find_element(By.CSS_SELECTOR, '#maps tr[data-slot="0"]')
        assert Select(row.find_element(By.CSS_SELECTOR, "select.artefact")).first_selected_option.text == "ECG leads"
        assert row.find_element(By.CSS_SELECTOR, "input.note").get_attribute("value") == "lead over the left lung"
        assert [t.text.split("\n")[-1].split(" · ")[-1] for t in css(By.CSS_SELECTOR, ".thumb")][:4] == [
            "1/3 rated",  # images 1 and 2 have a box, so a saliency map too
            "1/3 rated",
            "1/2 rated",
            "0/2 rated",
        ]
        Select(browser.find_element(By.ID, "f-rated")).select_by_value("no")  # filters: the unrated images
        assert len(css(By.CSS_SELECTOR, ".thumb")) == len(IMAGES)
        Select(browser.find_element(By.ID, "f-method")).select_by_value("layercam")
        assert len(css(By.CSS_SELECTOR, ".thumb")) == len(IMAGES) - 1  # image 1's layercam map is rated
        assert len(css(By.CSS_SELECTOR, "#maps tr")) == 1
        method = Select(browser.find_element(By.ID, "f-method"))  # a captum method: only the images that have it
        assert [o.text for o in method.options][-1] == f"saliency ({len(ATTRIBUTION_ROWS)} of {len(IMAGES)} images)"
        method.select_by_value("saliency")
        assert len(css(By.CSS_SELECTOR, ".thumb")) == len(ATTRIBUTION_ROWS)
        assert browser.find_element(By.ID, "count").text.endswith(
            f"({len(IMAGES) - len(ATTRIBUTION_ROWS)} without a saliency map)"
        )
        assert browser.find_element(By.ID, "map-name").text == "saliency"
        assert browser.find_element(By.ID, "overlay").get_attribute("src").endswith("/map/0/2.png")
        press("2")  # image 1's saliency map: partly on the finding
        saved(2)
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors  # no script error, no failed request

    table = rt.read_reader(file)
    assert table[["image", "method", "rating", "artefact", "note"]].values.tolist() == [
        [IMAGES[0][0], "layercam", "on", "", ""],
        [IMAGES[0][0], "saliency", "partly", "", ""],
        [IMAGES[1][0], "gradcam", "off", "", ""],
        [IMAGES[2][0], "gradcam", "artefact", "ecg_leads", "lead over the left lung"],
    ]
