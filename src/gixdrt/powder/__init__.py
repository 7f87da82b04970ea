"""The powder pipeline: geometry in pyFAI's PONI convention, calibrant rings, the classical spot mask (GSAS-II's
pixel mask search), the U-Net spot mask as a plan of the engine (:mod:`.plan`, :class:`PowderMasker`), its models
(:mod:`.model`), training (:mod:`.train`), evaluation (:mod:`.evaluate`) and masked azimuthal integration with pyFAI
(:mod:`.integrate`: the 1D pattern with the spots excluded).

>>> from gixdrt.powder import PowderGeometry, RingIndex, pixel_mask_search
>>> geom = PowderGeometry.from_poni("detector.poni")
>>> index = RingIndex.build(geom.tth(), distance=geom.dist, pixel=geom.pixel1, mask=detector_mask)   # once
>>> spots = pixel_mask_search(frame, index)          # bool[H, W], True = spot pixel (excluded)

>>> from gixdrt.powder.integrate import integrate
>>> p = integrate(frame, geom, spots=spots, detector_mask=detector_mask)   # p.radial, p.masked, p.unmasked

Importing this package imports neither PyTorch nor pyFAI (the U-Net plan runs on ONNX Runtime; training and
``runtime="torch"`` need PyTorch).
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "PowderGeometry": "geometry",
    "read_poni": "geometry",
    "CALIBRANTS": "calibrants",
    "Phase": "calibrants",
    "d_spacings": "calibrants",
    "random_phase": "calibrants",
    "RingIndex": "classical",
    "ring_ids": "classical",
    "pixel_mask_search": "classical",
    "pixel_mask_search_reference": "classical",
    "PowderMasker": "plan",
    "MaskSettings": "plan",
    "powder_plan": "plan",
}
__all__ = [
    "CALIBRANTS",
    "MaskSettings",
    "Phase",
    "PowderGeometry",
    "PowderMasker",
    "RingIndex",
    "d_spacings",
    "pixel_mask_search",
    "pixel_mask_search_reference",
    "powder_plan",
    "random_phase",
    "read_poni",
    "ring_ids",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
