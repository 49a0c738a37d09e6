"""The workspace names the pipeline's files: the same paths dvc.yaml declares, and clear errors for missing inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrexplain.errors import CxrError
from cxrexplain.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    """Every path dvc.yaml names as a dep, out or metric, as DVC itself resolves it (the matrix over model.archs and
    ``${model.archs[0]}`` interpolations, from params.yaml)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {entry.def_path for stage in repo.index.stages for entry in (*stage.deps, *stage.outs)}


def test_dvc_yaml_names_the_workspace_paths() -> None:
    ws = Workspace()
    declared = _declared()
    arch = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]["archs"][0]
    expected = {
        ws.raw,
        ws.cache.dir,
        ws.split,
        ws.stage_metrics("sample"),
        ws.stage_metrics("split"),
        ws.model(arch).dir,
        ws.model(arch).best,
        ws.model(arch).predictions,
        ws.model(arch).history,
        ws.stage_metrics("train", arch),
        ws.explain(arch).dir,
        ws.explain(arch).maps,
        ws.stage_metrics("explain", arch),
        ws.consistency,
        ws.consistency_metrics,
        ws.leakage.dir,
        ws.leakage.split,
        ws.leakage.model.predictions,
        ws.stage_metrics("leakage"),
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
    for path in (ws.raw, ws.cache.images, ws.split, ws.model("x").last, ws.explain("x").per_image, ws.report.html):
        assert path.is_relative_to(tmp_path)
    assert ws.leakage.model.best == tmp_path / "leakage" / "model" / "best.ckpt"
    assert ws.leakage.split == tmp_path / "leakage" / "split.csv"
    assert ws.stage_metrics("explain", "x") == tmp_path / "metrics" / "explain" / "x.json"
    assert ws.explain("x").gallery("gradcam") == tmp_path / "explain" / "x" / "gallery_gradcam.png"


def test_require_names_the_missing_files_and_the_stage(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    files = ws.model("resnet50")
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
    out = ws.explain("resnet50").dir
    with ws.output(out) as tmp:
        (tmp / "per_image.csv").write_text("old")
    with pytest.raises(KeyboardInterrupt), ws.output(out) as tmp:
        (tmp / "per_image.csv").write_text("new")
        raise KeyboardInterrupt
    assert (out / "per_image.csv").read_text() == "old"
    assert [p.name for p in out.parent.iterdir()] == ["resnet50"]
