"""Two reports side by side: for each metric, did it change beyond the noise? (``cxrexplain compare --against``)

Both reports are ``reports/metrics.json`` documents (:func:`cxrexplain.evaluation.report.build`). For every
architecture both have and every metric both have (the test-set classification metrics at threshold 0.5,
:data:`cxrexplain.evaluation.seeds.CLASSIFICATION`, and the Grad-CAM measures' means, ``gradcam/<measure>``), one row:
the reference's value, the run's value, ``difference = run − reference``, a 95 % interval of the difference, and the
verdict *changed* when 0 lies outside that interval. Which noise decides:

- **Both reports with ≥ 2 training seeds: the seed spread.** Welch's t interval of the difference of the seed means
  (:func:`welch_interval`): ``d = mean_run − mean_ref``, ``se² = s_run²/n_run + s_ref²/n_ref`` (sample variances,
  ddof 1), Welch-Satterthwaite degrees of freedom ``ν = se⁴ / ((s_run²/n_run)²/(n_run − 1) + (s_ref²/n_ref)²/(n_ref −
  1))`` and ``d ± t(0.975, ν) · se``, as ``scipy.stats.ttest_ind(run, ref, equal_var=False).confidence_interval()``
  (tested against it). The values shown are the seed means (± sd). It asks whether retraining at the two commits
  gives different models, which is the question a commit raises.
- **Otherwise (one seed on either side): the test patients' bootstrap.** A 95 % percentile-bootstrap interval of the
  difference from the primary seeds' per-image data (:func:`~.classification.cluster_bootstrap_difference`): the
  test predictions (``train/predictions.csv``) for the classification metrics, recomputed per resample with
  :func:`cxrexplain.evaluation.classification.point_metrics`; Grad-CAM's per-image measures
  (``explain/per_image.csv``) for the measures, whose per-resample statistic is the difference of the means. When
  both sides hold exactly the same images, the images are paired and the patients are resampled once for both sides
  (the paired, patient-clustered bootstrap: the images' shared difficulty cancels); otherwise each side's patients are
  resampled independently. This interval knows the test set's sampling noise only, not retraining's: with one seed
  nothing measures that, and a "changed" verdict can still be seed noise (the legend says so).

The functions take plain values and DataFrames; :mod:`cxrexplain.tracking` fetches the documents and tables.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cxrexplain.errors import CxrError
from cxrexplain.evaluation.classification import cluster_bootstrap_difference, point_metrics
from cxrexplain.evaluation.document import Document
from cxrexplain.evaluation.seeds import CLASSIFICATION, METHOD, test_metrics

THRESHOLD = 0.5  # the classification metrics compared are the report's at 0.5
COLUMNS = ("arch", "metric", "ref", "run", "ref_sd", "run_sd", "difference", "low", "high", "changed", "method")
"""Columns of :func:`compare`'s table (``ref_sd``/``run_sd``: the seed sd, NaN for bootstrap rows; ``changed``:
True, False, or None when no interval could be computed)."""


def welch_interval(run: Sequence[float], ref: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(difference, low, high)``: Welch's t interval of ``mean(run) − mean(ref)`` (formula in the module docstring).

    NaN values are left out. Fewer than two values on a side: NaN interval. Both sides without spread (``se = 0``,
    where scipy answers NaN): the interval is the difference itself, so equal constants are "no change" and different
    constants are "changed".
    """
    a = np.asarray([v for v in run if not math.isnan(v)], dtype=np.float64)
    b = np.asarray([v for v in ref if not math.isnan(v)], dtype=np.float64)
    nan = float("nan")
    if len(a) == 0 or len(b) == 0:
        return nan, nan, nan
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return difference, nan, nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return difference, difference, difference
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return difference, difference - half, difference + half


