"""The typed, validated view of ``params.yaml``: the only module that reads it.

The defaults of these models *are* the study's configuration on real NIH data; ``params.yaml`` is their rendering
(``cxrexplain params``), and a profile under ``profiles/`` (``ci``, ``demo``) is a partial override merged over them.
Every model is frozen and forbids unknown keys, so a typo, a wrong type or an impossible value fails before any work,
with a message that names the key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrexplain import names
from cxrexplain.errors import CxrError
from cxrexplain.explain.measures.registry import MEASURES

PARAMS_FILE = Path("params.yaml")
PROFILES_DIR = Path("profiles")

# Allowed names come from the registries: the measures' registry itself (it imports torch only to compute), the
# others' names through cxrexplain/names.py, which each of those registries checks it agrees with when imported (so
# that params, download, sample and split validate params.yaml without importing torch).
ARCHS = names.ARCHS
# the largest network input side accepted anywhere (train.image_size, explain-image --size, a checkpoint's size):
# 1024 px is NIH's full resolution; a 100,000 px request would be killed for memory instead of refused
MAX_INPUT_SIDE = 1024
MIN_INPUT_SIDE = 32
CAM_NAMES = names.CAMS
ATTRIBUTION_NAMES = names.ATTRIBUTIONS
MEASURE_NAMES = tuple(MEASURES)
SANITY_MODES = names.SANITY_MODES


def _distinct(values: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    """``values`` unchanged when no value repeats; else a ValueError naming ``what`` and the repeated values."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} must be distinct: {', '.join(map(str, repeated))} repeated")
    return values


class _Section(BaseModel):
    # allow_inf_nan=False: ``lr: .nan`` or ``dropout: .inf`` is refused like any other impossible value
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class RetryParams(_Section):
    attempts: int = Field(5, ge=1, description="tries per file before giving up")
    backoff_s: float = Field(2.0, ge=0, description="first wait between tries, doubled each time (capped at 60 s)")
    timeout_s: float = Field(60.0, gt=0, description="seconds without data before a try is abandoned")
    min_bytes_per_s: float = Field(
        10_000.0, ge=0, description="a try slower than this on average over speed_window_s is abandoned (0: never)"
    )
    speed_window_s: float = Field(60.0, gt=0, description="seconds over which the speed is averaged")


class SyntheticParams(_Section):
    patients: int = Field(3000, ge=4, description="patients in the generated mirror (images: about 1.9 per patient)")
    image_size: int = Field(1024, ge=32, le=2048, description="side of the generated PNGs in pixels (NIH: 1024)")
    pneumonia_fraction: float = Field(
        0.25, gt=0, lt=1, description="share of patients with at least one Pneumonia image (NIH: 3.3 %)"
    )
    opacity_scale: float = Field(
        1.0, gt=0, le=3, description="multiplies the opacities' radii (reduced profiles: larger, for small CPU budgets)"
    )
    opacity_contrast: float = Field(
        1.0, gt=0, le=4, description="multiplies the opacities' density (reduced profiles: denser, for small budgets)"
    )
    seed: int = Field(0, description="seed of the generator: same seed, same bytes")


class DicomParams(_Section):
    labels: str = Field(
        "labels.csv",
        description="with source dicom: the labels CSV (file,label[,patient,view]) in data/raw/, where the DICOM "
        "files it lists are",
    )
    boxes: str | None = Field(None, description="with source dicom: the boxes CSV (file,x,y,w,h) in data/raw/, or none")
    max_skipped: float = Field(
        0.01, ge=0, lt=1, description="with source dicom: share of listed files that may be unreadable and skipped"
    )

    @field_validator("labels", "boxes")
    @classmethod
    def _inside_raw(cls, value: str | None) -> str | None:
        if value is not None and (not value or Path(value).is_absolute() or ".." in Path(value).parts):
            raise ValueError(f"a file name inside data/raw/, got {value!r}")
        return value


