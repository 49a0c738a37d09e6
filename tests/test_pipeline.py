"""The reduced pipeline end to end through DVC, from a fresh copy of the repository (the slow tier)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dvc.repo import Repo
from repocopy import snapshot

from cxrexplain import tracking
from cxrexplain.models import training
from inprocess import cli

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    """The working tree's files (tracked and new, not ignored) in a new git repository, with the ci profile."""
    dest = tmp_path_factory.mktemp("repo")
    snapshot(dest)  # without the committed demo outputs: every check below reads new ones
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(
        GIT_AUTHOR_NAME="ci",
        GIT_AUTHOR_EMAIL="ci@localhost",
        GIT_COMMITTER_NAME="ci",
        GIT_COMMITTER_EMAIL="ci@localhost",
    )
    run(["cxrexplain", "params", "--profile", "ci"], dest, env)
    return dest, env


def test_reduced_pipeline_runs_end_to_end_then_is_up_to_date(repo):
    dest, env = repo
    run(["dvc", "repro"], dest, env)
    sample = json.loads((dest / "metrics/sample.json").read_text())
    assert sample["source"] == "synthetic"
    assert sample["cached"]["pneumonia"] == sample["cached"]["negative"] > 50  # balanced
    assert sample["negatives"] == "no_finding"  # the study's task (the default)
    assert sample["rejected"] == 0
    split = pd.read_csv(dest / "data/split.csv")
    assert len(split) == sample["cached"]["images"]
    per_patient = split.groupby("patient")["split"].nunique()
    assert (per_patient == 1).all()  # no patient in two splits
    metrics = json.loads((dest / "metrics/split.json").read_text())
    assert metrics["patients_in_two_splits"]["any"] == 0
    assert (dest / "data/raw/MD5SUMS").is_file()
    archs = yaml.safe_load((dest / "params.yaml").read_text())["model"]["archs"]
    assert archs == ["resnet18", "densenet121"]  # the ci profile's pair: dvc.yaml's matrix follows model.archs
    assert not (dest / "models/resnet50").exists()
    assert yaml.safe_load((dest / "params.yaml").read_text())["seeds"] == [42]  # the ci profile: one training seed
    for arch in archs:  # three epochs from scratch on visible synthetic opacities
        trained = json.loads((dest / f"metrics/train/{arch}/seed42.json").read_text())
        assert trained["seed"] == 42
        assert trained["epochs"] == 3 and 0 <= trained["best_epoch"] < 3
        assert trained["val"]["auroc"] >= 0.9, (arch, trained)  # issue 3's bar: both backbones learn the task
        assert trained["test"]["auroc"] >= 0.8, (arch, trained)
        predictions = pd.read_csv(dest / f"models/{arch}/seed42/predictions.csv")
        assert set(predictions["split"]) == {"val", "test"}
        assert (dest / f"models/{arch}/seed42/best.ckpt").is_file()

        explained = json.loads((dest / f"metrics/explain/{arch}/seed42.json").read_text())
        assert explained["seed"] == 42
        assert {"gradcam", "saliency"} <= set(explained["methods"])
        chance = explained["pointing_chance"]
        assert 0 < chance < 0.4 and 0 <= explained["pointing_centre_prior"] <= 1
        # Where a 3-epoch model from scratch looks differs between CPU kinds (issue 12): ResNet-50's Grad-CAM pointing
        # game was 0.62 on the machine that made the previous demo and 0.21 (chance 0.20) on the one that made the
        # current demo, where this profile's DenseNet-121 insertion AUC also fell below its deletion AUC (6 images);
        # explanation quality is reported, not asserted here.
        # Asserted: every method is scored on the same images, with the class each measure is defined on.
        for method, entry in explained["methods"].items():
            assert entry["pointing"]["n"] == explained["images_with_boxes"], (arch, method)
            assert entry["deletion"]["n"] == entry["road_morf"]["n"] == explained["subset_images"], (arch, method)
            assert entry["pointing"]["low"] <= entry["pointing"]["mean"] <= entry["pointing"]["high"]
        per_image = pd.read_csv(dest / f"explain/{arch}/seed42/per_image.csv")
        assert (per_image.loc[per_image["pointing"].notna(), "explained_class"] == 1).all()
        decision = per_image[per_image["deletion"].notna()]
        assert (decision["explained_class"] == decision["predicted"]).all()
        # the sanity verdict is computed for every method (whether Grad-CAM passes is not asserted: on this profile's
        # 3 sanity images and 2×2 last blocks at 64 px, both backbones' maps kept mean |ρ| 0.56-0.58 after the head
        # and the last block were randomised; the demo's DenseNet-121 at 96 px passes with 0.32)
        assert all(isinstance(e["sanity"]["passes"], bool) for e in explained["methods"].values())
        curve = pd.read_csv(dest / f"explain/{arch}/seed42/sanity_curve.csv")
        assert curve.loc[curve["step"] == 0, "spearman"].round(6).eq(1.0).all()  # deterministic maps
        assert set(curve["mode"]) == {"top_down", "bottom_up", "independent"}
        assert (dest / f"explain/{arch}/seed42/gallery_gradcam.png").is_file()
    consistency = json.loads((dest / "metrics/explain/consistency.json").read_text())
    (pair,) = consistency["pairs"]  # two backbones: one pair
    assert pair["archs"] == archs and set(pair["methods"]) >= {"gradcam"}

    audit = json.loads((dest / "metrics/leakage.json").read_text())  # resnet18 again, on an image-level split
    assert audit["arch"] == "resnet18" and audit["protocols"] == {"pipeline": "patient", "audit": "image"}
    assert audit["test"]["patient"]["images"] == (split["split"] == "test").sum()
    leaked = pd.read_csv(dest / "leakage/split.csv").groupby("patient")["split"].nunique() > 1
    assert audit["leaked_patients"] <= leaked.sum() and audit["leaked_patients"] > 0
    assert audit["training"]["epochs"] == 3 and (dest / "leakage/model/best.ckpt").is_file()

    report = json.loads((dest / "reports/metrics.json").read_text())
    assert report["synthetic"] is True and report["split_protocol"] == "patient"
    assert report["primary_seed"] == 42 and report["seeds"]["resnet18"]["seeds"] == [42]  # one seed: no spread
    assert report["leakage"]["leaked_patients"] == audit["leaked_patients"]
    assert report["leakage"]["image"]["auroc"]["value"] == pytest.approx(audit["training"]["test"]["auroc"], abs=1e-6)
    for arch, entry in report["archs"].items():  # floors a broken model would not reach
        assert entry["at_0.5"]["auroc"]["value"] >= 0.8 and entry["at_0.5"]["accuracy"]["value"] >= 0.7, arch
    markdown = (dest / "reports/report.md").read_text()
    assert "SYNTHETIC DATA" in markdown and "The study and this run" in markdown
    assert "One training seed (42): no seed spread can be estimated" in markdown
    assert "## Leakage audit: patient-wise vs image-level split" in markdown
    # what reproduces where, and the one environment both trainings ran in (this machine)
    assert "## Reproducibility: what is identical where" in markdown
    (environment,) = report["environments"]
    assert environment["trainings"] == ["resnet18 s42", "densenet121 s42"] and environment["deterministic"] == "True"
    assert environment["machine"].startswith(training.cpu_model())
    for line in markdown.splitlines():  # every figure the Markdown links exists
        if line.startswith("!["):
            assert (dest / "reports" / line.split("](")[1].rstrip(")")).is_file(), line
    assert "data:image/png;base64," in (dest / "reports/report.html").read_text()
    with contextlib.chdir(dest), Repo() as dvc_repo:  # DVC's Python API: the data `dvc plots show` renders
        plots = dvc_repo.plots.show()["workspace"]["sources"]["data"]
    for name in ("confusion/resnet18.csv", "roc/densenet121.csv"):
        assert plots[f"reports/plots/{name}"]["data"], name  # read by DVC, rows present
    compare = cli("compare", "--last", "5", cwd=dest)  # in this process: the same console-script entry point
    assert compare.returncode == 0, compare.stderr
    assert "report @" in compare.stdout and "resnet18" in compare.stdout
    # the real report run against itself (one seed: the patient bootstrap of the primary seeds' real predictions and
    # per-image measures, downloaded from the training runs): paired, nothing changed
    against = cli("compare", "--against", "HEAD", "--markdown", "--bootstrap", "200", cwd=dest)
    assert against.returncode == 0, against.stderr
    assert "| resnet18 | auroc |" in against.stdout and "| **changed** |" not in against.stdout
    assert "bootstrap: patients, paired images" in against.stdout  # the same test images, paired
    assert "0 of " in against.stdout and "metrics changed beyond the noise" in against.stdout

    with contextlib.chdir(dest), Repo() as dvc_repo:  # what `dvc repro` runs: nothing is left to reproduce
        assert dvc_repo.reproduce() == []
    assert dvc_status(dest) == {}  # `dvc status`: "Data and pipelines are up to date."


