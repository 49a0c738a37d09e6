"""Stage explain@arch: explain the images of a split with the CAM family and the captum baselines, measure the
explanations with every measure of the registry, draw galleries, and log it all to the architecture's MLflow run.

Reads ``models/<arch>/best.ckpt`` (+ its ``predictions.csv`` for a Youden threshold and ``mlflow_run.json``), the
cache and the split. Writes ``explain/<arch>/`` through a temporary folder renamed on success: ``per_image.csv``
(one row per method, image and explained class), ``summary.csv`` (patient-clustered intervals with n), ``paired.csv``
(methods compared on the same images), ``sanity_curve.csv`` and ``sanity.csv`` (verdicts), ``data_randomisation.csv``
when enabled, ``maps.npz`` (raw Pneumonia CAMs for stage ``consistency``) and the galleries; and
``metrics/explain/<arch>.json`` (means, intervals, n, the verdicts and the settings used).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrexplain import tracking
from cxrexplain.config import ARCHS, Params
from cxrexplain.data.datamodule import eval_transform, read_split
from cxrexplain.data.sample import load_cache
from cxrexplain.errors import CxrError
from cxrexplain.evaluation.metrics import youden_threshold
from cxrexplain.explain import gallery
from cxrexplain.explain.evaluate import (
    MAPS_FILE,
    PNEUMONIA,
    Explained,
    ExplainSettings,
    explain_images,
    measure_columns,
    outcomes,
    paired_table,
    parse_boxes,
    scale_boxes,
    signed_explainer,
    summary_table,
)
from cxrexplain.explain.measures import sanity
from cxrexplain.explain.measures.registry import MeasureOptions
from cxrexplain.io import atomic_dir, atomic_file, write_csv, write_json
from cxrexplain.models.backbones import GRAY_MEAN, GRAY_STD
from cxrexplain.models.module import load_checkpoint
from cxrexplain.models.permuted import train_on_permuted_labels
from cxrexplain.progress import item_progress
from cxrexplain.workspace import Workspace

CACHE_DIR = Workspace().cache.dir  # the workspace's path
EXPLAIN_DIR = Workspace().consistency.parent  # the workspace's path
METRICS_DIR = Workspace().metrics  # the workspace's path
MODELS_DIR = Workspace().model("_").dir.parent  # the workspace's path
SPLIT_FILE = Workspace().split  # the workspace's path

log = logging.getLogger(__name__)


def settings_from(params: Params) -> ExplainSettings:
    """The library's settings from ``params.explain`` (and the global seed)."""
    e = params.explain
    a = e.attribution
    return ExplainSettings(
        cams=e.cams,
        attributions=e.attributions,
        measures=e.measures,
        batch_size=e.batch_size,
        subset=e.subset,
        sanity_images=e.sanity.images,
        sanity_modes=e.sanity.modes,
        options={
            "integrated_gradients": {"n_steps": a.ig_steps},
            "occlusion": {"window": a.occlusion_window, "stride": a.occlusion_stride},
            "gradient_shap": {"n_samples": a.shap_samples},
        },
        measure=MeasureOptions(
            level=e.iobb_level,
            tolerance=e.pointing_tolerance * params.train.image_size,
            steps=e.faithfulness.steps,
            baseline=e.faithfulness.baseline,
            road_percentiles=e.faithfulness.road_percentiles,
            orders=e.tie_orders,
            batch_size=e.batch_size * 4,
            seed=params.seed,
        ),
        seed=params.seed,
    )


def load_model(checkpoint: Path, device: torch.device) -> torch.nn.Module:
    """The :class:`~cxrexplain.models.backbones.Classifier` of a training checkpoint, in eval mode on ``device``."""
    if not Path(checkpoint).is_file():
        raise CxrError(f"{checkpoint}: not found; run the train stage first (dvc repro train)")
    return load_checkpoint(checkpoint, device).model.to(device).eval()