class DataParams(_Section):
    source: Literal["nih", "synthetic", "dicom"] = Field(
        "nih",
        description="nih: the 12 official archives; synthetic: the project's generated NIH-format mirror; "
        "dicom: your DICOM files and labels CSV in data/raw/ (data.dicom)",
    )
    mirror: str | None = Field(
        None, description="base URL or local directory with the NIH file names, used instead of the official links"
    )
    retry: RetryParams = RetryParams()
    synthetic: SyntheticParams = SyntheticParams()
    dicom: DicomParams = DicomParams()


class SampleParams(_Section):
    positive: Literal["contains", "only"] = Field(
        "contains", description="contains: labels include Pneumonia; only: Pneumonia is the only label"
    )
    negatives: Literal["no_finding", "all_others"] = Field(
        "no_finding",
        description="no_finding: the negatives are No Finding images (the study's task); all_others: every image "
        "without Pneumonia (one-vs-rest, CheXNet's and the ChestX-ray14 literature's setting)",
    )
    views: tuple[Literal["PA", "AP"], ...] = Field(("PA", "AP"), min_length=1, description="view positions kept")
    per_class: int = Field(5000, ge=1, description="images wanted per class (the study: 5,000)")
    balance: bool = Field(True, description="take as many No Finding images as Pneumonia images were found")
    image_size: int = Field(256, ge=32, le=1024, description="side of the cached 8-bit grayscale images")

    @field_validator("views", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class SplitParams(_Section):
    train: float = Field(0.70, gt=0, lt=1, description="share of images for training")
    val: float = Field(0.15, gt=0, lt=1, description="share for validation (early stopping, threshold choice)")
    test: float = Field(0.15, gt=0, lt=1, description="share for the held-out test")
    group_by: Literal["patient", "image"] = Field(
        "patient", description="patient: no patient in two splits; image: the study's leaky protocol, for an audit"
    )
    official_test: bool = Field(False, description="use NIH test_list.txt as the test set (train/val split the rest)")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"train + val + test must sum to 1, got {self.train} + {self.val} + {self.test} = {total:g}"
            )
        return self


class ModelParams(_Section):
    archs: tuple[str, ...] = Field(
        ("resnet50", "densenet121"),
        min_length=1,
        description="the backbones trained, explained and compared pairwise (dvc.yaml's matrix follows it)",
    )
    pretrained: str = Field(
        "imagenet", description="imagenet (torchvision weights), none (from scratch) or a path to a state dict"
    )
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the head's Linear(256)")

    @field_validator("archs")
    @classmethod
    def _known_distinct_archs(cls, archs: tuple[str, ...]) -> tuple[str, ...]:
        for arch in archs:
            if problem := _unknown_arch(arch):
                raise ValueError(problem)
        # any number: the consistency stage and DeLong's test compare every pair (none with one backbone)
        return _distinct(archs, "architectures")


class AugmentParams(_Section):
    rotate_deg: float = Field(10.0, ge=0, le=180, description="random rotation within ±this many degrees")
    zoom: float = Field(0.10, ge=0, lt=1, description="random zoom within ±this fraction")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    contrast: float = Field(0.2, ge=0, le=1, description="random contrast change within ±this fraction")
    brightness: float = Field(0.2, ge=0, le=1, description="random brightness change within ±this fraction")


class TrainParams(_Section):
    image_size: int = Field(
        224, ge=MIN_INPUT_SIDE, le=MAX_INPUT_SIDE, description="network input side (cache images are resized to it)"
    )
    batch_size: int = Field(32, ge=1, description="images per step and device")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    max_epochs: int = Field(30, ge=1, description="upper bound on epochs")
    patience: int = Field(5, ge=1, description="early stopping: epochs without a better val loss")
    pos_weight: float | Literal["auto"] | None = Field(
        None, description="BCE weight of Pneumonia: null (none), a number, or auto (negatives / positives in train)"
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="Lightning accelerator")
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="devices per node (GPUs, or CPU processes for ddp)"
    )
    strategy: Literal["auto", "ddp", "ddp_spawn"] = Field("auto", description="auto, or ddp for multi-GPU / multi-node")
    num_nodes: int = Field(1, ge=1, description="machines in a multi-node run")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on GPUs that support it, 32-true otherwise"
    )
    deterministic: bool = Field(True, description="deterministic algorithms: same params and seed, same metrics")
    resume: bool = Field(False, description="continue from models/<arch>/last.ckpt when a run was interrupted")
    augment: AugmentParams = AugmentParams()


