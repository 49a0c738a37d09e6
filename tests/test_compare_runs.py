"""``cxrexplain compare --against``: report runs built in MLflow here (training runs with their predictions and Grad-CAM
per-image tables, a summary run made by tracking.summary_run with report/metrics.json computed by the seed spread's
own functions), compared on the SQLite default and on a tracking server; two runs that differ and two that do not,
with three seeds (the seed spread decides) and with one (the bootstrap of the primary seeds decides)."""

import io
import json
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cxrexplain import tracking
from cxrexplain.config import validate
from cxrexplain.evaluation import seeds as seed_spread
from cxrexplain.evaluation.compare import LEGEND
from inprocess import cli

ARCH = "resnet50"


def tables(seed: int, strength: float, images: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training seed's predictions.csv (8 val, ``images`` test images of 2 images per patient, labels 0, 1, ...)
    and its explain per_image.csv: ``strength`` 0 to 1 separates the classes and raises Grad-CAM's pointing."""
    rng = np.random.default_rng(seed)
    n = 8 + images
    labels = np.arange(n) % 2
    predictions = pd.DataFrame(
        {
            "split": ["val"] * 8 + ["test"] * images,
            "image": [f"{k:08d}_000.png" for k in range(n)],
            "patient": [str(k // 2) for k in range(n)],
            "label": labels,
            "probability": np.clip(strength * labels + (1 - strength) * rng.random(n), 0, 1),
        }
    )
    test = predictions[predictions["split"] == "test"]
    per_image = pd.DataFrame(
        {
            "method": "gradcam",
            "index": range(images),
            "image": test["image"].to_numpy(),
            "patient": test["patient"].to_numpy(),
            "pointing": (rng.random(images) < 0.2 + 0.7 * strength).astype(float),
            "deletion": 0.5 - 0.3 * strength + 0.05 * rng.random(images),
        }
    )
    return predictions, per_image


def make_report(
    uri: str,
    monkeypatch,
    *,
    commit: str,
    seeds: tuple[int, ...],
    strength: float,
    offset: int = 0,
    keep_tables: bool = True,
) -> str:
    """A report run of ``commit`` over one training run per seed (seed ``s`` draws with ``s + offset``): each training
    run gets train/predictions.csv and explain/per_image.csv, the summary run report/metrics.json and, as the report
    stage logs them (``keep_tables``; report runs made before did not), the primary seed's two tables under
    report/tables/<arch>/. Returns its id."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(tracking.EXPERIMENT, artifact_location=tracking.artifact_location(uri))
    )
    runs, predictions, explained = {}, {}, {}
    for seed in seeds:
        frame, per_image = tables(seed + offset, strength)
        run_id = client.create_run(experiment_id, tags={"dvc.stage": "train", "git.commit": commit}).info.run_id
        for path, table in (("train/predictions.csv", frame), ("explain/per_image.csv", per_image)):
            client.log_text(run_id, table.to_csv(index=False), path)
        runs[seed], predictions[seed] = run_id, frame
        explained[seed] = {
            "methods": {"gradcam": {m: {"mean": float(per_image[m].mean())} for m in ("pointing", "deletion")}}
        }
    table = seed_spread.seed_table(predictions, explained)
    metrics = {
        "primary_seed": seeds[0],
        "seeds": {ARCH: {"seeds": list(seeds), "metrics": seed_spread.summarise(table)}},
    }
    monkeypatch.setattr(tracking, "git_state", lambda cwd=None: (commit, False))
    summary = tracking.summary_run(
        validate({"seeds": list(seeds), "data": {"source": "synthetic"}}), {ARCH: runs}, uri=uri
    )
    client.log_text(summary, json.dumps(metrics), tracking.REPORT_METRICS)
    if keep_tables:
        primary, per_image = predictions[seeds[0]], tables(seeds[0] + offset, strength)[1]
        for name, table in (("predictions.csv", primary), ("per_image.csv", per_image)):
            client.log_text(summary, table.to_csv(index=False), f"{tracking.REPORT_TABLES}/{ARCH}/{name}")
    return summary


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the file (a new one costs seconds of schema migrations); tests keep apart by experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(params=["sqlite", "server"])
def store(request, monkeypatch, sqlite_uri, mlflow_server) -> str:
    """A tracking URI (the SQLite default's kind, or the session's server), with an experiment of this test's own."""
    monkeypatch.setattr(tracking, "EXPERIMENT", f"compare-{uuid.uuid4().hex[:8]}")
    return mlflow_server if request.param == "server" else sqlite_uri


def compare(uri: str, *args: str, cwd: Path):
    """``cxrexplain compare`` in this test's experiment (200 bootstrap resamples: enough for these clear cases)."""
    command = ("compare", "--experiment", tracking.EXPERIMENT, "--bootstrap", "200", *args)
    return cli(*command, cwd=cwd, env={"MLFLOW_TRACKING_URI": uri})


def rows(markdown: str) -> dict[str, list[str]]:
    """The Markdown table's rows by metric: the cells after arch and metric (bold marks dropped)."""
    out = {}
    for line in markdown.splitlines():
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] == ARCH:
            out[cells[1]] = cells[2:]
    return out


@pytest.mark.parametrize("seeds", [(42, 43, 44), (42,)], ids=["three-seeds", "one-seed"])
def test_compare_against_flags_a_shift_and_not_a_repeat(store, monkeypatch, tmp_path, seeds):
    ref = make_report(store, monkeypatch, commit="aaaa" + "0" * 36, seeds=seeds, strength=0.3)
    repeat = make_report(store, monkeypatch, commit="bbbb" + "0" * 36, seeds=seeds, strength=0.3)  # same models
    shifted = make_report(store, monkeypatch, commit="cccc" + "0" * 36, seeds=seeds, strength=0.9, offset=100)
    method = "seeds: Welch t (3 vs 3)" if len(seeds) > 1 else "bootstrap: patients, paired images"

    same = compare(store, "--against", "aaaa", "--run", repeat, "--markdown", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    found = rows(same.stdout)
    assert set(found) == {"accuracy", "precision", "recall", "auroc", "auprc", "gradcam/deletion", "gradcam/pointing"}
    assert all(cells[4] == "within noise" and cells[2] == "+0.000" and cells[5] == method for cells in found.values())
    assert f"**REF** report @ aaaa000 (run {ref}, seeds {','.join(map(str, seeds))}" in same.stdout
    assert f"**RUN** report @ bbbb000 (run {repeat}" in same.stdout and LEGEND in same.stdout

    changed = compare(store, "--against", ref, "--markdown", cwd=tmp_path)  # RUN: the newest report run, `shifted`
    assert changed.returncode == 0, changed.stderr
    assert f"**RUN** report @ cccc000 (run {shifted}" in changed.stdout
    found = rows(changed.stdout)
    for metric in ("accuracy", "auroc", "gradcam/pointing", "gradcam/deletion"):
        assert found[metric][4] == "changed", (metric, found[metric])
    assert float(found["accuracy"][2]) > 0.2 and float(found["gradcam/deletion"][2]) < -0.1

    table = compare(store, "--against", "aaaa", cwd=tmp_path)  # the rich table
    assert table.returncode == 0, table.stderr
    assert "changed" in table.stdout and method.split(":")[0] in table.stdout and "RUN report @ cccc000" in table.stdout


def test_one_seed_against_three_seeds_bootstraps_the_primary_seeds(store, monkeypatch, tmp_path):
    make_report(store, monkeypatch, commit="dddd" + "0" * 36, seeds=(42, 43, 44), strength=0.3)
    make_report(store, monkeypatch, commit="eeee" + "0" * 36, seeds=(42,), strength=0.3)
    result = compare(store, "--against", "dddd", "--markdown", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = rows(result.stdout)
    assert all(c[5] == "bootstrap: patients, paired images" and c[4] == "within noise" for c in found.values())
    assert "±" not in result.stdout.split("|---")[1]  # primary seeds' values, no seed sd


def test_refs_that_match_nothing_or_several_commits_or_a_training_run_are_clear_errors(store, monkeypatch, tmp_path):
    first = make_report(store, monkeypatch, commit="abcd1" + "0" * 35, seeds=(42,), strength=0.3)
    make_report(store, monkeypatch, commit="abcd2" + "0" * 35, seeds=(42,), strength=0.3)
    train = MlflowClient(tracking_uri=store).get_run(first).data.tags[f"report.run.{ARCH}"]
    for ref, message in (
        ("abcd", "'abcd' is ambiguous: report runs of 2 commits start with it (abcd10000000, abcd20000000)"),
        ("ffff", "'ffff': no report run of a commit ffff"),
        ("abc", "give at least 4 characters of a commit"),
        ("no-such-branch", "'no-such-branch': not a commit"),
        (train, f"run {train} is a train run, not a report run"),
    ):
        result = compare(store, "--against", ref, cwd=tmp_path)
        assert result.returncode == 2 and message in " ".join(result.stderr.split()), (ref, result.stderr)
        assert "Traceback" not in result.stderr
    assert compare(store, "--markdown", cwd=tmp_path).returncode == 2  # --markdown compares two reports
    few = compare(store, "--against", "abcd1", "--bootstrap", "10", cwd=tmp_path)
    assert few.returncode == 2 and "--bootstrap: at least 100 resamples" in few.stderr
    bare = MlflowClient(tracking_uri=store).create_run(
        MlflowClient(tracking_uri=store).get_experiment_by_name(tracking.EXPERIMENT).experiment_id,
        tags={"dvc.stage": "report", "git.commit": "9999" + "0" * 36},
    )
    missing = compare(store, "--against", "abcd1", "--run", bare.info.run_id, cwd=tmp_path)
    assert missing.returncode == 2 and f"has no artifact {tracking.REPORT_METRICS}" in " ".join(missing.stderr.split())


def test_an_unreachable_server_and_an_empty_store_are_clear_errors(tmp_path, monkeypatch):
    dead = compare("http://127.0.0.1:9", "--against", "abcd", cwd=tmp_path)
    assert dead.returncode == 2 and "is unreachable" in dead.stderr
    empty = compare(f"sqlite:///{tmp_path}/empty.db", "--against", "abcd", cwd=tmp_path)
    assert empty.returncode == 2 and "no experiment" in empty.stderr


def test_a_git_revision_names_its_commit(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one")
    here = Path.cwd()
    try:
        import os

        os.chdir(tmp_path)
        assert tracking._commit_of("HEAD") == git("rev-parse", "HEAD")
    finally:
        os.chdir(here)
    assert tracking._commit_of("ABCDEF") == "abcdef"


def test_a_report_is_compared_from_its_own_tables_and_an_overwritten_training_table_is_refused(
    sqlite_uri, monkeypatch, tmp_path
):
    """The model explained again after a report (here: Grad-CAM's pointing now all hits) overwrites its training
    run's explain/per_image.csv. A report run compares from the copies it keeps; one that kept none (made before) is
    refused, since its training run's table would show the change as none."""
    monkeypatch.setattr(tracking, "EXPERIMENT", f"compare-{uuid.uuid4().hex[:8]}")
    uri, client = sqlite_uri, MlflowClient(tracking_uri=sqlite_uri)
    old = make_report(uri, monkeypatch, commit="5555" + "0" * 36, seeds=(42,), strength=0.3, keep_tables=False)
    ref = make_report(uri, monkeypatch, commit="6666" + "0" * 36, seeds=(42,), strength=0.3)
    for report_id in (old, ref):  # explained again into the same training runs, with every pointing a hit
        train = client.get_run(report_id).data.tags[f"report.run.{ARCH}"]
        again = tables(42, 0.3)[1].assign(pointing=1.0)
        client.log_text(train, again.to_csv(index=False), tracking.PER_IMAGE)
    repeat = make_report(uri, monkeypatch, commit="7777" + "0" * 36, seeds=(42,), strength=0.3)
    same = compare(uri, "--against", ref, "--run", repeat, "--markdown", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert all(cells[4] == "within noise" and cells[2] == "+0.000" for cells in rows(same.stdout).values())
    refused = compare(uri, "--against", old, "--run", repeat, cwd=tmp_path)
    message = " ".join(refused.stderr.split())
    assert (
        refused.returncode == 2 and f"report run {old}: the per-image tables of {ARCH} give gradcam/pointing" in message
    )
    assert "they are not the tables it was made from" in message and "Traceback" not in refused.stderr


def test_primary_tables_come_from_the_primary_seeds_training_run(sqlite_uri, monkeypatch):
    uri = sqlite_uri
    run_id = make_report(uri, monkeypatch, commit="1234" + "0" * 36, seeds=(42, 43), strength=0.5, keep_tables=False)
    facts = tracking.report_run(run_id, uri=uri)
    assert facts["seeds"] == "42,43" and facts["commit"].startswith("1234") and facts["dirty"] is False
    predictions, per_image = tracking.primary_tables(facts, ARCH, uri=uri)
    expected = tables(42, 0.5)
    pd.testing.assert_frame_equal(predictions, pd.read_csv(io.StringIO(expected[0].to_csv(index=False))))
    assert list(per_image.columns) == list(expected[1].columns)
