"""One architecture's model explained on one split, measured, tabled and drawn: the library of stage explain@arch.

:func:`explain_split` takes the model, the cached images with the rows of the split and the validated
``params.explain`` section (:class:`~cxrexplain.config.ExplainParams`) and returns an :class:`Explanation`: every
table of ``explain/<arch>/`` and what the galleries draw. :func:`save` writes it into a folder named by
:class:`~cxrexplain.workspace.ExplainFiles` (the stage's temporary output folder), :func:`explain_metrics` assembles
the small JSON for ``dvc metrics`` and :func:`mlflow_metrics` its flat MLflow view. Nothing here knows where the
pipeline keeps its files.

Conventions: the explained images are the network inputs (N, 1, size, size, normalised as in training, on the
model's device); boxes are ``[x, y, w, h]`` in pixels of that input; ``threshold`` is a probability of Pneumonia.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrexplain import names, tracking
from cxrexplain.data.sample import load_cache
from cxrexplain.data.split import read_split
from cxrexplain.data.transforms import eval_transform
from cxrexplain.errors import CxrError
from cxrexplain.evaluation.classification import youden_threshold
from cxrexplain.explain import gallery
from cxrexplain.explain.evaluate import (
    PNEUMONIA,
    Explained,
    explain_images,
    measure_columns,
    paired_table,
    parse_boxes,
    scale_boxes,
    signed_explainer,
    summary_table,
)
from cxrexplain.explain.measures import sanity
from cxrexplain.models.backbones import GRAY_MEAN, GRAY_STD
from cxrexplain.models.checkpoint import load_classifier
from cxrexplain.progress import item_progress

if TYPE_CHECKING:
    from cxrexplain.config import ExplainParams, GalleryParams, Params
    from cxrexplain.workspace import CacheFiles, ExplainFiles, ModelFiles

log = logging.getLogger(__name__)

# trains the architecture on permuted labels (models/permuted.py): returns the model and its accuracy on those labels
PermutedModel = Callable[[], tuple[nn.Module, float]]


def load_model(checkpoint: Path, device: torch.device) -> nn.Module:
    """The :class:`~cxrexplain.models.backbones.Classifier` of a training checkpoint, in eval mode on ``device``."""
    return load_classifier(checkpoint, device)[0]


def _train_on_permuted_labels(
    params: Params, arch: str, cache_dir: Path, split_file: Path, device: torch.device, seed: int
) -> tuple[nn.Module, float]:
    """:func:`cxrexplain.models.permuted.train_on_permuted_labels`, imported when the data randomisation test runs
    (it trains with Lightning, which the rest of explaining does not import)."""
    from cxrexplain.models.permuted import train_on_permuted_labels

    return train_on_permuted_labels(params, arch, cache_dir, split_file, device, seed=seed)


def choose_threshold(config: ExplainParams, predictions: Path) -> float:
    """``explain.threshold``: a probability, or Youden's J on the validation rows of the train stage's predictions."""
    if config.threshold != "youden":
        return float(config.threshold)
    try:
        table = pd.read_csv(predictions)
    except FileNotFoundError:
        raise CxrError(f"{predictions}: not found; run the train stage first (dvc repro train)") from None
    val = table[table["split"] == "val"]
    if val.empty:
        raise CxrError(f"{predictions}: no val rows to choose the Youden threshold on (explain.threshold: youden)")
    return youden_threshold(val["label"].to_numpy(), val["probability"].to_numpy())


def split_rows(table: pd.DataFrame, split: str, source: Path) -> pd.DataFrame:
    """The rows of ``split`` in the split table joined to the cache index (``source``: the split file, for errors),
    in cache order."""
    part = table[table["split"] == split].sort_values("row").reset_index(drop=True)
    if part.empty:
        raise CxrError(f"{source}: no {split} images to explain")
    return part


def network_inputs(images: np.ndarray, rows: pd.Series, size: int) -> torch.Tensor:
    """The cached 8-bit images ``rows`` as the network sees them: (N, 1, size, size), normalised."""
    transform = eval_transform(size)
    return torch.stack([torch.from_numpy(transform(image=np.asarray(images[r]))["image"])[None] for r in rows])


@dataclass
class Explanation:
    """Everything the explain stage writes, for the rows of one split."""

    rows: pd.DataFrame  # the split's rows (image, patient, label, boxes, ...), in the order of the explained images
    shown: np.ndarray  # (N, size, size) the network's inputs back in 0..1, what the galleries draw
    boxes: list[list[list[float]]]  # per image, in pixels of the network input
    threshold: float
    result: Explained
    per_image: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    sanity: pd.DataFrame  # the verdict per method
    data_randomisation: pd.DataFrame | None  # per method and image, when the data randomisation test ran
    data_test: dict | None  # its summary per method
    # the configured methods skipped for this backbone, with why (names.not_applicable): recorded, not run
    not_applicable: dict[str, str] = field(default_factory=dict)


def explain_trained(
    params: Params,
    arch: str,
    trained: ModelFiles,
    cache: CacheFiles,
    split_file: Path,
    device: torch.device,
    *,
    train_seed: int,
    progress: str | None = None,
) -> Explanation:
    """:func:`explain_split` for the stage: ``arch``'s best checkpoint in ``trained`` (trained with ``train_seed``,
    which the permuted-label model of the data randomisation test starts from too) on ``device``, its threshold
    (:func:`choose_threshold`), the cached images of ``params.explain.split``; the permuted-label model of the data
    randomisation test trained on the same cache and split (:mod:`cxrexplain.models.permuted`). ``arch`` is one of
    :data:`~cxrexplain.config.ARCHS` (the stage checks it first, with :func:`~cxrexplain.config.require_arch`)."""
    e, skipped = applicable_config(params.explain, arch)
    for method, reason in skipped.items():
        log.warning("explain@%s: %s skipped: %s", arch, method, reason)
    model, threshold = load_model(trained.best, device), choose_threshold(e, trained.predictions)
    images, index = load_cache(cache.dir)
    explanation = explain_split(
        model,
        images,
        split_rows(read_split(split_file, index), e.split, split_file),
        e,
        image_size=params.train.image_size,
        seed=params.seed,
        threshold=threshold,
        permuted=lambda: _train_on_permuted_labels(params, arch, cache.dir, split_file, device, train_seed),
        progress=progress,
    )
    return replace(explanation, not_applicable=skipped)


def applicable_config(config: ExplainParams, arch: str) -> tuple[ExplainParams, dict[str, str]]:
    """``config`` without the attribution methods that do not apply to ``arch``
    (:func:`cxrexplain.names.not_applicable`: the ReLU-defined methods on a backbone without ReLU), and those methods
    with the reason. The config validation has already refused a method that applies to none of ``model.archs``."""
    skipped = names.not_applicable(arch, config.attributions)
    kept = tuple(m for m in config.attributions if m not in skipped)
    return config.model_copy(update={"attributions": kept}), skipped


def explain_split(
    model: nn.Module,
    images: np.ndarray,
    rows: pd.DataFrame,
    config: ExplainParams,
    *,
    image_size: int,
    seed: int,
    threshold: float,
    permuted: PermutedModel | None = None,
    progress: str | None = None,
) -> Explanation:
    """Explain the cached ``images`` of ``rows`` (:func:`split_rows`) with ``model`` at ``image_size``, measure the
    maps and build every table. When ``config.sanity.data_randomisation`` is on, ``permuted`` trains the
    permuted-label model once the real model's maps are done. ``progress`` labels a progress bar (None: no bar)."""
    device = next(model.parameters()).device
    x = network_inputs(images, rows["row"], image_size)
    boxes = [scale_boxes(parse_boxes(b), image_size / images.shape[1]) for b in rows["boxes"]]
    boxed = sum(1 for b in boxes if b)
    subset_n = len(rows) if config.subset is None else min(config.subset, len(rows))
    total = len(rows) + (boxed + subset_n if config.attributions else 0)
    with item_progress(progress or "", total=total, unit="images", enabled=progress is not None) as advance:
        result = explain_images(
            model,
            x.to(device),
            rows["label"].to_numpy(),
            boxes,
            config,
            threshold=threshold,
            seed=seed,
            patients=rows["patient"].astype(str).to_numpy(),
            advance=advance,
        )
    per_image = result.per_image
    per_image.insert(2, "image", rows["image"].to_numpy()[per_image["index"].to_numpy()])
    data_table, data_test = None, None
    if config.sanity.data_randomisation:
        if permuted is None:
            raise ValueError("explain.sanity.data_randomisation is on: pass the permuted-label training")
        data_table, data_test = data_randomisation(model, *permuted(), x.to(device), result, config)
    return Explanation(
        rows=rows,
        shown=(x[:, 0] * GRAY_STD + GRAY_MEAN).clamp(0, 1).numpy(),
        boxes=boxes,
        threshold=threshold,
        result=result,
        per_image=per_image,
        summary=summary_table(per_image, n=config.bootstrap, seed=seed),
        paired=paired_table(per_image, n=config.bootstrap, seed=seed),
        sanity=sanity.sanity_verdict(result.sanity, threshold=config.sanity.threshold),
        data_randomisation=data_table,
        data_test=data_test,
    )