class AttributionParams(_Section):
    ig_steps: int = Field(32, ge=2, description="Integrated Gradients: steps of the path integral")
    occlusion_window: float = Field(0.125, gt=0, le=1, description="Occlusion: window side as a fraction of the image")
    occlusion_stride: float = Field(0.0625, gt=0, le=1, description="Occlusion: stride as a fraction of the image")
    shap_samples: int = Field(8, ge=1, description="GradientSHAP: random baseline/noise samples per image")
    smoothgrad_samples: int = Field(16, ge=1, description="SmoothGrad (<method>_smoothgrad): noisy copies per image")
    smoothgrad_noise: float = Field(
        0.15, gt=0, le=1, description="SmoothGrad: noise standard deviation as a fraction of the pixel range [0, 1]"
    )


class FaithfulnessParams(_Section):
    steps: int = Field(20, ge=2, description="deletion/insertion: pixel fractions evaluated between 0 and 1")
    baseline: Literal["mean", "blur", "black"] = Field(
        "mean", description="what a deleted pixel becomes (and what insertion starts from)"
    )
    road_percentiles: tuple[int, ...] = Field(
        (10, 20, 30, 40, 50, 60, 70, 80, 90), min_length=1, description="ROAD: percentages of pixels imputed"
    )

    @field_validator("road_percentiles")
    @classmethod
    def _percentages(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 < p < 100 for p in value) or len(set(value)) != len(value):
            raise ValueError("must be distinct percentages strictly between 0 and 100")
        return tuple(sorted(value))


class SanityParams(_Section):
    images: int = Field(32, ge=2, description="images of the subset used by the randomisation sanity checks")
    modes: tuple[Literal[SANITY_MODES], ...] = Field(
        SANITY_MODES, min_length=1, description="model randomisation: top_down and bottom_up cascades, independent"
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="a method passes when mean |Spearman| is below this after head + last block"
    )
    data_randomisation: bool = Field(
        False, description="also retrain on permuted labels and compare maps (Adebayo et al.'s data test; costly)"
    )
    data_epochs: int = Field(2, ge=1, description="epochs of the permuted-label training")


class GalleryParams(_Section):
    per_outcome: int = Field(8, ge=1, description="Grad-CAM gallery: images per outcome (TP, FP, FN, TN)")
    compare_images: int = Field(6, ge=1, description="method-comparison grid: images (rows)")