def choose_threshold(params: Params, predictions: Path) -> float:
    """``explain.threshold``: a probability, or Youden's J on the validation predictions of the train stage."""
    threshold = params.explain.threshold
    if threshold != "youden":
        return float(threshold)
    try:
        table = pd.read_csv(predictions)
    except FileNotFoundError:
        raise CxrError(f"{predictions}: not found; run the train stage first (dvc repro train)") from None
    val = table[table["split"] == "val"]
    return youden_threshold(val["label"].to_numpy(), val["probability"].to_numpy())


def _metrics(
    images: int,
    per_image: pd.DataFrame,
    summary: pd.DataFrame,
    verdict: pd.DataFrame,
    data_test: dict | None,
    threshold: float,
) -> dict:
    """The small JSON for ``dvc metrics``: per method and measure the mean over every image it applies to (95 %
    patient-clustered interval, ``n`` images, ``clusters`` patients), the sanity verdict and the baselines."""
    boxed = per_image[per_image["has_box"]].drop_duplicates("index")
    out: dict = {
        "threshold": threshold,
        "images": images,
        "images_with_boxes": len(boxed),
        "subset_images": int(per_image.loc[per_image["in_subset"], "index"].nunique()),
        "pointing_chance": float(boxed["chance"].mean()) if len(boxed) else math.nan,
        "pointing_centre_prior": float(boxed["centre_prior"].mean()) if len(boxed) else math.nan,
        "methods": {},
    }
    overall = summary[summary["group"] == "all"].set_index(["method", "metric"])
    verdicts = verdict.set_index("method") if len(verdict) else pd.DataFrame()
    for method in per_image["method"].unique():
        entry: dict = {}
        for name in measure_columns(per_image):
            if (method, name) in overall.index:
                row = overall.loc[(method, name)]
                entry[name] = {
                    "mean": float(row["mean"]),
                    "low": float(row["low"]),
                    "high": float(row["high"]),
                    "n": int(row["n"]),
                    "clusters": int(row["clusters"]),
                }
        if method in verdicts.index:
            v = verdicts.loc[method]
            entry["sanity"] = {
                "spearman_after_last_block": float(v["spearman_after_last_block"]),
                "ssim_after_last_block": float(v["ssim_after_last_block"]),
                "min_spearman": float(v["min_over_steps"]),
                "passes": bool(v["passes"]),
            }
        if data_test and method in data_test:
            entry["data_randomisation"] = data_test[method]
        out["methods"][method] = entry
    return out


