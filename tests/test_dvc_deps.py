"""dvc.yaml declares, for every stage, the source files its code really imports (DVC re-runs a stage only when a
declared dependency changes: a missing one goes stale silently)."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# modules that decide how a stage runs, never what it writes (params are tracked by `params:`, not by these files)
INFRASTRUCTURE = {
    "cxrexplain",
    "cxrexplain.errors",
    "cxrexplain.io",
    "cxrexplain.logs",
    "cxrexplain.progress",
    "cxrexplain.tracking",
    "cxrexplain.stages",
    "cxrexplain.workspace",
}
# config.py is a dependency (its validators shape the values a stage gets) but its imports are not followed: it
# imports names.py and the measures' registry only for the names it accepts, and a new CAM method must not make
# `sample` stale
NOT_FOLLOWED = INFRASTRUCTURE | {"cxrexplain.config"}


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {n for n in found if n.split(".")[0] == "cxrexplain" and _module_file(n) is not None}


def _only_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def imported_files(module: str) -> set[Path]:
    """Every cxrexplain source file ``module`` imports, transitively (parent packages' __init__ included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        if name not in NOT_FOLLOWED:
            todo += sorted(_imports(_module_file(name), name))
    files = {_module_file(n) for n in seen if n not in INFRASTRUCTURE}
    return {f.relative_to(ROOT) for f in files if not (f.name == "__init__.py" and _only_docstring(f))}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(stages()))
def test_stage_deps_cover_every_module_it_imports(stage):
    spec = stages()[stage]
    deps = [Path(d) for d in spec["deps"]]
    needed = imported_files(f"cxrexplain.stages.{stage}")
    missing = sorted(
        str(f) for f in needed if not any(f == d or d in f.parents for d in deps if str(d).startswith("src/"))
    )
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not declare: {missing}"
    declared = [d for d in deps if str(d).startswith("src/")]
    unused = sorted(str(d) for d in declared if not any(f == d or d in f.parents for f in needed))
    assert not unused, f"dvc.yaml stage {stage!r} declares modules it never imports: {unused}"
