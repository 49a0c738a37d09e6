"""Every artefact of the pipeline by name, and the checks and atomic outputs the stages use.

No other module spells a pipeline path: a stage asks its :class:`Workspace` for ``ws.model(arch).best`` or
``ws.explain(arch).maps``, checks its inputs with :meth:`Workspace.require` (a missing or incomplete input is a
:class:`~cxrexplain.errors.CxrError` naming the file and the stage that makes it) and writes through
:meth:`Workspace.output` (a uniquely named temporary folder renamed onto the output when the stage succeeds).
``dvc.yaml`` names the same paths; ``tests/test_workspace.py`` checks that the two agree.

Layout, relative to the repository root (``Workspace(root)`` moves all of it, as the tests do)::

    data/raw/                  the NIH mirror (download)
    data/cache/                images.npy, index.csv, rejects.csv (sample)
    data/split.csv             (split)
    models/<arch>/seed<s>/     best.ckpt, last.ckpt, predictions.csv, history.csv, mlflow_run.json (train@<arch>-<s>)
    explain/<arch>/seed<s>/    per_image.csv, summary.csv, paired.csv, sanity*.csv, maps.npz, galleries
                               (explain@<arch>-<s>)
    consistency/consistency.csv (consistency)
    leakage/                   split.csv (the other split protocol), model/ (as models/<arch>/seed<s>/) (leakage)
    ratings/                   README.md, <reader>.csv: the readers' ratings of the maps (``cxrexplain view``; in git,
                               never a stage's output: the ratings stage reads them)
    metrics/                   sample.json, split.json, train/<arch>/seed<s>.json, explain/<arch>/seed<s>.json,
                               leakage.json, explain/consistency.json, ratings.json (ratings)

``<s>`` is a training seed (``params.seeds``): every architecture is trained and explained once per seed, and DVC
names those stages ``train@<arch>-<s>`` and ``explain@<arch>-<s>`` (:func:`stage_name`).
    reports/                   report.md, report.html, metrics.json, figures/, plots/ (report)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cxrexplain.errors import CxrError
from cxrexplain.io import atomic_dir, atomic_file


@dataclass(frozen=True)
class _Folder:
    """A folder of named files: each subclass maps its attributes to file names once, in ``FILES``."""

    dir: Path
    FILES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for attribute, name in self.FILES.items():
            object.__setattr__(self, attribute, self.dir / name)


@dataclass(frozen=True)
class CacheFiles(_Folder):
    """``data/cache/``: the cohort's decoded images and their index (stage ``sample``)."""

    FILES: ClassVar[dict[str, str]] = {"images": "images.npy", "index": "index.csv", "rejects": "rejects.csv"}
    images: Path = field(init=False)
    index: Path = field(init=False)
    rejects: Path = field(init=False)

    @property
    def complete(self) -> tuple[Path, ...]:
        return (self.images, self.index, self.rejects)


@dataclass(frozen=True)
class ModelFiles(_Folder):
    """``models/<arch>/seed<s>/``: one trained backbone (stage ``train@<arch>-<s>``)."""

    FILES: ClassVar[dict[str, str]] = {
        "best": "best.ckpt",
        "last": "last.ckpt",
        "predictions": "predictions.csv",
        "history": "history.csv",
        "run_ref": "mlflow_run.json",
    }
    best: Path = field(init=False)
    last: Path = field(init=False)
    predictions: Path = field(init=False)
    history: Path = field(init=False)
    run_ref: Path = field(init=False)

    @property
    def complete(self) -> tuple[Path, ...]:
        """What a finished training leaves (``last.ckpt`` too: a later ``--resume`` needs it)."""
        return (self.best, self.last, self.predictions, self.history, self.run_ref)


@dataclass(frozen=True)
class ExplainFiles(_Folder):
    """``explain/<arch>/seed<s>/``: explanations and their measures (stage ``explain@<arch>-<s>``)."""

    FILES: ClassVar[dict[str, str]] = {
        "per_image": "per_image.csv",
        "summary": "summary.csv",
        "paired": "paired.csv",
        "sanity_curve": "sanity_curve.csv",
        "sanity": "sanity.csv",
        "data_randomisation": "data_randomisation.csv",
        "maps": "maps.npz",
        "methods_figure": "methods.png",
    }
    per_image: Path = field(init=False)
    summary: Path = field(init=False)
    paired: Path = field(init=False)
    sanity_curve: Path = field(init=False)
    sanity: Path = field(init=False)
    data_randomisation: Path = field(init=False)
    maps: Path = field(init=False)
    methods_figure: Path = field(init=False)

    def gallery(self, method: str) -> Path:
        return self.dir / f"gallery_{method}.png"

    @property
    def tables(self) -> tuple[Path, ...]:
        """The CSV tables (``data_randomisation.csv`` only when that test ran)."""
        return (self.per_image, self.summary, self.paired, self.sanity, self.sanity_curve, self.data_randomisation)

    @property
    def complete(self) -> tuple[Path, ...]:
        return (self.per_image, self.summary, self.paired, self.sanity_curve, self.sanity, self.maps)


@dataclass(frozen=True)
class LeakageFiles(_Folder):
    """``leakage/``: the leakage audit (stage ``leakage``): the cohort split by the other protocol (``split.csv``)
    and the first architecture trained on it (``model/``, laid out as ``models/<arch>/``)."""

    FILES: ClassVar[dict[str, str]] = {"split": "split.csv"}
    split: Path = field(init=False)

    @property
    def model(self) -> ModelFiles:
        return ModelFiles(self.dir / "model")


