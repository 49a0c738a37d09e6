"""The whole pipeline from DICOM files at toy scale, through `dvc repro`, in a fresh copy of the repository.

    python benchmarks/bench_dicom_pipeline.py [--per-class 36] [--keep DIR]

Writes a folder of DICOM radiographs into the copy's ``data/raw/`` (the synthetic renderer's images, as 12-bit
DICOM, in every variant the reader handles: MONOCHROME2 and MONOCHROME1 with INVERSE, the five compressed syntaxes
with an encoder here, float pixels, padding), a labels CSV and a boxes CSV, sets ``data.source: dicom`` on top of the
ci profile (one backbone, ResNet-18 from scratch, one epoch), runs ``dvc repro`` and prints each stage's time and the
cached and trained counts. Synthetic pictures, not medical data. Imports the test suite's DICOM writers
(``tests/dicomfiles.py``) and the synthetic mirror's private renderer task list.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from repocopy import snapshot  # noqa: E402

from cxrexplain.data import layout  # noqa: E402
from cxrexplain.data.synth import _render_png, _tasks, synth_index  # noqa: E402
from dicomfiles import compress_dicom, make_dicom  # noqa: E402

SIZE = 128  # side of the rendered radiographs
VARIANTS = ("plain", "monochrome1", "rle", "jpeg-ls", "j2k", "jpeg-lossless", "jpeg-lossless-sv1", "float", "padded")
SYNTAXES = {
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
    "jpeg-lossless": JPEGLossless,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
}


def dicom_bytes(gray8: np.ndarray, variant: str, patient: str, view: str) -> bytes:
    """The 8-bit rendering as a 12-bit DICOM of ``variant`` (window: the whole 12-bit range)."""
    values = gray8.astype(np.uint16) * 16 + 8
    header = {"PatientID": patient, "ViewPosition": view, "WindowCenter": 2048, "WindowWidth": 4096}
    if variant == "monochrome1":
        return make_dicom(4095 - values, photometric="MONOCHROME1", PresentationLUTShape="INVERSE", **header)
    if variant == "float":
        return make_dicom(values.astype(np.float32), **header)
    if variant == "padded":  # a 4-pixel border of padding value 0 around the image
        padded = np.zeros((SIZE + 8, SIZE + 8), dtype=np.uint16)
        padded[4:-4, 4:-4] = values
        return make_dicom(padded, PixelPaddingValue=0, **header)
    plain = make_dicom(values, **header)
    return compress_dicom(plain, SYNTAXES[variant]) if variant in SYNTAXES else plain


def write_dicom_folder(raw: Path, per_class: int) -> dict[str, int]:
    """``per_class`` Pneumonia and No Finding radiographs as DICOM in ``raw/study/``; ``labels.csv``, ``boxes.csv``."""
    index = synth_index(200, image_size=SIZE, pneumonia_fraction=0.45, opacity_scale=3.0, seed=0)
    entries = index.entries
    positive = entries[entries["labels"].str.contains(layout.PNEUMONIA)].head(per_class)
    negative = entries[entries["labels"] == layout.NO_FINDING].head(per_class)
    chosen = set(positive["image"]) | set(negative["image"])
    by_image = entries.set_index("image")
    labels, counts = [], dict.fromkeys(VARIANTS, 0)
    (raw / "study").mkdir(parents=True)
    for i, task in enumerate(t for t in _tasks(index) if t.image in chosen):
        gray8 = np.asarray(Image.open(io.BytesIO(_render_png(task, SIZE, 0, contrast=2.5))))
        variant = VARIANTS[i % len(VARIANTS)]
        counts[variant] += 1
        name = f"study/{Path(task.image).stem}.dcm"
        row = by_image.loc[task.image]
        (raw / name).write_bytes(dicom_bytes(gray8, variant, f"P{task.patient:05d}", row["view"]))
        labels.append((name, int(task.image in set(positive["image"])), variant))
    table = pd.DataFrame(labels, columns=["file", "label", "variant"])
    table[["file", "label"]].to_csv(raw / "labels.csv", index=False)
    border = {name: 4 * (variant == "padded") for name, variant in zip(table["file"], table["variant"], strict=True)}
    rows = []
    for b in index.boxes(SIZE).itertuples():
        name = f"study/{Path(b.image).stem}.dcm"
        if b.image in set(positive["image"]):  # in the DICOM's own pixels: a padded image is 4 pixels larger each side
            rows.append((name, b.x + border[name], b.y + border[name], b.w, b.h))
    pd.DataFrame(rows, columns=["file", "x", "y", "w", "h"]).to_csv(raw / "boxes.csv", index=False)
    return counts


def params_for(dest: Path) -> None:
    """The ci profile, then a DICOM source and the smallest training and explanation that still run every stage."""
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["source"] = "dicom"
    params["data"]["dicom"] = {"labels": "labels.csv", "boxes": "boxes.csv", "max_skipped": 0.0}
    params["model"]["archs"] = ["resnet18"]
    params["train"]["max_epochs"] = 1
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd: list[str], cwd: Path) -> str:
    """``cmd`` in ``cwd`` with this interpreter's scripts (``cxrexplain``, ``dvc``) first on the PATH; exits with its
    output if it fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=36)
    parser.add_argument("--keep", type=Path, help="copy the finished repository here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dest = Path(folder) / "repo"
        dest.mkdir()
        snapshot(dest)
        run(["cxrexplain", "params", "--profile", "ci"], dest)
        params_for(dest)
        run(["cxrexplain", "params", "--check"], dest)
        counts = write_dicom_folder(dest / "data" / "raw", args.per_class)
        print("DICOM files written:", counts)
        start = time.perf_counter()
        log = run(["dvc", "repro"], dest)
        total = time.perf_counter() - start
        print(f"dvc repro: {total:.0f} s")
        stages = [line for line in log.splitlines() if line.startswith("Running stage")]
        print("\n".join(stages))
        sample = json.loads((dest / "metrics" / "sample.json").read_text())
        train = json.loads((dest / "metrics" / "train" / "resnet18" / "seed42.json").read_text())
        print("sample:", json.dumps({k: sample[k] for k in ("source", "listed", "rejected", "boxes", "cached")}))
        print("train:", json.dumps({k: v for k, v in train.items() if k != "environment"})[:1500])
        print(run(["dvc", "status"], dest).strip())
        if args.keep:
            shutil.copytree(dest, args.keep, symlinks=True, ignore=shutil.ignore_patterns(".git", ".dvc"))


if __name__ == "__main__":
    main()