def _differences(
    run: pd.DataFrame,
    ref: pd.DataFrame,
    keys: Sequence[str],
    columns: Sequence[str],
    statistic: Callable[[np.ndarray], np.ndarray],
    names: Sequence[str],
    *,
    n: int,
    seed: int,
) -> dict[str, dict[str, object]]:
    """Per name of ``names`` (the components of ``statistic`` of the rows' ``columns``): ``{run, ref, difference, low,
    high, paired}``. Paired when both tables hold the same rows, identified by ``keys`` (the reference's rows put in the
    run's order, patients resampled once for both); else each side's patients independently
    (:func:`~.classification.cluster_bootstrap_difference`)."""
    run, ref = run.reset_index(drop=True), ref.reset_index(drop=True)
    ids = [pd.MultiIndex.from_frame(frame[list(keys)]) for frame in (run, ref)]
    paired = ids[0].is_unique and ids[1].is_unique and set(ids[0]) == set(ids[1])
    if paired:
        ref = run[list(keys)].merge(ref, on=list(keys), how="left", validate="one_to_one")

    def rows(frame: pd.DataFrame) -> np.ndarray:
        return frame[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)

    estimate, low, high = cluster_bootstrap_difference(
        rows(run),
        rows(ref),
        statistic,
        run_clusters=run["patient"].astype(str).to_numpy(),
        ref_clusters=ref["patient"].astype(str).to_numpy(),
        paired=paired,
        n=n,
        seed=seed,
    )
    run_values, ref_values = statistic(rows(run)), statistic(rows(ref))
    return {
        name: {
            "run": float(run_values[j]),
            "ref": float(ref_values[j]),
            "difference": float(estimate[j]),
            "low": float(low[j]),
            "high": float(high[j]),
            "paired": paired,
        }
        for j, name in enumerate(names)
    }


def classification_differences(
    run: pd.DataFrame, ref: pd.DataFrame, *, n: int = 1000, seed: int = 0
) -> dict[str, dict[str, object]]:
    """Per metric of :data:`CLASSIFICATION` (test rows, threshold 0.5): ``{run, ref, difference, low, high,
    paired}`` from two ``predictions.csv`` tables (``split``, ``image``, ``patient``, ``label``, ``probability``).

    Paired by image when both test sets are the same images (the reference's rows put in the run's order), patients
    resampled once; else each side's patients independently (:func:`~.classification.cluster_bootstrap_difference`)."""

    def metrics(rows: np.ndarray) -> np.ndarray:
        values = point_metrics(rows[:, 0], rows[:, 1], THRESHOLD)
        return np.array([values[m] for m in CLASSIFICATION])

    run, ref = (frame[frame["split"] == "test"] for frame in (run, ref))
    return _differences(run, ref, ["image"], ["label", "probability"], metrics, CLASSIFICATION, n=n, seed=seed)


