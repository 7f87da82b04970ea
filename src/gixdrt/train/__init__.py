"""Training of the detector on simulated images (the paper's recipe).

>>> from gixdrt.train import TrainConfig, train, main_train
>>> train(TrainConfig.from_yaml("configs/train-tiny.yaml"), "runs/tiny")

:mod:`.targets` (anchor / ROI matching and sampling), :mod:`.losses` (training forward through the
detector's stages and the four loss terms), :mod:`.loop` (the loop, checkpoints, resume, final model).
Attributes are imported lazily so that ``import gixdrt.train`` stays cheap.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "loop",
    "TrainResult": "loop",
    "train": "loop",
    "main_train": "loop",
    "export_checkpoint": "loop",
    "TargetConfig": "targets",
    "LossWeights": "losses",
    "detector_losses": "losses",
    "LOSS_TERMS": "losses",
    "evaluate": "evaluate",
    "compare": "evaluate",
    "main_evaluate": "evaluate",
    "match_image": "evaluate",
    "EvalResult": "evaluate",
}

__all__ = [
    "LOSS_TERMS",
    "EvalResult",
    "LossWeights",
    "TargetConfig",
    "TrainConfig",
    "TrainResult",
    "compare",
    "detector_losses",
    "evaluate",
    "export_checkpoint",
    "main_evaluate",
    "main_train",
    "match_image",
    "train",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
