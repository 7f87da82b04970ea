"""One executor for every plan, runtime and kernel set.

>>> ex = Executor(plan, {"dense": dense_runner, "head": head_runner}, HostKernels())
>>> out = ex.run({"images": batch})          # name → output buffer (NumPy or device tensors)
>>> host = ex.kernels.to_host([out["boxes"], out["count"]])

The executor allocates the plan's buffers once (work buffers, constants put on the device once), binds the
caller's inputs, then runs the stages in order: a graph stage feeds its runner the named buffers and keeps the
runner's outputs as the named buffers; a kernel stage calls its registry op through the kernel set with the
named buffers as arguments and outputs. Nothing is allocated per call on the host path beyond what a runtime
returns, and nothing crosses between host and device on the device path until the caller asks for results.
``timings`` holds seconds per timer (:attr:`~gixdrt.engine.plan.GraphStage.timer`) of the last run made with
``timed=True`` (the device is synchronised after each stage then; otherwise nothing is timed).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Runner, dtype_of
from .kernelsets import KernelSet
from .plan import GraphStage, Plan, PlanError

__all__ = ["Executor"]


class Executor:
    """Runs ``plan`` with ``runners`` (graph name → :class:`~gixdrt.engine.base.Runner`, activated here when
    needed) and ``kernels`` (a :class:`~gixdrt.engine.kernelsets.KernelSet`). The runners are the caller's:
    :meth:`close` does not deactivate them."""

    def __init__(self, plan: Plan, runners: Mapping[str, Runner], kernels: KernelSet):
        missing = [g for g in plan.graphs if g not in runners]
        if missing:
            raise PlanError(f"plan {plan.name!r}: no runner for graph(s) {missing}")
        self.plan = plan
        self.runners = dict(runners)
        self.kernels = kernels
        self.timings: dict[str, float] = {}
        self._inputs: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        with kernels.scope():
            for name, b in plan.buffers.items():
                if b.role in ("work", "input"):
                    self.buffers[name] = kernels.allocate(b.shape, b.dtype)
                elif b.role == "const":
                    self.buffers[name] = kernels.constant(b.value)
                elif b.role == "host":
                    self.buffers[name] = b.value
                if b.role == "input":
                    self._inputs[name] = self.buffers[name]
        for runner in self.runners.values():
            runner.activate()
        self._checked = False

    def run(self, feeds: Mapping[str, Any], *, timed: bool = False) -> dict[str, Any]:
        """Run every stage on ``feeds`` (input buffer name → array of the buffer's shape) → output name → buffer.

        The returned arrays are the executor's buffers (or the runners' output arrays): valid until the next
        run. With ``timed``, :attr:`timings` gets seconds per stage timer.
        """
        plan, kernels, bufs = self.plan, self.kernels, self.buffers
        unknown = set(feeds) - set(self._inputs)
        missing = set(self._inputs) - set(feeds)
        if unknown or missing:
            raise PlanError(f"plan {plan.name!r} takes the inputs {sorted(self._inputs)}; got {sorted(feeds)}")
        timings: dict[str, float] = {}
        with kernels.scope():
            for name, value in feeds.items():
                bufs[name] = kernels.bind_input(self._inputs[name], value)
            t = time.perf_counter()
            for stage in plan.stages:
                if isinstance(stage, GraphStage):
                    runner = self.runners[stage.graph]
                    result = runner.infer({t_: bufs[b] for t_, b in stage.inputs.items()}, check=not self._checked)
                    for tensor, b in stage.outputs.items():
                        if tensor not in result:
                            raise PlanError(f"stage {stage.name!r}: graph {stage.graph!r} has no output {tensor!r}")
                        value = kernels.adopt(result[tensor])
                        want = plan.buffers[b].shape
                        if tuple(value.shape) != want and int(np.prod(value.shape)) == int(np.prod(want)):
                            value = value.reshape(want)  # the plan's view of it (per-RoI rows as [N, R])
                        bufs[b] = value
                        if not self._checked:
                            self._check_graph_output(stage, tensor, b)
                else:
                    kernels.call(stage.op, [bufs[a] for a in stage.args], {k: bufs[v] for k, v in stage.kwargs.items()},
                                 tuple(bufs[o] for o in stage.outputs), stage.params)
                if timed:
                    kernels.synchronize()
                    now = time.perf_counter()
                    key = stage.timer or stage.name
                    timings[key] = timings.get(key, 0.0) + (now - t)
                    t = now
        self._checked = True
        if timed:
            self.timings = timings
        return {name: bufs[name] for name in plan.outputs}

    def _check_graph_output(self, stage: GraphStage, tensor: str, name: str) -> None:
        want = self.plan.buffers[name]
        got = self.buffers[name]
        shape = tuple(int(s) for s in got.shape)
        if shape != want.shape or dtype_of(got) != np.dtype(want.dtype):
            raise PlanError(
                f"stage {stage.name!r}: graph {self.plan.artifacts[stage.graph]!r} returned {tensor} as "
                f"{dtype_of(got)}{list(shape)}, the plan expects {want.dtype}{list(want.shape)} (a graph exported "
                "for another model or version?)"
            )

    def close(self) -> None:
        """Drop the buffers (the runners stay with their owner)."""
        self.buffers.clear()
        self._inputs.clear()
