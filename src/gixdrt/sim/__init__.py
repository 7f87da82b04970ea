"""Simulator of polar GIXD images with ground-truth boxes (training and evaluation data).

>>> from gixdrt.sim import simulate, Simulator, SimConfig
>>> batch = simulate(16, seed=0)                  # SimBatch: images float32[16, 512, 512], boxes, peaks
>>> sim = Simulator(SimConfig(), seed=0, size=(512, 1024))
>>> s = sim.sample(123)                           # image 123 of seed 0, whichever worker asks
>>> simulate_to_file(1000, seed=1, out="set.npz")  # streamed to disk (tqdm bar); load_npz("set.npz")

See :mod:`gixdrt.sim.core` for the steps and the labelling rules and :class:`SimConfig` for the
distributions. Simulator modes (:mod:`gixdrt.sim.modes`): ``ours`` (:class:`SimConfig`), ``shifted``
(:meth:`SimConfig.shifted`) and ``paper`` (:class:`PaperSimConfig`, the authors' training simulator written from
the published facts, :mod:`gixdrt.sim.paper`); ``Simulator(PaperSimConfig(), seed)`` makes paper-mode images.
Powder XRD frames with ground-truth spot masks (the powder pipeline's data) come from
:mod:`gixdrt.sim.powder` (``PowderSimulator``), imported on its own.
"""
from .config import SimConfig
from .core import PEAK_FIELDS, SimBatch, SimDataset, SimSample, Simulator, image_rng, simulate
from .io import load_npz, save_npz, simulate_to_file
from .modes import SIM_MODES, check_mixture, config_mode, mixture_mode, mode_config
from .paper import PaperSimConfig

__all__ = [
    "PEAK_FIELDS",
    "PaperSimConfig",
    "SIM_MODES",
    "SimBatch",
    "SimConfig",
    "SimDataset",
    "SimSample",
    "check_mixture",
    "config_mode",
    "Simulator",
    "image_rng",
    "load_npz",
    "mixture_mode",
    "mode_config",
    "save_npz",
    "simulate",
    "simulate_to_file",
]
