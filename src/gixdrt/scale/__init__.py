"""Reprocessing on many machines: a run's frames cut into units, processed by workers, merged into one output.

Two commands run this way: ``gixdrt detect --cluster`` (peak tables) and ``gixdrt mask --cluster`` (powder spot
masks); a unit's settings say which task it runs (``settings["task"]``).

- :mod:`~gixdrt.scale.units`: :class:`WorkUnit`, :func:`plan_units` (files or ranges of K frames, global frame
  offsets from the headers);
- :mod:`~gixdrt.scale.worker`: :func:`process_unit` (plain Python: one unit → its part file and a summary; the
  engine built once per process and task), :func:`make_settings` (detect), :func:`read_part`;
- :mod:`~gixdrt.scale.powder`: the mask task (:func:`~gixdrt.scale.powder.make_mask_settings`,
  :func:`~gixdrt.scale.powder.read_mask_part`);
- :mod:`~gixdrt.scale.manifest`: the run manifest (resume, refusal of changed settings or inputs);
- :mod:`~gixdrt.scale.runner`: the Dask side (:func:`connect`, :func:`run_units`, :class:`EnginePlugin`);
- :mod:`~gixdrt.scale.flow`: a command's cluster run (plan, parts folder, manifest, run, failures, clean-up);
- :mod:`~gixdrt.scale.detect`: ``gixdrt detect --cluster`` (merge, outputs, summary);
- :mod:`~gixdrt.scale.mask`: ``gixdrt mask --cluster`` (merge into the masks file).

Dask (``pip install 'gixdrt[dask]'``) is needed by the runner only.
"""
from __future__ import annotations

from .units import WorkUnit, parse_unit, plan_units
from .worker import make_settings, process_unit, read_part

__all__ = ["WorkUnit", "make_settings", "parse_unit", "plan_units", "process_unit", "read_part"]
