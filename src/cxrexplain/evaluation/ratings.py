"""Readers' ratings of the explanation maps: the CSV per reader, and the reader study they add up to (stage ratings).

A reader (``cxrexplain view``, :mod:`cxrexplain.viewer`) rates each (image, method) map of one trained model
(architecture and training seed) with one of :data:`RATINGS`, the study's own categories: the map is *on the finding*,
*partly* on it, *off* it, or *on an artefact* (one of :data:`ARTEFACTS`: ribs, clavicles, ECG leads, image edges),
with a free note. The map rated is the one the localisation measures score: the map of class Pneumonia, whatever the
model predicted. Each reader's ratings are one CSV, ``ratings/<reader>.csv`` (:data:`COLUMNS`, one row per rated
map, the latest rating of a map replacing the earlier one), rewritten atomically on every change
(:func:`write_reader`).

:func:`summarise` turns every reader's ratings into the study's "heatmaps on the relevant region in about 92 % of
cases" as a measured number, per model and method:

- the share of maps rated **on the finding** among the ratings of Pneumonia images (the only images with a finding
  to be on), with a 95 % patient-clustered percentile bootstrap interval
  (:func:`~cxrexplain.explain.measures.statistics.bootstrap_ci`; every reader's rating of every image of a patient
  is resampled with the patient); the share *on or partly on*; and, over the ratings of every image, the share *on an
  artefact* and the artefacts named;
- its agreement with the automatic localisation measure: per rating of a map the pointing game scored, the 2×2
  table of pointing hit × rated on the finding, the share of agreement and Cohen's κ (:func:`cohen_kappa`);
- inter-reader agreement on the maps every reader of that model rated, over the four categories: Cohen's κ for two
  readers, Fleiss' κ (:func:`fleiss_kappa`) for three or more.

Cohen's κ (Cohen 1960) from a k×k table of counts ``t`` (``n = Σ t``): ``p_o = Σ_i t_ii / n``, ``p_e = Σ_i
(row_i / n)(col_i / n)``, ``κ = (p_o − p_e) / (1 − p_e)``; undefined (NaN) when ``p_e = 1`` (both raters used one
and the same category throughout). Equal to ``sklearn.metrics.cohen_kappa_score`` (tested). Fleiss' κ (Fleiss
1971) from an items × categories table of counts ``c`` with the same number ``m ≥ 2`` of raters per item: ``P_i =
(Σ_j c_ij² − m) / (m (m − 1))``, ``P̄`` their mean, ``p_j = Σ_i c_ij / (N m)``, ``P_e = Σ_j p_j²``, ``κ = (P̄ −
P_e) / (1 − P_e)``; equal to ``statsmodels.stats.inter_rater.fleiss_kappa(c, method="fleiss")`` (tested).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrexplain.errors import CxrError
from cxrexplain.explain.measures.statistics import bootstrap_ci
from cxrexplain.io import write_csv

RATINGS: dict[str, str] = {
    "on": "on the finding",
    "partly": "partly on the finding",
    "off": "off the finding",
    "artefact": "on an artefact",
}
"""The rating of one map: CSV value → what the reader sees."""

ARTEFACTS: dict[str, str] = {
    "ribs": "ribs",
    "clavicles": "clavicles",
    "ecg_leads": "ECG leads",
    "image_edges": "image edges",
}
"""What a map rated ``artefact`` is on: CSV value → what the reader sees."""

COLUMNS: tuple[str, ...] = (
    "reader",
    "arch",
    "seed",
    "image",
    "method",
    "rating",
    "artefact",
    "note",
    "blinded",
    "time",
)
"""The columns of a reader's CSV (``time``: when the rating was given, ISO 8601 in UTC)."""

KEY: tuple[str, ...] = ("reader", "arch", "seed", "image", "method")
"""What one rating is of: one reader's rating of one map (a later rating of the same map replaces it)."""

MAX_NOTE = 2000  # characters of a free note
_READER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def check_reader(reader: str) -> str:
    """``reader`` when it can name a file (letters, digits, ``_`` and ``-``, up to 40, starting with a letter or a
    digit); else a :class:`CxrError`."""
    if not isinstance(reader, str) or not _READER.fullmatch(reader):
        raise CxrError(
            f"reader id {reader!r}: use 1-40 letters, digits, '_' or '-', starting with a letter or digit "
            "(it names the file ratings/<reader>.csv)"
        )
    return reader


