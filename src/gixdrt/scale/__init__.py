"""Reprocessing on many machines: a run's frames cut into units, processed by workers, merged into one output.

- :mod:`~gixdrt.scale.units`: :class:`WorkUnit`, :func:`plan_units` (files or ranges of K frames, global frame
  offsets from the headers);
- :mod:`~gixdrt.scale.worker`: :func:`process_unit` (plain Python: one unit → its part file and a summary; the
  engine built once per process), :func:`make_settings`, :func:`read_part`;
- :mod:`~gixdrt.scale.manifest`: the run manifest (resume, refusal of changed settings or inputs);
- :mod:`~gixdrt.scale.runner`: the Dask side (:func:`connect`, :func:`run_units`, :class:`EnginePlugin`);
- :mod:`~gixdrt.scale.detect`: ``gixdrt detect --cluster`` (merge, outputs, summary).

Dask (``pip install 'gixdrt[dask]'``) is needed by the runner only.
"""
from __future__ import annotations

from .units import WorkUnit, parse_unit, plan_units
from .worker import make_settings, process_unit, read_part

__all__ = ["WorkUnit", "make_settings", "parse_unit", "plan_units", "process_unit", "read_part"]