def data_randomisation(
    model: nn.Module, permuted: nn.Module, accuracy: float, x: torch.Tensor, result: Explained, config: ExplainParams
) -> tuple[pd.DataFrame, dict]:
    """Adebayo et al.'s data randomisation test: ``permuted`` (the architecture trained on permuted training labels,
    reaching ``accuracy`` on them) explains the sanity images; its maps are compared with ``model``'s (same classes).
    Returns the per-image table and, per method, its summary."""
    rows = result.subset[: config.sanity.images]
    idx = torch.as_tensor(rows, device=x.device)
    classes = torch.as_tensor(result.predicted[rows], device=x.device)
    frames, summary = [], {}
    for method in [*config.cams, *config.attributions]:
        explain = signed_explainer(method, config)
        test = sanity.data_randomisation(
            explain(model, x[idx], classes), explain(permuted, x[idx], classes), threshold=config.sanity.threshold
        )
        frames.append(test.per_image.assign(image=rows[test.per_image["image"].to_numpy()]).assign(method=method))
        summary[method] = {
            "mean_abs_spearman": test.mean_abs_spearman,
            "passes": test.passes,
            "permuted_train_accuracy": accuracy,
            "images": len(rows),
        }
    return pd.concat(frames, ignore_index=True), summary


def save(
    explanation: Explanation, files: ExplainFiles, gallery_config: GalleryParams, *, title: str, synthetic: bool
) -> list[Path]:
    """Write the tables, ``maps.npz`` (:func:`write_maps`) and the galleries into ``files``; returns the figures.
    ``title`` (the architecture) heads every figure."""
    e = explanation
    e.per_image.to_csv(files.per_image, index=False)
    e.summary.to_csv(files.summary, index=False)
    e.paired.to_csv(files.paired, index=False)
    e.result.sanity.to_csv(files.sanity_curve, index=False)
    e.sanity.to_csv(files.sanity, index=False)
    if e.data_randomisation is not None:
        e.data_randomisation.to_csv(files.data_randomisation, index=False)
    write_maps(e, files.maps)
    return gallery.explanation_galleries(
        files,
        e.shown,
        e.boxes,
        e.rows["label"].to_numpy(),
        e.result,
        e.threshold,
        title=title,
        config=gallery_config,
        synthetic=synthetic,
    )