def check_rating(rating: str, artefact: str, note: str, *, where: str) -> None:
    """A :class:`CxrError` naming ``where`` unless ``rating`` is one of :data:`RATINGS`, ``artefact`` is one of
    :data:`ARTEFACTS` exactly when the rating is ``artefact`` (else empty), and ``note`` is at most :data:`MAX_NOTE`
    characters."""
    if rating not in RATINGS:
        raise CxrError(f"{where}: rating {rating!r} is not one of {', '.join(RATINGS)}")
    if rating == "artefact" and artefact not in ARTEFACTS:
        raise CxrError(f"{where}: a map rated 'artefact' names which one: {', '.join(ARTEFACTS)} (got {artefact!r})")
    if rating != "artefact" and artefact:
        raise CxrError(f"{where}: artefact {artefact!r} given for rating {rating!r} (only 'artefact' takes one)")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise CxrError(f"{where}: the note must be text of at most {MAX_NOTE} characters")


def empty() -> pd.DataFrame:
    """A ratings table with no rows."""
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "seed" else object) for c in COLUMNS})


def read_reader(path: Path) -> pd.DataFrame:
    """One reader's CSV (absent: no ratings), checked as a file from outside: exactly :data:`COLUMNS`, the reader
    column equal to the file's name, valid ratings, one row per map. A bad file is a :class:`CxrError` naming it and
    the row."""
    path = Path(path)
    if not path.exists():
        return empty()
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CxrError(f"{path}: not a ratings CSV ({error})") from None
    if tuple(table.columns) != COLUMNS:
        raise CxrError(f"{path}: columns {list(table.columns)}, expected {list(COLUMNS)}")
    reader = check_reader(path.stem)
    bad = (
        (table["reader"] != reader)
        | ~table["seed"].str.fullmatch(r"[0-9]{1,10}")
        | ~table["blinded"].isin(["True", "False"])
        | ~table["rating"].isin(list(RATINGS))
        | ((table["rating"] == "artefact") & ~table["artefact"].isin(list(ARTEFACTS)))
        | ((table["rating"] != "artefact") & (table["artefact"] != ""))
        | (table["note"].str.len() > MAX_NOTE)
    ).to_numpy(dtype=bool)
    for number in np.flatnonzero(bad)[:1]:  # the first bad row, checked one value at a time to say what is wrong
        row = table.iloc[number]
        where = f"{path}, line {number + 2}"
        if row.reader != reader:
            raise CxrError(f"{where}: reader {row.reader!r} in the file of reader {reader!r}")
        if not re.fullmatch(r"[0-9]{1,10}", row.seed):
            raise CxrError(f"{where}: seed {row.seed!r} is not a training seed (a whole number)")
        if row.blinded not in ("True", "False"):
            raise CxrError(f"{where}: blinded must be True or False, got {row.blinded!r}")
        check_rating(row.rating, row.artefact, row.note, where=where)
        raise CxrError(f"{where}: not a valid rating")  # not reached: every check of `bad` is repeated above
    table["seed"] = table["seed"].astype("int64")
    duplicated = table.duplicated(list(KEY))
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise CxrError(
            f"{path}: the map {first['image']} / {first['method']} of {first['arch']} seed {first['seed']} "
            "is rated twice"
        )
    return table.reset_index(drop=True)


