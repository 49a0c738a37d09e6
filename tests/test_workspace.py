"""The workspace names the pipeline's files: the same paths dvc.yaml declares, and clear errors for missing inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrexplain.errors import CxrError
from cxrexplain.workspace import Workspace, stage_name

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    """Every path dvc.yaml names as a dep, out or metric, as DVC itself resolves it (the matrix over model.archs and
    seeds, and ``${model.archs[0]}`` / ``${seeds[0]}`` interpolations, from params.yaml)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {entry.def_path for stage in repo.index.stages for entry in (*stage.deps, *stage.outs)}


def test_dvc_yaml_names_the_workspace_paths() -> None:
    ws = Workspace()
    declared = _declared()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    arch, seeds = params["model"]["archs"][0], params["seeds"]
    assert len(seeds) >= 2, "params.yaml (the demo) trains several seeds: the matrix's second seed is checked too"
    per_seed = {
        path
        for seed in seeds
        for path in (
            ws.model(arch, seed).dir,
            ws.model(arch, seed).best,
            ws.model(arch, seed).predictions,
            ws.stage_metrics("train", arch, seed),
            ws.explain(arch, seed).dir,
            ws.stage_metrics("explain", arch, seed),
        )
    }
    expected = per_seed | {
        ws.raw,
        ws.cache.dir,
        ws.split,
        ws.stage_metrics("sample"),
        ws.stage_metrics("split"),
        ws.model(arch, seeds[0]).dir.parent.parent,  # report: every model (models/)
        ws.explain(arch, seeds[0]).dir.parent.parent,  # consistency and report: every explanation (explain/)
        ws.stage_metrics("train", arch, seeds[0]).parent.parent,  # report: the trainings' metrics (metrics/train/)
        ws.stage_metrics("explain", arch, seeds[0]).parent.parent,  # and their metrics (metrics/explain/)
        ws.consistency,
        ws.consistency_metrics,
        ws.leakage.dir,
        ws.leakage.split,
        ws.leakage.model.predictions,
        ws.stage_metrics("leakage"),
        ws.ratings.dir,  # ratings: the readers' files
        ws.ratings_metrics,
        ws.report.markdown,
        ws.report.html,
        ws.report.metrics,
        ws.report.figures,
        ws.report.plots,
    }
    missing = sorted(p.as_posix() for p in expected if p.as_posix() not in declared)
    assert not missing, f"dvc.yaml does not name {missing}"


def test_root_moves_every_path(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    for path in (
        ws.raw,
        ws.cache.images,
        ws.split,
        ws.model("x", 1).last,
        ws.explain("x", 1).per_image,
        ws.report.html,
    ):
        assert path.is_relative_to(tmp_path)
    assert ws.leakage.model.best == tmp_path / "leakage" / "model" / "best.ckpt"
    assert ws.leakage.split == tmp_path / "leakage" / "split.csv"
    assert ws.stage_metrics("explain", "x", 7) == tmp_path / "metrics" / "explain" / "x" / "seed7.json"
    assert ws.explain("x", 7).gallery("gradcam") == tmp_path / "explain" / "x" / "seed7" / "gallery_gradcam.png"
    assert ws.model("x", 7).best == tmp_path / "models" / "x" / "seed7" / "best.ckpt"
    assert ws.ratings.reader("ann") == tmp_path / "ratings" / "ann.csv"
    assert ws.ratings_metrics == tmp_path / "metrics" / "ratings.json"
    with pytest.raises(TypeError, match="needs the training seed"):
        ws.stage_metrics("train", "x")


def test_stage_names_are_dvcs_matrix_names() -> None:
    """DVC names a matrix stage ``<stage>@<arch>-<seed>``: what dvc.yaml's arch × seed matrix resolves to."""
    from dvc.repo import Repo

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    with Repo(str(ROOT)) as repo:
        names = {stage.addressing for stage in repo.index.stages}
    for arch in params["model"]["archs"]:
        for seed in params["seeds"]:
            assert {stage_name("train", arch, seed), stage_name("explain", arch, seed)} <= names


def test_require_names_the_missing_files_and_the_stage(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    files = ws.model("resnet50", 42)
    files.dir.mkdir(parents=True)
    files.best.write_bytes(b"x")
    ws.require([files.best], needed_by="explain@resnet50", made_by="train@resnet50")  # present: no error
    with pytest.raises(CxrError) as error:
        ws.require(files.complete, needed_by="explain@resnet50", made_by="train@resnet50")
    message = str(error.value)
    assert message.startswith("explain@resnet50: missing input")
    assert str(files.predictions) in message and str(files.run_ref) in message
    assert str(files.best) not in message
    assert "dvc repro train@resnet50" in message


def test_output_is_all_or_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    out = ws.explain("resnet50", 42).dir
    with ws.output(out) as tmp:
        (tmp / "per_image.csv").write_text("old")
    with pytest.raises(KeyboardInterrupt), ws.output(out) as tmp:
        (tmp / "per_image.csv").write_text("new")
        raise KeyboardInterrupt
    assert (out / "per_image.csv").read_text() == "old"
    assert [p.name for p in out.parent.iterdir()] == ["seed42"]