def write_maps(explanation: Explanation, path: Path) -> None:
    """``maps.npz``, every map of class Pneumonia the explain stage computed, for stage consistency and the viewer:

    - ``images``, ``patients`` (N,) and ``explained_class`` (N,), the class of every map (Pneumonia);
    - ``raw/<cam>`` (N, h, w) float32: each CAM method's raw map of every image at the target layer's resolution;
    - ``attr/<method>`` (K, H, W) float16 in [0, 1]: each captum method's map at the network input's resolution,
      normalised as the measures score it, of the K images ``attr_rows/<method>`` (int64 indices into ``images``,
      sorted): the images with a box and the subset's Pneumonia-predicted images, the only ones with a Pneumonia
      map of these methods (:func:`~cxrexplain.explain.evaluate.pneumonia_attributions`).

    Stage consistency reads only ``raw/``. ``path`` is in the stage's temporary output folder (written once)."""
    e = explanation
    attributions = e.result.attribution_maps
    rows = e.result.attribution_rows.astype(np.int64)
    with open(path, "wb") as fh:
        np.savez_compressed(
            fh,
            images=e.rows["image"].to_numpy().astype(str),
            explained_class=np.full(len(e.rows), PNEUMONIA),
            patients=e.rows["patient"].to_numpy().astype(str),
            **{f"raw/{m}": v for m, v in e.result.raw.items()},
            **{f"attr/{m}": v.astype(np.float16) for m, v in attributions.items()},
            **{f"attr_rows/{m}": rows for m in attributions},
        )


def artifacts(files: ExplainFiles) -> list[Path]:
    """What of a written explain folder goes to MLflow: its tables and figures (not ``maps.npz``, kept for stage
    consistency and the viewer only)."""
    return [*(f for f in files.tables if f.is_file()), *sorted(files.dir.glob("*.png"))]


