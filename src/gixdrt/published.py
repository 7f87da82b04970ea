"""The published pipeline's parameters: the one place gixdrt's defaults come from.

From the authors' ``test_config.yaml`` (sections ``contrast``, ``postprocessing_config`` and ``polar_config``) and
their detector (:class:`gixdrt.model.config.DetectorConfig`'s defaults). Everything that has such a default
(the config readers, the kernels, the detector, the command line) takes it from here.
"""
from __future__ import annotations

#: the contrast chain: log scale ``coef``, CLAHE clip ``limit``, log on, chain enabled
CONTRAST_COEF = 5000.0
CONTRAST_LIMIT = 2000.0
CONTRAST_LOG = True
#: the final filter: keep peaks scoring ≥ this (2·sigmoid − 1), NMS IoU, peaks per image at most
SCORE_THRESHOLD = 0.6
NMS_IOU = 0.1
MAX_DETECTIONS = 250
#: the polar image the published model was trained on: rows (φ) × columns (|Q|)
POLAR_SHAPE = (512, 1024)