def test_compare_flags_what_a_real_rerun_changed_and_nothing_else(repo, tmp_path):
    """Two real report runs that differ: the same trainings, resnet18's explanations made again with the pointing
    game's tolerance at a quarter of the image side (more hits). `compare --against` the first report flags resnet18's
    Grad-CAM pointing and nothing else, bootstrapping from the tables each report run keeps (the explain stage has
    overwritten the training run's own per_image.csv meanwhile). The workspace is put back afterwards."""
    dest, env = repo
    first = tracking.report_run(None, uri=f"sqlite:///{dest}/mlflow.db")["run_id"]
    kept = ["params.yaml", "dvc.lock", "explain/resnet18/seed42", "metrics/explain/resnet18/seed42.json", "reports"]
    saved = tmp_path / "saved"
    for name in kept:
        (saved / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (dest / name).is_dir() else shutil.copy2)(dest / name, saved / name)
    try:
        params = (dest / "params.yaml").read_text()
        assert "  pointing_tolerance: 0.0 " in params
        (dest / "params.yaml").write_text(
            params.replace("  pointing_tolerance: 0.0 ", "  pointing_tolerance: 0.25 ", 1)
        )
        run(["dvc", "repro", "-s", "explain@resnet18-42"], dest, env)
        run(["dvc", "repro", "-s", "report"], dest, env)
        result = cli("compare", "--against", first, "--markdown", "--bootstrap", "200", cwd=dest)
        assert result.returncode == 0, result.stderr
        found = {}
        for line in result.stdout.splitlines():
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            if len(cells) == 8 and cells[0] in ("resnet18", "densenet121"):
                found[cells[0], cells[1]] = cells[2:]
        pointing = found["resnet18", "gradcam/pointing"]
        assert pointing[4] == "changed" and float(pointing[2]) > 0, pointing
        unchanged = {key: cells for key, cells in found.items() if key != ("resnet18", "gradcam/pointing")}
        assert ("densenet121", "auroc") in unchanged and ("resnet18", "gradcam/energy") in unchanged
        assert all(c[2] == "+0.000" and c[4] == "within noise" for c in unchanged.values()), unchanged
        assert f"1 of {len(found)} metrics changed beyond the noise" in result.stdout
    finally:
        for name in kept:
            shutil.rmtree(dest / name) if (dest / name).is_dir() else (dest / name).unlink(missing_ok=True)
            (shutil.copytree if (saved / name).is_dir() else shutil.copy2)(saved / name, dest / name)
    assert dvc_status(dest) == {}