def explain_metrics(explanation: Explanation, config: ExplainParams, *, arch: str, source: str) -> dict:
    """The small JSON for ``dvc metrics``: per method and measure the mean over every image it applies to (95 %
    patient-clustered interval, ``n`` images, ``clusters`` patients), the sanity verdicts, the pointing baselines and
    the settings the report quotes."""
    e = explanation
    per_image = e.per_image
    boxed = per_image[per_image["has_box"]].drop_duplicates("index")
    out: dict = {
        "arch": arch,
        "source": source,
        "split": config.split,
        "threshold": e.threshold,
        "images": len(e.rows),
        "images_with_boxes": len(boxed),
        "subset_images": int(per_image.loc[per_image["in_subset"], "index"].nunique()),
        "pointing_chance": float(boxed["chance"].mean()) if len(boxed) else math.nan,
        "pointing_centre_prior": float(boxed["centre_prior"].mean()) if len(boxed) else math.nan,
        "methods": {},
        "not_applicable": dict(e.not_applicable),
        "settings": {  # what the report says about how these numbers were computed
            "threshold": config.threshold,
            "measures": list(config.measures),
            "iobb_level": config.iobb_level,
            "pointing_tolerance": config.pointing_tolerance,
            "tie_orders": config.tie_orders,
            "bootstrap": config.bootstrap,
            "sanity_threshold": config.sanity.threshold,
            "sanity_modes": list(config.sanity.modes),
            "data_randomisation": config.sanity.data_randomisation,
        },
    }
    overall = e.summary[e.summary["group"] == "all"].set_index(["method", "metric"])
    verdicts = e.sanity.set_index("method") if len(e.sanity) else pd.DataFrame()
    for method in per_image["method"].unique():
        entry: dict = {}
        for name in measure_columns(per_image):
            if (method, name) in overall.index:
                row = overall.loc[(method, name)]
                entry[name] = {k: float(row[k]) for k in ("mean", "low", "high")} | {
                    k: int(row[k]) for k in ("n", "clusters")
                }
        if method in verdicts.index:
            v = verdicts.loc[method]
            entry["sanity"] = {
                "spearman_after_last_block": float(v["spearman_after_last_block"]),
                "ssim_after_last_block": float(v["ssim_after_last_block"]),
                "min_spearman": float(v["min_over_steps"]),
                "passes": bool(v["passes"]),
            }
        if e.data_test and method in e.data_test:
            entry["data_randomisation"] = e.data_test[method]
        out["methods"][method] = entry
    return out


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """``explain/<method>/<measure>``: the mean of every measured cell of :func:`explain_metrics` (NaN left out)."""
    return {
        f"explain/{method}/{metric}": v["mean"]
        for method, entry in metrics["methods"].items()
        for metric, v in entry.items()
        if isinstance(v, dict) and "mean" in v and not math.isnan(v["mean"])
    }


def log_to_run(run: dict, metrics: dict, files: ExplainFiles, metrics_file: Path) -> None:
    """Log :func:`mlflow_metrics` and the :func:`artifacts` of ``files`` (with ``metrics_file``) under ``explain/`` to
    the architecture's MLflow run (``run``: its reference, :func:`cxrexplain.tracking.require_run`)."""
    run_id, uri = run["run_id"], run["tracking_uri"]
    tracking.log_metrics(run_id, mlflow_metrics(metrics), uri=uri)
    tracking.log_artifacts(run_id, [*artifacts(files), metrics_file], "explain", uri=uri)


def headline(metrics: dict) -> str | None:
    """One line for the log: Grad-CAM's pointing game beside its baselines and its sanity verdict (None without)."""
    grad = metrics["methods"].get("gradcam", {})
    if "pointing" not in grad:
        return None
    return (
        f"{metrics['arch']}: Grad-CAM pointing game {grad['pointing']['mean']:.2f} (chance "
        f"{metrics['pointing_chance']:.2f}, centre prior {metrics['pointing_centre_prior']:.2f}) on "
        f"{metrics['images_with_boxes']} images with boxes; sanity "
        f"{'passes' if grad.get('sanity', {}).get('passes') else 'FAILS'}"
    )


__all__ = [
    "Explanation",
    "applicable_config",
    "artifacts",
    "choose_threshold",
    "data_randomisation",
    "explain_metrics",
    "explain_split",
    "explain_trained",
    "headline",
    "load_model",
    "log_to_run",
    "mlflow_metrics",
    "network_inputs",
    "save",
    "split_rows",
    "write_maps",
]
