"""The GIXD peak-detection pipeline: the detector's plan, its graphs, the engine-side detector, frames → peaks.

- :mod:`~gixdrt.gixd.plan`: the detector as one plan (raw frames or images → peaks), written once;
- :mod:`~gixdrt.gixd.artifacts`: a model's card and graphs for every runtime (:class:`ModelGraphs`);
- :mod:`~gixdrt.gixd.detector`: :class:`PeakDetector`, the plan on a backend;
- :mod:`~gixdrt.gixd.pipeline`: :class:`Pipeline`, frames of a beamline config → peak tables;
- :mod:`~gixdrt.gixd.preprocess` (remap and contrast on the host), :mod:`~gixdrt.gixd.peaks` (:class:`PeakTable`);
- :mod:`~gixdrt.gixd.tracks` (peaks linked across frames), :mod:`~gixdrt.gixd.screening` (hit flags).

Attributes are imported lazily: ``import gixdrt.gixd`` loads nothing heavy.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "detector_plan": "plan",
    "RawInput": "plan",
    "INPUTS": "plan",
    "ModelGraphs": "artifacts",
    "graph_cache_dir": "artifacts",
    "PeakDetector": "detector",
    "FrameOutput": "detector",
    "Pipeline": "pipeline",
    "FrameResult": "pipeline",
    "Preprocessor": "preprocess",
    "preprocess": "preprocess",
    "PeakTable": "peaks",
    "COLUMNS": "peaks",
    "box_sums": "peaks",
    "TrackLinker": "tracks",
    "link_tracks": "tracks",
    "track_summary": "tracks",
    "Screener": "screening",
    "ScreeningConfig": "screening",
    "screen": "screening",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