def test_changing_a_param_invalidates_only_the_stages_that_declare_it(repo):
    dest, _ = repo
    original = (dest / "params.yaml").read_text()
    try:
        (dest / "params.yaml").write_text(original.replace("group_by: patient", "group_by: image"))
        changed = stale_stages(dest)
        assert "split" in changed and not changed & {"download", "sample"}
        (dest / "params.yaml").write_text(original.replace("  patience:", "  patience: 9  # was", 1))
        assert stale_stages(dest) == {"train@resnet18-42", "train@densenet121-42", "leakage"}
        (dest / "params.yaml").write_text(original.replace("  iobb_level:", "  iobb_level: 0.4  # was", 1))
        assert stale_stages(dest) == {"explain@resnet18-42", "explain@densenet121-42"}
        (dest / "params.yaml").write_text(original.replace("seed: 42", "seed: 7", 1))
        assert {"report", "explain@resnet18-42"} <= stale_stages(dest)
        # another pair: only the new backbone's stages and those that compare the pair; densenet121 is not retrained
        (dest / "params.yaml").write_text(original.replace("[resnet18, densenet121]", "[resnet50, densenet121]", 1))
        assert stale_stages(dest) == {"train@resnet50-42", "explain@resnet50-42", "consistency", "leakage", "report"}
        # another training seed: only its trainings and explanations, and the report (the seed spread); the primary
        # seed's models stay (consistency, whose dependency is the whole explain folder, is not stale yet: `dvc repro`
        # re-runs it once the new explanations are there)
        (dest / "params.yaml").write_text(original.replace("seeds: [42]", "seeds: [42, 43]", 1))
        assert stale_stages(dest) == {
            *(f"{stage}@{arch}-43" for stage in ("train", "explain") for arch in ("resnet18", "densenet121")),
            "report",
        }
    finally:
        (dest / "params.yaml").write_text(original)
    assert stale_stages(dest) == set()


def dvc_status(dest: Path) -> dict:
    """What ``dvc status --json`` prints (the CLI prints this call's result), without a new interpreter each time."""
    with contextlib.chdir(dest), Repo() as repo:  # stage names as the CLI prints them: relative to the working folder
        return repo.status()


def stale_stages(dest: Path) -> set[str]:
    return set(dvc_status(dest))


def test_outputs_travel_through_a_dvc_remote_to_a_fresh_clone(repo, tmp_path):
    """`dvc push` to a remote, `git clone` + `dvc pull` elsewhere: the same checkpoints; only data/raw (kept out of the
    DVC cache on purpose, 42 GB on real data) is missing there, so only the download stage is stale."""
    dest, env = repo
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-q", "-m", "pipeline outputs"], dest, env)
    run(["dvc", "push"], dest, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(dest), str(clone)], tmp_path, env)
    run(["dvc", "pull"], clone, env)
    for arch in yaml.safe_load((dest / "params.yaml").read_text())["model"]["archs"]:
        best = f"models/{arch}/seed42/best.ckpt"
        assert (clone / best).read_bytes() == (dest / best).read_bytes()
        assert (clone / f"explain/{arch}/seed42/maps.npz").is_file()
    status = dvc_status(clone)
    assert set(status) == {"download", "sample", "split", "leakage"}, status  # data/raw and the stages reading it
    assert all("data/raw" in json.dumps(status[name]) for name in ("sample", "split", "leakage")), status
