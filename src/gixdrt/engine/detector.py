"""The :class:`Detector` facade: contrast-processed polar images in, peak tables out."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..peaks import PeakTable

log = logging.getLogger(__name__)

#: backends in the order ``auto`` prefers them
BACKENDS = ("torch",)


class Detector:
    """A detection model on one backend and device.

    model: a :class:`gixdrt.model.GixdDetector`, or a name/path for :func:`gixdrt.model.load`
        (``"published"``, ``"default"``, a checkpoint path).
    backend: ``"auto"`` or one of :data:`BACKENDS`. device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    Thresholds (``score_threshold`` default 0.6, ``nms_iou`` 0.1, ``max_detections`` 250) override the
    model card's when given.
    """

    def __init__(
        self,
        model: Any = "default",
        *,
        backend: str = "auto",
        device: str = "cpu",
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
    ):
        import torch

        from .. import model as model_pkg

        if backend == "auto":
            backend = BACKENDS[0]
            log.info("backend auto → %s", backend)
        if backend not in BACKENDS:
            raise ValueError(f"unknown or unavailable backend {backend!r}; available here: {', '.join(BACKENDS)}")
        self.backend = backend
        self.model_spec = model if isinstance(model, str) else getattr(model, "card", None) or "in-memory model"
        net = model_pkg.load(model) if not isinstance(model, torch.nn.Module) else model
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU")
        self.model = net.to(self.device).eval()
        if score_threshold is not None:
            self.model.score_threshold = float(score_threshold)
        if nms_iou is not None:
            self.model.nms_iou = float(nms_iou)
        if max_detections is not None:
            self.model.max_detections = int(max_detections)

    @property
    def card(self) -> dict[str, Any] | None:
        return getattr(self.model, "card", None)

    @property
    def thresholds(self) -> dict[str, float]:
        m = self.model
        return {"score_threshold": m.score_threshold, "nms_iou": m.nms_iou, "max_detections": m.max_detections}

    def boxes(self, images: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """images: float32[N, H, W] or [H, W] processed polar images in [0, 1] (NumPy or torch)
        → per image (boxes float32[K, 4] (x0, y0, x1, y1) polar px, scores float32[K]), by decreasing score."""
        import torch

        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images, np.float32))
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"expected images [N, H, W] or [H, W], got shape {tuple(x.shape)}")
        with torch.inference_mode():
            dets = self.model(x[:, None].to(self.device, torch.float32))
        return [(d["boxes"].cpu().numpy(), d["scores"].cpu().numpy()) for d in dets]

    def detect(
        self,
        images: Any,
        *,
        polar: Sequence[np.ndarray] | np.ndarray | None = None,
        q_max: float | None = None,
        first_frame: int = 0,
        sources: Sequence[str] | None = None,
    ) -> list[PeakTable]:
        """Detect peaks in a batch of processed polar images → one :class:`PeakTable` per image.

        polar: the uncorrected polar images (for the ``intensity`` column), q_max: |Q| of the last column
        in Å⁻¹ (for the physical columns); frames are numbered from ``first_frame``.
        """
        results = self.boxes(images)
        shape = tuple(np.shape(images)[-2:])
        tables = []
        for i, (b, s) in enumerate(results):
            tables.append(
                PeakTable.from_boxes(
                    b,
                    s,
                    frame=first_frame + i,
                    source=sources[i] if sources is not None else "",
                    image_shape=shape,
                    q_max=q_max,
                    polar=None if polar is None else polar[i],
                )
            )
        return tables