def read_ratings(paths: Iterable[Path]) -> pd.DataFrame:
    """Every reader's ratings (:func:`read_reader` of each path) in one table."""
    frames = [read_reader(p) for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty()


def upsert(table: pd.DataFrame, row: Mapping[str, object]) -> pd.DataFrame:
    """``table`` with ``row`` (every column of :data:`COLUMNS`) in place of an earlier rating of the same map."""
    same = np.ones(len(table), dtype=bool)
    for key in KEY:
        same &= (table[key] == row[key]).to_numpy()
    added = pd.DataFrame([{c: row[c] for c in COLUMNS}])
    return pd.concat([table[~same], added], ignore_index=True) if len(table[~same]) else added


def remove(table: pd.DataFrame, key: Mapping[str, object]) -> pd.DataFrame:
    """``table`` without the rating of the map ``key`` (the values of :data:`KEY`)."""
    same = np.ones(len(table), dtype=bool)
    for k in KEY:
        same &= (table[k] == key[k]).to_numpy()
    return table[~same].reset_index(drop=True)


def write_reader(path: Path, table: pd.DataFrame) -> None:
    """Write one reader's ratings atomically (:func:`cxrexplain.io.write_csv`), sorted by model, image and method."""
    ordered = table.sort_values(["arch", "seed", "image", "method"], kind="stable")
    write_csv(path, ordered[list(COLUMNS)])


# ------------------------------------------------------------------------------------------------------- agreement


def contingency(a: Sequence[str], b: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    """The k×k table of counts of ``(a[i], b[i])`` over ``categories`` (rows: ``a``)."""
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)), dtype=np.int64)
    for x, y in zip(a, b, strict=True):
        table[index[x], index[y]] += 1
    return table


def cohen_kappa(table: np.ndarray) -> float:
    """Cohen's κ of a square table of counts (module docstring); NaN when empty or when ``p_e = 1``."""
    t = np.asarray(table, dtype=np.float64)
    n = t.sum()
    if n == 0:
        return math.nan
    observed = np.trace(t) / n
    expected = float((t.sum(axis=1) / n) @ (t.sum(axis=0) / n))
    return math.nan if math.isclose(expected, 1.0) else float((observed - expected) / (1.0 - expected))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' κ of an items × categories table of counts with the same number of raters (at least two) per item
    (module docstring); NaN when there are no items or when ``P_e = 1``."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or len(c) == 0:
        return math.nan
    m = c.sum(axis=1)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError(f"fleiss_kappa: every item needs the same number (>= 2) of raters, got {sorted(set(m))}")
    raters = m[0]
    per_item = ((c**2).sum(axis=1) - raters) / (raters * (raters - 1))
    p = c.sum(axis=0) / c.sum()
    expected = float((p**2).sum())
    return math.nan if math.isclose(expected, 1.0) else float((per_item.mean() - expected) / (1.0 - expected))


def inter_reader(ratings: pd.DataFrame) -> dict | None:
    """Agreement of the readers of one model's maps on the maps every one of them rated (None with one reader):
    Cohen's κ for two readers, Fleiss' κ for more, over :data:`RATINGS`."""
    readers = sorted(ratings["reader"].unique())
    if len(readers) < 2:
        return None
    wide = ratings.pivot(index=["image", "method"], columns="reader", values="rating").dropna()
    out: dict = {"readers": len(readers), "maps": len(wide)}
    categories = list(RATINGS)
    if len(readers) == 2:
        table = contingency(wide[readers[0]], wide[readers[1]], categories)
        out |= {"statistic": "Cohen's kappa", "kappa": _number(cohen_kappa(table))}
    else:
        counts = np.stack([(wide.to_numpy() == c).sum(axis=1) for c in categories], axis=1)
        out |= {"statistic": "Fleiss' kappa", "kappa": _number(fleiss_kappa(counts))}
    out["agreement"] = _number(float((wide.nunique(axis=1) == 1).mean()) if len(wide) else math.nan)
    return out


# ---------------------------------------------------------------------------------------------------------- summary


def _number(value: float) -> float | None:
    """JSON-safe: NaN becomes null."""
    return None if value is None or math.isnan(value) else float(value)


def _share(values: np.ndarray, clusters: np.ndarray, *, n: int, seed: int) -> dict:
    mean, low, high = bootstrap_ci(values.astype(np.float64), n=n, seed=seed, clusters=clusters)
    return {
        "mean": _number(mean),
        "low": _number(low),
        "high": _number(high),
        "n": len(values),
        "clusters": len(set(clusters)),
    }


def pointing_hits(per_image: pd.DataFrame) -> pd.DataFrame:
    """``image, method, pointing`` of one model's ``per_image.csv``: the pointing game's hit (0/1) per map of class
    Pneumonia it scored (the images with a box)."""
    if "pointing" not in per_image.columns:
        return pd.DataFrame({"image": [], "method": [], "pointing": []})
    scored = per_image[(per_image["explained_class"] == 1) & per_image["pointing"].notna()]
    return scored[["image", "method", "pointing"]].reset_index(drop=True)


