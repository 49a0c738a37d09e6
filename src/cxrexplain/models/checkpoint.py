"""Reading training checkpoints without Lightning: weights-only, into the plain :class:`Classifier`.

The explain stage and ``explain-image`` need the network, not the training module, so they load it here and import
neither Lightning nor torchmetrics (3-4 s of every such process's start on this project's 2-core CPU machine,
``python -X importtime``). Training and its resume use :func:`cxrexplain.models.module.load_checkpoint`, which
reads through the same :func:`read_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cxrexplain.errors import CxrError
from cxrexplain.models.backbones import Classifier, build_classifier

MODEL_PREFIX = "model."
"""The training module keeps its :class:`Classifier` as ``self.model``: its weights' keys start with this."""

TRAINING_ONLY = frozenset({"loss.pos_weight"})
"""Other keys a training checkpoint holds (the loss's class weight), not part of the network."""


def read_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file's contents, read weights-only: the one place the project reads a checkpoint.

    ``torch.load(..., weights_only=True)`` is passed explicitly, so torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    (which overrides only a call that leaves ``weights_only`` unset) cannot turn it into a full unpickling. A file
    that needs pickled objects (which could run code when loaded), a truncated or foreign file, or one without a
    ``state_dict`` and ``hyper_parameters`` is a :class:`CxrError` naming it.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CxrError(f"{path}: checkpoint not found") from None
    except Exception as error:
        text = str(error)
        if "WeightsUnpickler error:" in text:  # keep torch's reason, not its advice to allowlist or unpickle
            text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split(". Please")[0]
        reason = f"{type(error).__name__}: {' '.join(text.split())[:300]}"
        if "Unsupported global" in text:
            raise CxrError(
                f"{path}: refused: it needs pickled objects beyond tensors and plain values, which could run code "
                f"when loaded; it is not a cxrexplain checkpoint ({reason})"
            ) from None
        raise CxrError(f"{path}: not a cxrexplain checkpoint, or truncated ({reason})") from None
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("state_dict"), dict)
        and isinstance(checkpoint.get("hyper_parameters"), dict)
        and "arch" in checkpoint["hyper_parameters"]
    ):
        raise CxrError(f"{path}: not a cxrexplain training checkpoint (no state_dict and hyper_parameters with arch)")
    return checkpoint


@contextmanager
def weights_of(path: Path | str) -> Iterator[None]:
    """Around building a network and loading a checkpoint's weights into it: a checkpoint whose hyper-parameters or
    weights do not fit (another architecture, missing or extra keys, a wrong shape) is a :class:`CxrError` naming
    ``path`` and the first line of the reason."""
    try:
        yield
    except (TypeError, ValueError, KeyError, RuntimeError, CxrError) as error:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise CxrError(f"{path}: not a cxrexplain training checkpoint ({type(error).__name__}: {first})") from None


def load_classifier(path: Path | str, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """A training checkpoint's network and hyper-parameters: the :class:`Classifier` in eval mode on ``device``.

    Built empty (``pretrained="none"``) from the checkpoint's ``arch``, ``dropout`` and ``image_size`` (a ViT is built
    for its training size), then given the checkpoint's
    own weights strictly, as :func:`cxrexplain.models.module.load_checkpoint` does with the training module (tested
    equal), so no download and no ``model.pretrained`` file are needed. Keys other than the network's and
    :data:`TRAINING_ONLY`, or missing ones, make the file a :class:`CxrError` naming it.
    """
    checkpoint = read_checkpoint(path, map_location="cpu")
    hparams = dict(checkpoint["hyper_parameters"])
    state = checkpoint["state_dict"]
    foreign = sorted(k for k in state if not k.startswith(MODEL_PREFIX) and k not in TRAINING_ONLY)
    with weights_of(path):
        if foreign:
            raise KeyError(f"unexpected keys {foreign[:5]}")
        model = build_classifier(
            hparams["arch"],
            pretrained="none",
            dropout=hparams.get("dropout", 0.5),
            image_size=hparams.get("image_size"),
        )
        weights = {k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
        model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), hparams