def _nanmean(rows: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a measure no drawn image has: NaN, left out
        return np.nanmean(rows, axis=0)


def measure_differences(
    run: pd.DataFrame,
    ref: pd.DataFrame,
    measures: Sequence[str],
    *,
    method: str = METHOD,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """Per measure: ``{run, ref, difference, low, high, paired}`` of ``method``'s mean over the images it was measured
    on (NaN cells left out, as the explain stage's means) from two ``per_image.csv`` tables (``method``, ``image``,
    ``patient``, one column per measure). Paired by image, and by the class a map explains (``explained_class``, when
    the tables have it: a predicted-negative image with a box has a row for its Pneumonia map and one for its decision
    map), when both explained the same maps; else independent."""
    run, ref = (frame[frame["method"] == method] for frame in (run, ref))
    keys = ["image", "explained_class"] if {"explained_class"} <= set(run.columns) & set(ref.columns) else ["image"]
    return _differences(run, ref, keys, list(measures), _nanmean, list(measures), n=n, seed=seed)


@dataclass(frozen=True)
class PerImage:
    """One report's primary-seed per-image data for one architecture: its training run's ``train/predictions.csv``
    and its ``explain/per_image.csv``."""

    predictions: pd.DataFrame
    per_image: pd.DataFrame


def check_tables(metrics: Mapping, arch: str, data: PerImage, name: str) -> None:
    """Refuse per-image tables that are not the ones a report was made from: the primary seed's test metrics
    recomputed from ``data.predictions`` and Grad-CAM's measure means from ``data.per_image`` must equal the values
    ``metrics`` (that report's ``metrics.json``) recorded for it (to 1e-6, relative or absolute: the explain stage
    averages some measures in another order or precision, e.g. the tied share, which moves the 8th digit; both NaN
    counts as equal). ``name`` names
    the report in the :class:`CxrError`. A training run's ``explain/per_image.csv`` is overwritten when its model is
    explained again (e.g. with another setting): comparing from it would show a change as none."""
    spread = metrics["seeds"][arch]
    k = spread["seeds"].index(metrics.get("primary_seed", spread["seeds"][0]))
    now = test_metrics(data.predictions)
    rows = data.per_image[data.per_image["method"] == METHOD]
    columns = [c for c in rows.columns if f"{METHOD}/{c}" in spread["metrics"]]
    now |= {f"{METHOD}/{c}": float(_nanmean(rows[[c]].to_numpy(np.float64))[0]) for c in columns}
    for metric, entry in spread["metrics"].items():
        if metric not in now:
            continue
        recorded, found = entry["values"][k], now[metric]
        if (math.isnan(recorded) and math.isnan(found)) or math.isclose(recorded, found, rel_tol=1e-6, abs_tol=1e-6):
            continue
        raise CxrError(
            f"{name}: the per-image tables of {arch} give {metric} = {found:.6g}, but the report recorded "
            f"{recorded:.6g}: they are not the tables it was made from (its training run's were overwritten by a "
            "later explain or training stage). Re-make the report (dvc repro report) to compare it; report runs "
            f"keep their own copies under report/tables/<arch>/."
        )


def shared_archs(run: Mapping, ref: Mapping) -> list[str]:
    """Architectures both reports have (the run's order)."""
    return [a for a in run.get("seeds", {}) if a in ref.get("seeds", {})]


def seed_regime(run: Mapping, ref: Mapping, arch: str) -> bool:
    """Both reports trained ``arch`` with at least two seeds: the seed spread decides."""
    return len(run["seeds"][arch]["seeds"]) >= 2 and len(ref["seeds"][arch]["seeds"]) >= 2


def needs_per_image(run: Mapping, ref: Mapping) -> list[str]:
    """The shared architectures whose rows need the primary seeds' per-image data (one seed on either side)."""
    return [a for a in shared_archs(run, ref) if not seed_regime(run, ref, a)]


def shared_metrics(run: Mapping, ref: Mapping, arch: str) -> list[str]:
    """Metrics both reports have for ``arch``: :data:`CLASSIFICATION` in its order, then ``gradcam/*`` sorted."""
    names = set(run["seeds"][arch]["metrics"]) & set(ref["seeds"][arch]["metrics"])
    return [m for m in CLASSIFICATION if m in names] + sorted(m for m in names if m not in CLASSIFICATION)


def compare(
    run: Mapping,
    ref: Mapping,
    per_image: Mapping[str, tuple[PerImage, PerImage]] | None = None,
    *,
    n: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per shared architecture and metric (columns :data:`COLUMNS`), from two ``metrics.json`` documents.

    ``per_image``: arch → (run's, reference's) :class:`PerImage`, needed for the architectures of
    :func:`needs_per_image` (else ``ValueError``). ``n`` and ``seed``: the bootstrap's resamples and generator seed.
    """
    rows = []
    per_image = per_image or {}
    for arch in shared_archs(run, ref):
        names = shared_metrics(run, ref, arch)
        mine, theirs = run["seeds"][arch], ref["seeds"][arch]
        if seed_regime(run, ref, arch):
            for name in names:
                a, b = mine["metrics"][name], theirs["metrics"][name]
                difference, low, high = welch_interval(a["values"], b["values"])
                rows.append(
                    {
                        "arch": arch,
                        "metric": name,
                        "ref": b["mean"],
                        "run": a["mean"],
                        "ref_sd": b["sd"],
                        "run_sd": a["sd"],
                        "difference": difference,
                        "low": low,
                        "high": high,
                        "method": f"seeds: Welch t ({a['n']} vs {b['n']})",
                    }
                )
            continue
        if arch not in per_image:
            raise ValueError(f"{arch}: one seed on a side, the bootstrap needs both primary seeds' per-image data")
        run_data, ref_data = per_image[arch]
        found = classification_differences(run_data.predictions, ref_data.predictions, n=n, seed=seed)
        measures = [m.removeprefix(f"{METHOD}/") for m in names if m not in CLASSIFICATION]
        measures = [m for m in measures if m in run_data.per_image.columns and m in ref_data.per_image.columns]
        found |= {
            f"{METHOD}/{m}": v
            for m, v in measure_differences(run_data.per_image, ref_data.per_image, measures, n=n, seed=seed).items()
        }
        for name in names:
            if name not in found:
                continue
            entry = found[name]
            pairing = "paired images" if entry["paired"] else "independent"
            rows.append(
                {
                    "arch": arch,
                    "metric": name,
                    "ref": entry["ref"],
                    "run": entry["run"],
                    "ref_sd": float("nan"),
                    "run_sd": float("nan"),
                    "difference": entry["difference"],
                    "low": entry["low"],
                    "high": entry["high"],
                    "method": f"bootstrap: patients, {pairing}",
                }
            )
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "changed"])
    changed = [
        None if math.isnan(lo) or math.isnan(hi) else bool(lo > 0 or hi < 0)
        for lo, hi in zip(table["low"], table["high"], strict=True)
    ]
    table.insert(COLUMNS.index("changed"), "changed", pd.Series(changed, dtype=object))
    return table


# ------------------------------------------------------------------------------------------------- rendering

HEADER = ("arch", "metric", "REF", "RUN", "RUN − REF", "95 % interval", "verdict", "method")
LEGEND = (
    "RUN − REF and its 95 % interval; **changed**: 0 is outside it. Both runs with ≥ 2 training seeds: Welch's t "
    "interval of the seed means (values: mean ± sd); else a patient bootstrap of the primary seeds' test images "
    "(paired when both have the same images), which knows the test set's noise, not retraining's. Classification: "
    "test set, threshold 0.5; gradcam/*: means of Grad-CAM's measures."
)


def _value(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def cells(table: pd.DataFrame) -> list[list[str]]:
    """:data:`HEADER`'s cells for every row of a :func:`compare` table."""
    out = []
    for row in table.itertuples(index=False):
        interval = "n/a" if math.isnan(row.low) else f"{row.low:+.3f} to {row.high:+.3f}"
        verdict = {True: "changed", False: "within noise", None: "n/a"}[row.changed]
        difference = "n/a" if math.isnan(row.difference) else f"{row.difference:+.3f}"
        out.append(
            [
                row.arch,
                row.metric,
                _value(row.ref, row.ref_sd),
                _value(row.run, row.run_sd),
                difference,
                interval,
                verdict,
                row.method,
            ]
        )
    return out


def describe(run: Mapping[str, str]) -> str:
    """A report run in one line: ``report @ 1a2b3c4 (run 0123abcd…, seeds 42,43,44, synthetic data)``; ``*`` marks a
    dirty tree."""
    dirty = "*" if run.get("dirty") else ""
    source = f", {run['source']} data" if run.get("source") else ""
    return f"report @ {run['commit'][:7]}{dirty} (run {run['run_id']}, seeds {run['seeds']}{source})"


def markdown(table: pd.DataFrame, run: Mapping[str, str], ref: Mapping[str, str]) -> str:
    """GitHub Markdown for a pull-request comment: both runs named, the legend, the table (**changed** in bold), the
    count of changes."""
    doc = Document("cxrexplain compare")
    doc.paragraph(f"**RUN** {describe(run)}  \n**REF** {describe(ref)}")
    doc.paragraph(LEGEND)
    rows = cells(table)
    verdict = HEADER.index("verdict")
    for row in rows:
        row[verdict] = row[verdict].replace("changed", "**changed**")
    doc.table(HEADER, rows)
    n_changed = sum(1 for flag in table["changed"] if flag)
    doc.paragraph(f"{n_changed} of {len(table)} metrics changed beyond the noise.")
    return doc.markdown(Path("."))


__all__ = [
    "COLUMNS",
    "HEADER",
    "LEGEND",
    "PerImage",
    "cells",
    "check_tables",
    "classification_differences",
    "compare",
    "describe",
    "markdown",
    "measure_differences",
    "needs_per_image",
    "seed_regime",
    "shared_archs",
    "shared_metrics",
    "welch_interval",
]