def method_summary(rated: pd.DataFrame, *, n: int, seed: int) -> dict:
    """One method's ratings of one model, joined to the images' ``label`` and ``patient`` and to ``pointing`` (NaN
    where the pointing game scored no map): the shares, the artefacts and the agreement with the pointing game."""
    positive = rated[rated["label"] == 1]
    patients = positive["patient"].astype(str).to_numpy()
    out = {
        "ratings": len(rated),
        "readers": int(rated["reader"].nunique()),
        "images": int(rated["image"].nunique()),
        "on_finding": _share((positive["rating"] == "on").to_numpy(), patients, n=n, seed=seed),
        "on_or_partly": _share(positive["rating"].isin(["on", "partly"]).to_numpy(), patients, n=n, seed=seed),
        "artefact": _share(
            (rated["rating"] == "artefact").to_numpy(), rated["patient"].astype(str).to_numpy(), n=n, seed=seed
        ),
        "artefacts": {k: int((rated["artefact"] == k).sum()) for k in ARTEFACTS},
    }
    scored = rated[rated["pointing"].notna()]
    hit, on = scored["pointing"].to_numpy() > 0.5, (scored["rating"] == "on").to_numpy()
    table = np.array([[np.sum(hit & on), np.sum(hit & ~on)], [np.sum(~hit & on), np.sum(~hit & ~on)]])
    out["pointing"] = {
        "n": len(scored),
        "table": table.tolist(),  # rows: pointing hit, miss; columns: rated on the finding, not on it
        "agreement": _number(float(np.trace(table) / len(scored)) if len(scored) else math.nan),
        "kappa": _number(cohen_kappa(table)),
    }
    return out


def summarise(
    ratings: pd.DataFrame,
    images: pd.DataFrame,
    pointing: Mapping[tuple[str, int], pd.DataFrame],
    *,
    n: int,
    seed: int,
) -> dict:
    """The reader study (``metrics/ratings.json``) of every reader's ``ratings`` (:func:`read_ratings`).

    ``images``: ``image, patient, label`` of every cached image (the cache index); ``pointing``: per rated model
    ``(arch, seed)``, :func:`pointing_hits` of its ``per_image.csv``. ``n`` bootstrap resamples drawn with ``seed``.
    Per model (``<arch>/seed<s>``) and method: :func:`method_summary`; per model: :func:`inter_reader`. A rated
    image missing from ``images`` is a :class:`CxrError`.
    """
    out: dict = {"readers": sorted(ratings["reader"].unique().tolist()), "ratings": len(ratings), "models": {}}
    if ratings.empty:
        return out
    known = images[["image", "patient", "label"]].drop_duplicates("image")
    joined = ratings.merge(known, on="image", how="left")
    unknown = joined.loc[joined["label"].isna(), "image"].unique()
    if len(unknown):
        raise CxrError(f"ratings of images not in the cache index: {', '.join(map(str, unknown[:5]))}")
    for (arch, train_seed), rated in joined.groupby(["arch", "seed"], sort=True):
        hits = pointing.get((arch, int(train_seed)), pointing_hits(pd.DataFrame()))
        rated = rated.merge(hits, on=["image", "method"], how="left")
        out["models"][f"{arch}/seed{train_seed}"] = {
            "arch": arch,
            "seed": int(train_seed),
            "methods": {
                method: method_summary(part, n=n, seed=seed) for method, part in rated.groupby("method", sort=True)
            },
            "inter_reader": inter_reader(rated),
        }
    return out


__all__ = [
    "ARTEFACTS",
    "COLUMNS",
    "KEY",
    "RATINGS",
    "check_rating",
    "check_reader",
    "cohen_kappa",
    "contingency",
    "empty",
    "fleiss_kappa",
    "inter_reader",
    "method_summary",
    "pointing_hits",
    "read_ratings",
    "read_reader",
    "remove",
    "summarise",
    "upsert",
    "write_reader",
]
