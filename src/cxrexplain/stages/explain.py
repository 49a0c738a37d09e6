"""Stage explain@arch: explain every image of a split with the CAM family and the captum baselines, measure the
explanations, draw galleries, and log it all to the architecture's MLflow run.

Reads ``models/<arch>/best.ckpt`` (+ its ``predictions.csv`` for a Youden threshold and ``mlflow_run.json``), the
cache and the split. Writes ``explain/<arch>/`` (per-image table, summary with bootstrap intervals, sanity table,
CAM maps, galleries) and ``metrics/explain/<arch>.json``; stage ``consistency`` (stages/consistency.py) compares
the architectures.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrexplain import tracking
from cxrexplain.config import (
    ARCHS,
    CACHE_DIR,
    EXPLAIN_DIR,
    METRICS_DIR,
    MODELS_DIR,
    SPLIT_FILE,
    Params,
)
from cxrexplain.data.datamodule import eval_transform, read_split
from cxrexplain.data.sample import load_cache
from cxrexplain.errors import CxrError
from cxrexplain.evaluation.metrics import youden_threshold
from cxrexplain.explain import gallery
from cxrexplain.explain.evaluate import (
    FAITHFULNESS,
    LOCALISATION,
    MAPS_FILE,
    Explained,
    ExplainSettings,
    explain_images,
    parse_boxes,
    sanity_summary,
    scale_boxes,
)
from cxrexplain.explain.scores import IOBB_THRESHOLDS, accuracy_at_iobb, outcomes, summarise
from cxrexplain.io import atomic_file, write_csv, write_json
from cxrexplain.models.backbones import GRAY_MEAN, GRAY_STD
from cxrexplain.models.module import load_checkpoint
from cxrexplain.progress import item_progress

log = logging.getLogger(__name__)


def settings_from(params: Params) -> ExplainSettings:
    """The library's settings from ``params.explain`` (and the global seed)."""
    e = params.explain
    a = e.attribution
    return ExplainSettings(
        cams=e.cams,
        attributions=e.attributions,
        batch_size=e.batch_size,
        subset=e.subset,
        sanity_images=e.sanity_images,
        level=e.iobb_level,
        steps=e.faithfulness.steps,
        baseline=e.faithfulness.baseline,
        options={
            "integrated_gradients": {"n_steps": a.ig_steps},
            "occlusion": {"window": a.occlusion_window, "stride": a.occlusion_stride},
            "gradient_shap": {"n_samples": a.shap_samples},
        },
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


def _metrics(per_image: pd.DataFrame, summary: pd.DataFrame, sanity: pd.DataFrame, threshold: float) -> dict:
    """The small JSON for ``dvc metrics``: per method the overall means (with 95 % intervals) and the sanity result."""
    boxed = per_image[per_image["has_box"]].drop_duplicates("index")
    out: dict = {
        "threshold": threshold,
        "images": int(per_image["index"].nunique()),
        "images_with_boxes": len(boxed),
        "pointing_chance": float(boxed["chance"].mean()) if len(boxed) else math.nan,
        "methods": {},
    }
    overall = summary[summary["group"] == "all"].set_index(["method", "metric"])
    passes = sanity.drop_duplicates("method").set_index("method")
    for method, part in per_image.groupby("method", sort=False):
        entry: dict = {}
        for metric in (*LOCALISATION, *FAITHFULNESS):
            if (method, metric) in overall.index:
                row = overall.loc[(method, metric)]
                entry[metric] = {"mean": row["mean"], "low": row["low"], "high": row["high"], "n": int(row["n"])}
        iobb = part.loc[part["has_box"], "iobb"].to_numpy(dtype=float)
        entry["accuracy_at_iobb"] = {str(t): v for t, v in accuracy_at_iobb(torch.as_tensor(iobb)).items()}
        if method in passes.index:
            entry["sanity"] = {
                "min_spearman": float(passes.loc[method, "min_spearman"]),
                "passes": bool(passes.loc[method, "passes"]),
            }
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
    transform = eval_transform(size)
    factor = size / images.shape[1]
    x = torch.stack([torch.from_numpy(transform(image=np.asarray(images[r]))["image"])[None] for r in part["row"]])
    boxes = [scale_boxes(parse_boxes(b), factor) for b in part["boxes"]]
    settings = settings_from(params)

    subset_n = len(part) if settings.subset is None else min(settings.subset, len(part))
    with item_progress(f"explain {arch}", total=len(part) + subset_n, unit="images", enabled=show_progress) as adv:
        result = explain_images(
            model, x.to(dev), part["label"].to_numpy(), boxes, settings, target=e.target, advance=adv
        )

    per_image = result.per_image
    per_image.insert(1, "image", part["image"].to_numpy()[per_image["index"].to_numpy()])
    per_image.insert(
        5, "outcome", outcomes(per_image["label"].to_numpy(), per_image["probability"].to_numpy(), threshold)
    )
    metric_cols = [*LOCALISATION, *FAITHFULNESS]
    summary = pd.concat(
        [
            summarise(frame, by="outcome", metrics=metric_cols, seed=params.seed).assign(method=method)
            for method, frame in per_image.groupby("method", sort=False)
        ],
        ignore_index=True,
    )[["method", "group", "metric", "n", "mean", "low", "high"]]
    sanity = sanity_summary(result.sanity)

    out = Path(explain_dir) / arch
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "per_image.csv", per_image)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "sanity.csv", sanity)
    with atomic_file(out / MAPS_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh, images=part["image"].to_numpy().astype(str), **{f"raw/{m}": v for m, v in result.raw.items()}
        )
    shown = (x[:, 0] * GRAY_STD + GRAY_MEAN).clamp(0, 1).numpy()  # the network's input, back in 0..1
    figures = _galleries(arch, params, part, shown, boxes, per_image, result, out, threshold)

    metrics = {
        "arch": arch,
        "source": params.data.source,
        "split": e.split,
        **_metrics(per_image, summary, sanity, threshold),
    }
    metrics_path = Path(metrics_dir) / "explain" / f"{arch}.json"
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
            [out / "per_image.csv", out / "summary.csv", out / "sanity.csv", metrics_path, *figures],
            "explain",
            uri=ref["tracking_uri"],
        )
    grad = metrics["methods"].get("gradcam", {})
    if "pointing" in grad:
        log.info(
            "%s: Grad-CAM pointing game %.2f (chance %.2f) on %d images with boxes; sanity %s",
            arch,
            grad["pointing"]["mean"],
            metrics["pointing_chance"],
            metrics["images_with_boxes"],
            "passes" if grad.get("sanity", {}).get("passes") else "FAILS",
        )
    return metrics


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
    first = per_image.drop_duplicates("index").set_index("index").sort_index()
    captions = [
        gallery.caption(int(lab), float(p)) for lab, p in zip(first["label"], first["probability"], strict=True)
    ]
    figures = []
    for method in [m for m in ("gradcam",) if m in result.maps] or list(result.maps)[:1]:
        maps = result.maps[method].astype(np.float32)
        figures.append(
            gallery.outcome_gallery(
                shown,
                list(maps),
                boxes,
                captions,
                list(first["outcome"]),
                out / f"gallery_{method}.png",
                per_outcome=g.per_outcome,
                title=f"{arch} · {method} · threshold {threshold:.2f}{synthetic}",
            )
        )
    # method comparison on the first images of the subset that have boxes (then any), every method
    subset = list(result.subset)
    with_box = [i for i in subset if boxes[i]] + [i for i in subset if not boxes[i]]
    rows = with_box[: g.compare_images]
    position = {i: k for k, i in enumerate(subset)}
    maps_by_method = {}
    for method, maps in result.maps.items():
        full = len(maps) == len(part)
        maps_by_method[method] = [maps[i if full else position[i]].astype(np.float32) for i in rows]
    figures.append(
        gallery.method_grid(
            [shown[i] for i in rows],
            maps_by_method,
            [boxes[i] for i in rows],
            [captions[i] for i in rows],
            out / "methods.png",
            title=f"{arch} · methods{synthetic}",
        )
    )
    return figures


__all__ = ["IOBB_THRESHOLDS", "MAPS_FILE", "run", "settings_from"]