@dataclass(frozen=True)
class RatingsFiles(_Folder):
    """``ratings/``: one CSV per reader, written by ``cxrexplain view``, read by stage ``ratings``. The folder always
    exists (its ``README.md`` is in git), so that DVC can depend on it before anyone has rated anything."""

    FILES: ClassVar[dict[str, str]] = {"readme": "README.md"}
    readme: Path = field(init=False)

    def reader(self, reader: str) -> Path:
        """``ratings/<reader>.csv`` (the reader id is checked by :func:`cxrexplain.evaluation.ratings.check_reader`)."""
        return self.dir / f"{reader}.csv"

    def readers(self) -> list[Path]:
        """Every reader's CSV, sorted by name (never the ``.<name>.<random>.part`` temporaries of a write)."""
        return sorted(p for p in self.dir.glob("*.csv") if not p.name.startswith("."))


@dataclass(frozen=True)
class ReportFiles(_Folder):
    """``reports/``: the document, its figures, its metrics and DVC's plot data (stage ``report``)."""

    FILES: ClassVar[dict[str, str]] = {
        "markdown": "report.md",
        "html": "report.html",
        "metrics": "metrics.json",
        "figures": "figures",
        "plots": "plots",
    }
    markdown: Path = field(init=False)
    html: Path = field(init=False)
    metrics: Path = field(init=False)
    figures: Path = field(init=False)
    plots: Path = field(init=False)


def stage_name(stage: str, arch: str, seed: int) -> str:
    """DVC's name of one stage of the arch × seed matrix: ``train@resnet50-42`` (``dvc repro`` takes it)."""
    return f"{stage}@{arch}-{seed}"


@dataclass(frozen=True)
class Workspace:
    """The pipeline's files under ``root`` (the repository root by default)."""

    root: Path = Path(".")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------------------------------------- inputs, data
    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def cache(self) -> CacheFiles:
        return CacheFiles(self.root / "data" / "cache")

    @property
    def split(self) -> Path:
        return self.root / "data" / "split.csv"

    # ------------------------------------------------------------------------------------------ models, explanations
    def model(self, arch: str, seed: int) -> ModelFiles:
        """The backbone ``arch`` trained with the training seed ``seed``."""
        return ModelFiles(self.root / "models" / arch / f"seed{seed}")

    def explain(self, arch: str, seed: int) -> ExplainFiles:
        return ExplainFiles(self.root / "explain" / arch / f"seed{seed}")

    @property
    def consistency(self) -> Path:
        """``consistency/consistency.csv``: outside ``explain/``, which the consistency stage depends on whole."""
        return self.root / "consistency" / "consistency.csv"

    @property
    def leakage(self) -> LeakageFiles:
        return LeakageFiles(self.root / "leakage")

    # ---------------------------------------------------------------------------------------------- metrics, report
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def stage_metrics(self, stage: str, arch: str | None = None, seed: int | None = None) -> Path:
        """``metrics/<stage>.json``, or ``metrics/<stage>/<arch>/seed<seed>.json`` for a stage of the arch × seed
        matrix."""
        if arch is None:
            return self.metrics / f"{stage}.json"
        if seed is None:
            raise TypeError(f"stage_metrics({stage!r}, {arch!r}): a per-architecture stage needs the training seed")
        return self.metrics / stage / arch / f"seed{seed}.json"

    @property
    def consistency_metrics(self) -> Path:
        return self.metrics / "explain" / "consistency.json"

    @property
    def report(self) -> ReportFiles:
        return ReportFiles(self.root / "reports")

    # ----------------------------------------------------------------------------------------------------- ratings
    @property
    def ratings(self) -> RatingsFiles:
        return RatingsFiles(self.root / "ratings")

    @property
    def ratings_metrics(self) -> Path:
        """``metrics/ratings.json``: the ratings stage's summary (the report's reader-study section)."""
        return self.metrics / "ratings.json"

    # ---------------------------------------------------------------------------------------------------- checking
    @staticmethod
    def require(paths: Iterable[Path], *, needed_by: str, made_by: str) -> None:
        """Every path exists; else one :class:`CxrError` listing the missing ones and the stage that writes them.

        Outputs are written whole (:meth:`output`), so a present folder is a complete one; the list still names each
        file a reader needs, which also catches an output of an older version of the stage.
        """
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            raise CxrError(
                f"{needed_by}: missing input {', '.join(missing)} (not made yet, or made by an older version); "
                f"run `dvc repro {made_by}` first"
            )

    # ----------------------------------------------------------------------------------------------------- writing
    @staticmethod
    @contextmanager
    def output(path: Path) -> Iterator[Path]:
        """A fresh, uniquely named temporary folder beside ``path``, renamed onto ``path`` when the block succeeds.

        On an error (or a kill) the old ``path`` stays as it was and the temporary folder is removed (or, after a
        kill, left as ``.<name>.<random>.part``, which no reader trusts).
        """
        with atomic_dir(path) as tmp:
            yield tmp

    @staticmethod
    @contextmanager
    def output_file(path: Path) -> Iterator[Path]:
        """A unique temporary file beside ``path``, renamed onto it when the block succeeds."""
        with atomic_file(path) as tmp:
            yield tmp


__all__ = [
    "CacheFiles",
    "ExplainFiles",
    "LeakageFiles",
    "ModelFiles",
    "RatingsFiles",
    "ReportFiles",
    "Workspace",
    "stage_name",
]