def run(
    params: Params,
    arch: str,
    *,
    cache_dir: Path = CACHE_DIR,
    split_file: Path = SPLIT_FILE,
    models_dir: Path = MODELS_DIR,
    explain_dir: Path = EXPLAIN_DIR,
    metrics_dir: Path = METRICS_DIR,
    device: str | None = None,
    show_progress: bool = True,
    log_to_mlflow: bool = True,
) -> dict:
    """Explain and measure ``arch``'s model on ``params.explain.split``; returns the metrics JSON."""
    if arch not in ARCHS:
        raise CxrError(f"explain: unknown arch {arch!r} (available: {', '.join(ARCHS)})")
    e = params.explain
    run_ref = Path(models_dir) / arch / tracking.RUN_REF
    ref = tracking.read_run_ref(run_ref) if log_to_mlflow else None
    if ref is not None:
        tracking.check_reachable(ref["tracking_uri"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(Path(models_dir) / arch / "best.ckpt", dev)
    threshold = choose_threshold(params, Path(models_dir) / arch / "predictions.csv")

    images, index = load_cache(cache_dir)
    table = read_split(split_file, index)
    part = table[table["split"] == e.split].sort_values("row").reset_index(drop=True)
    if part.empty:
        raise CxrError(f"{split_file}: no {e.split} images to explain")
    size = params.train.image_size
    x = network_inputs(images, part["row"], size)
    boxes = [scale_boxes(parse_boxes(b), size / images.shape[1]) for b in part["boxes"]]
    settings = settings_from(params)

    boxed = sum(1 for b in boxes if b)
    subset_n = len(part) if settings.subset is None else min(settings.subset, len(part))
    total = len(part) + (boxed + subset_n if settings.attributions else 0)
    with item_progress(f"explain {arch}", total=total, unit="images", enabled=show_progress) as adv:
        result = explain_images(
            model,
            x.to(dev),
            part["label"].to_numpy(),
            boxes,
            settings,
            threshold=threshold,
            patients=part["patient"].astype(str).to_numpy(),
            advance=adv,
        )

    per_image = result.per_image
    per_image.insert(2, "image", part["image"].to_numpy()[per_image["index"].to_numpy()])
    summary = summary_table(per_image, n=e.bootstrap, seed=params.seed)
    paired = paired_table(per_image, n=e.bootstrap, seed=params.seed)
    verdict = sanity.sanity_verdict(result.sanity, threshold=e.sanity.threshold)
    data_table, data_test = None, None
    if e.sanity.data_randomisation:
        data_table, data_test = _data_randomisation(
            params, arch, model, x.to(dev), result, settings, cache_dir, split_file
        )

    out = Path(explain_dir) / arch
    metrics_path = Path(metrics_dir) / "explain" / f"{arch}.json"
    with atomic_dir(out) as tmp:
        write_csv(tmp / "per_image.csv", per_image)
        write_csv(tmp / "summary.csv", summary)
        write_csv(tmp / "paired.csv", paired)
        write_csv(tmp / "sanity_curve.csv", result.sanity)
        write_csv(tmp / "sanity.csv", verdict)
        if data_table is not None:
            write_csv(tmp / "data_randomisation.csv", data_table)
        with atomic_file(tmp / MAPS_FILE) as maps_tmp, open(maps_tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                images=part["image"].to_numpy().astype(str),
                explained_class=np.full(len(part), PNEUMONIA),
                patients=part["patient"].to_numpy().astype(str),
                **{f"raw/{m}": v for m, v in result.raw.items()},
            )
        shown = (x[:, 0] * GRAY_STD + GRAY_MEAN).clamp(0, 1).numpy()  # the network's input, back in 0..1
        _galleries(arch, params, part, shown, boxes, per_image, result, tmp, threshold)
    figures = sorted(out.glob("*.png"))

    metrics = {
        "arch": arch,
        "source": params.data.source,
        "split": e.split,
        **_metrics(len(part), per_image, summary, verdict, data_test, threshold),
        "settings": {  # what the report says about how these numbers were computed
            "threshold": e.threshold,
            "measures": list(e.measures),
            "iobb_level": e.iobb_level,
            "pointing_tolerance": e.pointing_tolerance,
            "tie_orders": e.tie_orders,
            "bootstrap": e.bootstrap,
            "sanity_threshold": e.sanity.threshold,
            "sanity_modes": list(e.sanity.modes),
            "data_randomisation": e.sanity.data_randomisation,
        },
    }
    write_json(metrics_path, metrics)
    if ref is not None:
        flat = {
            f"explain/{method}/{metric}": v["mean"]
            for method, entry in metrics["methods"].items()
            for metric, v in entry.items()
            if isinstance(v, dict) and "mean" in v and not math.isnan(v["mean"])
        }
        tracking.log_metrics(ref["run_id"], flat, uri=ref["tracking_uri"])
        tracking.log_artifacts(
            ref["run_id"],
            [*(out / f for f in ARTIFACT_FILES if (out / f).is_file()), metrics_path, *figures],
            "explain",
            uri=ref["tracking_uri"],
        )
    grad = metrics["methods"].get("gradcam", {})
    if "pointing" in grad:
        log.info(
            "%s: Grad-CAM pointing game %.2f (chance %.2f, centre prior %.2f) on %d images with boxes; sanity %s",
            arch,
            grad["pointing"]["mean"],
            metrics["pointing_chance"],
            metrics["pointing_centre_prior"],
            metrics["images_with_boxes"],
            "passes" if grad.get("sanity", {}).get("passes") else "FAILS",
        )
    return metrics


ARTIFACT_FILES = (
    "per_image.csv",
    "summary.csv",
    "paired.csv",
    "sanity.csv",
    "sanity_curve.csv",
    "data_randomisation.csv",
)


def network_inputs(images: np.ndarray, rows: pd.Series, size: int) -> torch.Tensor:
    """The cached 8-bit images ``rows`` as the network sees them: (N, 1, size, size), normalised."""
    transform = eval_transform(size)
    return torch.stack([torch.from_numpy(transform(image=np.asarray(images[r]))["image"])[None] for r in rows])


def _data_randomisation(
    params: Params,
    arch: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    result: Explained,
    settings: ExplainSettings,
    cache_dir: Path,
    split_file: Path,
) -> tuple[pd.DataFrame, dict]:
    """Adebayo et al.'s data randomisation test: a copy of the architecture trained on permuted training labels
    explains the sanity images; its maps are compared with the trained model's (same classes)."""
    permuted, accuracy = train_on_permuted_labels(params, arch, cache_dir, split_file, x.device)
    rows = result.subset[: settings.sanity_images]
    idx = torch.as_tensor(rows, device=x.device)
    classes = torch.as_tensor(result.predicted[rows], device=x.device)
    frames, summary = [], {}
    for method in [*settings.cams, *settings.attributions]:
        explain = signed_explainer(method, settings)
        test = sanity.data_randomisation(
            explain(model, x[idx], classes),
            explain(permuted, x[idx], classes),
            threshold=params.explain.sanity.threshold,
        )
        frames.append(test.per_image.assign(image=rows[test.per_image["image"].to_numpy()]).assign(method=method))
        summary[method] = {
            "mean_abs_spearman": test.mean_abs_spearman,
            "passes": test.passes,
            "permuted_train_accuracy": accuracy,
            "images": len(rows),
        }
    return pd.concat(frames, ignore_index=True), summary


def _galleries(
    arch: str,
    params: Params,
    part: pd.DataFrame,
    shown: np.ndarray,
    boxes: list,
    per_image: pd.DataFrame,
    result: Explained,
    out: Path,
    threshold: float,
) -> list[Path]:
    g = params.explain.gallery
    synthetic = " · SYNTHETIC data, not medical evidence" if params.data.source == "synthetic" else ""
    outcome = outcomes(part["label"].to_numpy(), result.predicted)
    captions = [
        gallery.caption(int(lab), float(p)) + f"\nmap of {'Pneumonia' if c == 1 else 'No Finding'}"
        for lab, p, c in zip(part["label"], result.probability, result.predicted, strict=True)
    ]
    figures = []
    for method in [m for m in ("gradcam",) if m in result.decision_maps] or list(result.decision_maps)[:1]:
        maps = result.decision_maps[method].astype(np.float32)
        figures.append(
            gallery.outcome_gallery(
                shown,
                list(maps),
                boxes,
                captions,
                list(outcome),
                out / f"gallery_{method}.png",
                per_outcome=g.per_outcome,
                title=f"{arch} · {method} · decision maps at threshold {threshold:.2f}{synthetic}",
            )
        )
    # method comparison: every method's Pneumonia map on the first images with boxes
    rows = list(range(min(g.compare_images, len(result.boxed))))
    if rows:
        chosen = [int(result.boxed[r]) for r in rows]
        figures.append(
            gallery.method_grid(
                [shown[i] for i in chosen],
                {m: [maps[r].astype(np.float32) for r in rows] for m, maps in result.pneumonia_maps.items()},
                [boxes[i] for i in chosen],
                [gallery.caption(int(part["label"][i]), float(result.probability[i])) for i in chosen],
                out / "methods.png",
                title=f"{arch} · every method's map of Pneumonia on images with boxes{synthetic}",
            )
        )
    return figures


__all__ = ["MAPS_FILE", "run", "settings_from"]