class ExplainParams(_Section):
    split: Literal["val", "test"] = Field("test", description="which split's images are explained")
    threshold: float | Literal["youden"] = Field(
        0.5,
        description="decision threshold (outcomes, class of the decision maps): a probability, or youden (on val)",
    )
    cams: tuple[Literal[CAM_NAMES], ...] = Field(
        names.GRADIENT_CAMS,
        min_length=1,
        description="CAM methods (native, batched); scorecam and ablationcam cost a forward pass per channel and image",
    )
    attributions: tuple[Literal[ATTRIBUTION_NAMES], ...] = Field(
        names.BASELINE_ATTRIBUTIONS,
        description="captum attributions (run on the subset); also input_x_gradient, guided_backprop, guided_gradcam, "
        "deeplift and <method>_smoothgrad",
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="images per batch (also captum's internal batch size and the perturbed copies per pass of "
        "scorecam and ablationcam)",
    )
    measures: tuple[Literal[MEASURE_NAMES], ...] = Field(
        MEASURE_NAMES, description="per-image measures of the registry (explain/measures)"
    )
    subset: int | None = Field(
        200, ge=1, description="images for faithfulness and complexity (balanced classes), every method; null: all"
    )
    iobb_level: float = Field(0.5, gt=0, lt=1, description="a map is binarised at this fraction of its maximum")
    pointing_tolerance: float = Field(
        0.0, ge=0, lt=0.5, description="pointing game: a hit within this fraction of the image side of a box"
    )
    tie_orders: int = Field(4, ge=1, description="random orders of tied pixels averaged over by ranking measures")
    bootstrap: int = Field(1000, ge=50, description="patient-clustered bootstrap resamples of every interval")
    attribution: AttributionParams = AttributionParams()
    faithfulness: FaithfulnessParams = FaithfulnessParams()
    sanity: SanityParams = SanityParams()
    gallery: GalleryParams = GalleryParams()

    @field_validator("cams", "attributions", "measures", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("cams", "attributions", "measures")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _distinct(value, "names")

    @field_validator("threshold")
    @classmethod
    def _probability(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 < value < 1:
            raise ValueError("must be a probability strictly between 0 and 1, or youden")
        return value


class ReportParams(_Section):
    bootstrap: int = Field(1000, ge=50, description="bootstrap resamples of the test set for the 95 % intervals")


SEED_RANGE = {"ge": 0, "le": 2**32 - 1}


class Params(_Section):
    seed: int = Field(
        42, **SEED_RANGE, description="data seed: sampling, splitting, explained subsets, tie orders, bootstraps"
    )
    seeds: tuple[Annotated[int, Field(**SEED_RANGE)], ...] = Field(
        (42, 43, 44),
        min_length=1,
        description="training seeds: every backbone trains and is explained once per seed (dvc.yaml's matrix); "
        "the first is the primary run the report details, all give the seed spread",
    )
    workers: int = Field(
        4, ge=0, description="processes for parallel work (rendering, archives, data loading; 0: in the main process)"
    )
    data: DataParams = DataParams()
    sample: SampleParams = SampleParams()
    split: SplitParams = SplitParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    explain: ExplainParams = ExplainParams()
    report: ReportParams = ReportParams()

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return _distinct(value, "seeds")

    @model_validator(mode="after")
    def _input_size_fits_the_archs(self) -> Params:
        for arch in self.model.archs:
            patch = names.PATCH_SIZES.get(arch)
            if patch and self.train.image_size % patch:
                raise ValueError(
                    f"train.image_size: {self.train.image_size} px does not fit {arch} in model.archs: the input side "
                    f"must be a multiple of its patch size, {patch} px"
                )
        return self

    @model_validator(mode="after")
    def _methods_apply_to_some_arch(self) -> Params:
        """A method that applies to none of ``model.archs`` would explain nothing: refused, with the reason. One that
        applies to some is skipped on the others and recorded (``names.not_applicable``)."""
        for method in self.explain.attributions:
            reasons = [names.not_applicable(arch, (method,)).get(method) for arch in self.model.archs]
            if all(reasons):
                raise ValueError(
                    f"explain.attributions: {method} applies to none of model.archs "
                    f"({', '.join(self.model.archs)}): {'; '.join(dict.fromkeys(reasons))}"
                )
        return self

    @property
    def primary_seed(self) -> int:
        """The first training seed: the run the report details (galleries, per-method tables, consistency)."""
        return self.seeds[0]


# ----------------------------------------------------------------------------------------------------------------------
# Loading and validation


def _unknown_arch(arch: str) -> str | None:
    """What is wrong with ``arch`` (not one of :data:`ARCHS`, which it names), or None."""
    return None if arch in ARCHS else f"unknown arch {arch!r} (available: {', '.join(ARCHS)})"


def require_arch(arch: str, stage: str) -> None:
    """A :class:`CxrError` naming ``stage`` and the available architectures unless ``arch`` is one of :data:`ARCHS`."""
    if problem := _unknown_arch(arch):
        raise CxrError(f"{stage}: {problem}")


def require_seed(params: Params, seed: int | None, stage: str) -> int:
    """The training seed a stage runs with: ``seed`` when it is one of ``params.seeds`` (else a :class:`CxrError`
    naming ``stage`` and the seeds), the primary seed when None."""
    if seed is None:
        return params.primary_seed
    if seed not in params.seeds:
        raise CxrError(
            f"{stage}: seed {seed} is not one of the training seeds in params.yaml "
            f"(seeds: {', '.join(map(str, params.seeds))}); add it there, DVC's matrix follows the list"
        )
    return seed


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid parameters"]
    for err in error.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
            continue
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def validate(raw: Mapping[str, Any], source: str = str(PARAMS_FILE)) -> Params:
    """Validate a parsed params mapping; a :class:`CxrError` lists every bad key with its value."""
    if not isinstance(raw, Mapping):
        raise CxrError(f"{source}: expected a mapping of parameters at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(_yaml_to_model(raw))
    except ValidationError as error:
        raise CxrError(_format_errors(source, error)) from None


def _yaml_to_model(raw: Any) -> Any:
    """YAML lists become tuples (the models are frozen); everything else is passed through as parsed."""
    if isinstance(raw, Mapping):
        return {key: _yaml_to_model(value) for key, value in raw.items()}
    if isinstance(raw, list):
        return tuple(_yaml_to_model(value) for value in raw)
    return raw


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last one
    silently, so ``lr: 0.1`` further down a file would override an ``lr`` the reader saw first)."""


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first given at line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing file, a syntax error or a duplicate key is a :class:`CxrError` naming the file
    (and line)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise CxrError(
            f"{path}: file not found (run from the repository root, or render it: cxrexplain params)"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise CxrError(f"{path}: not valid YAML: {error}") from None
    return {} if data is None else data


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` (or ``path``)."""
    return validate(read_yaml(Path(path)), str(path))


# ----------------------------------------------------------------------------------------------------------------------
# Profiles


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``, recursively for nested mappings; lists and scalars are replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def available_profiles(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    """``study`` (the defaults) plus every ``profiles/<name>.yaml``."""
    return ["study", *sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))]


def profile_params(name: str, profiles_dir: Path = PROFILES_DIR) -> Params:
    """The study's defaults with the named profile merged over them (``study``: the defaults alone)."""
    defaults = Params().model_dump(mode="json")
    if name == "study":
        return validate(defaults, "study defaults")
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.is_file():
        raise CxrError(
            f"unknown profile {name!r}: no {path} (available: {', '.join(available_profiles(profiles_dir))})"
        )
    override = read_yaml(path)
    if not isinstance(override, Mapping):
        raise CxrError(f"{path}: expected a mapping of parameters to override")
    return validate(deep_merge(defaults, override), str(path))


def _comment_lines(model: type[BaseModel], data: Mapping[str, Any], indent: int) -> Iterator[str]:
    pad = "  " * indent
    for key, value in data.items():
        field = model.model_fields[key]
        annotation = field.annotation
        if isinstance(value, Mapping) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            note = f"  # {field.description}" if field.description else ""
            yield f"{pad}{key}:{note}"
            yield from _comment_lines(annotation, value, indent + 1)
            continue
        shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        note = f"  # {field.description}" if field.description else ""
        yield f"{pad}{key}: {shown}{note}"


def render_params(params: Params, profile: str) -> str:
    """``params.yaml`` text for ``params``: every key, each with its description as a comment."""
    header = [
        f"# Pipeline parameters: profile '{profile}', rendered by `cxrexplain params --profile {profile}`.",
        "# The study's configuration is the default (profile 'study'); profiles/*.yaml override parts of it.",
        "# Edit values here or with `dvc exp run -S key=value`; every key is validated before a stage does any work.",
    ]
    body = _comment_lines(Params, params.model_dump(mode="json"), 0)
    return "\n".join([*header, *body]) + "\n"


def write_params(params: Params, profile: str, path: Path = PARAMS_FILE) -> None:
    """Write ``params.yaml`` atomically; the written file is re-read and must validate to the same values."""
    text = render_params(params, profile)
    if validate(yaml.safe_load(text), str(path)) != params:  # guard against a rendering bug
        raise AssertionError("rendered params do not round-trip")
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent or ".", prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
