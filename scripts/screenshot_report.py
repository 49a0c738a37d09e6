"""Render reports/report.html in headless Chromium and save a full-page PNG (the issue's browser check).

    python scripts/screenshot_report.py [reports/report.html] [--out report.png] [--width 1280]

Chromium is not a dependency of the project: install it from the system's packages (Debian: `apt install chromium`).
The page is rendered in a window taller than any report, then the empty space below the content is cropped; the
script prints the page size and the number of embedded figures, and fails when Chromium writes nothing or the page
is blank. Look at the PNG to see that every figure is shown.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FLAGS = [  # a closed network: no background requests, no first-run, no sandbox as root
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("no Chromium found: install it (Debian: apt install chromium), then run this again")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", type=Path, default=Path("reports/report.html"))
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--max-height", type=int, default=30000)
    args = parser.parse_args()
    if not args.html.is_file():
        sys.exit(f"{args.html}: no such file (run `dvc repro report` first)")
    figures = len(re.findall(r"<img\s[^>]*src=\"data:image/png;base64,", args.html.read_text()))
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "page.png"
        result = subprocess.run(
            [
                find_chromium(),
                *FLAGS,
                f"--user-data-dir={profile}/user",
                f"--window-size={args.width},{args.max_height}",
                f"--screenshot={shot}",
                args.html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if not shot.is_file():
            sys.exit(f"Chromium wrote no screenshot:\n{result.stderr[-2000:]}")
        page = Image.open(shot).convert("RGB")
    pixels = np.asarray(page)
    rows = np.flatnonzero((pixels < 250).any(axis=(1, 2)))
    if rows.size == 0:
        sys.exit(f"{args.html}: the rendered page is blank")
    page.crop((0, 0, page.width, min(page.height, rows[-1] + 24))).save(args.out)
    print(f"{args.out}: {page.width}×{rows[-1] + 24} px, {figures} embedded figures in {args.html}")


if __name__ == "__main__":
    main()
