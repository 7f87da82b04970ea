"""A model as data: an ordered list of graph stages and kernel stages over named, fixed-shape buffers.

A :class:`Plan` says *what* runs; the :class:`~gixdrt.engine.executor.Executor` runs it with runners (one per
graph: ONNX Runtime, TensorRT, PyTorch) and a kernel set (host NumPy/C++ or CUDA device buffers). A plan knows
no runtime and no device; a backend knows no model. Adding a model is writing a plan.

Buffers (:class:`Buffer`) have a fixed shape and dtype. Their ``role``:

- ``"input"``: filled by the caller at each run;
- ``"const"``: a host array given in the plan (anchors, maps), put on the device once;
- ``"host"``: a host array given in the plan that stays on the host for every kernel set (small parameters
  such as level offsets that kernels read on the host);
- ``"graph"``: written by a graph stage (the runner may own the memory: the executor checks shape and dtype);
- ``"work"``: allocated once by the executor and written by kernel stages.

Variable-length results live in fixed-size buffers with a valid count beside them (``count`` int32[N]: image
i's entries are ``[i, :count[i]]``), so every stage has static shapes and the whole sequence can be replayed
without host round trips.

Stages:

- :class:`GraphStage`: ``graph`` names one of the plan's graphs; ``inputs``/``outputs`` map the graph's tensor
  names to buffer names.
- :class:`KernelStage`: ``op`` names an op of the kernel registry (:mod:`gixdrt.kernels`); the op is called as
  ``op(*args, out=outs, **params, **{k: buffer})`` where ``args`` and ``kwargs`` name buffers, ``params`` are
  plain values and ``out`` is the tuple of output buffers (one array when there is one output).

Every stage has a ``timer``: the name its time is reported under (several stages may share one).

A plan may declare a :class:`Fusion`: a kernel stage that a runtime can run inside a graph instead (TensorRT
pools RoIs through gixdrt's plugin inside its head engine). :meth:`Plan.fused` returns the plan a backend runs
when its graph artifact includes the kernel.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Union

import numpy as np

__all__ = ["ROLES", "Buffer", "Fusion", "GraphStage", "KernelStage", "Plan", "PlanError", "Stage"]

ROLES = ("input", "const", "host", "graph", "work")


class PlanError(ValueError):
    """A plan that cannot run: a stage reads a buffer nothing wrote, a name is unknown, a shape disagrees."""


@dataclass(frozen=True)
class Buffer:
    """A named, fixed-shape array of the plan. ``value``: the host array of a ``const`` or ``host`` buffer."""

    shape: tuple[int, ...]
    dtype: str
    role: str = "work"
    value: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.role not in ROLES:
            raise PlanError(f"unknown buffer role {self.role!r}; expected one of {ROLES}")
        if self.role in ("const", "host"):
            if self.value is None:
                raise PlanError(f"a {self.role} buffer needs its value")
            value = np.ascontiguousarray(self.value)
            if value.shape != self.shape or value.dtype != np.dtype(self.dtype):
                raise PlanError(f"{self.role} value is {value.dtype}{list(value.shape)}, the buffer is {self.dtype}{list(self.shape)}")
            object.__setattr__(self, "value", value)

    @classmethod
    def of(cls, value: np.ndarray, role: str = "const") -> Buffer:
        """A ``const`` (or ``host``) buffer holding ``value``."""
        v = np.ascontiguousarray(value)
        return cls(v.shape, v.dtype.name, role, v)


@dataclass(frozen=True)
class GraphStage:
    """Run graph ``graph``: feed buffer ``inputs[t]`` to its tensor t, store its tensor t in ``outputs[t]``."""

    name: str
    graph: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    timer: str = ""

    def reads(self) -> tuple[str, ...]:
        return tuple(self.inputs.values())

    def writes(self) -> tuple[str, ...]:
        return tuple(self.outputs.values())


@dataclass(frozen=True)
class KernelStage:
    """Call registry op ``op`` on buffers ``args`` (positional) and ``kwargs`` (keyword → buffer) with plain
    ``params``, writing the buffers ``outputs``."""

    name: str
    op: str
    args: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    kwargs: Mapping[str, str] = field(default_factory=dict)
    timer: str = ""

    def reads(self) -> tuple[str, ...]:
        return (*self.args, *self.kwargs.values())

    def writes(self) -> tuple[str, ...]:
        return tuple(self.outputs)


Stage = Union[GraphStage, KernelStage]


@dataclass(frozen=True)
class Fusion:
    """Kernel stage ``kernel`` may run inside graph ``graph`` when a runtime's artifact of ``graph`` (named
    ``artifact``) includes it; that graph then reads the buffers ``inputs`` (graph tensor → buffer) instead of
    the kernel's outputs."""

    graph: str
    kernel: str
    artifact: str
    inputs: Mapping[str, str]


@dataclass(frozen=True)
class Plan:
    """Graph and kernel stages over named buffers (see the module docstring). Checked when made."""

    name: str
    buffers: Mapping[str, Buffer]
    stages: tuple[Stage, ...]
    outputs: tuple[str, ...]
    fusions: tuple[Fusion, ...] = ()
    #: graph name → the runtime artifact it needs (changed by :meth:`fused`)
    artifacts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        graphs = {s.graph for s in self.stages if isinstance(s, GraphStage)}
        object.__setattr__(self, "artifacts", {g: self.artifacts.get(g, g) for g in sorted(graphs)})
        self.validate()

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(k for k, b in self.buffers.items() if b.role == "input")

    @property
    def graphs(self) -> tuple[str, ...]:
        return tuple(self.artifacts)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"plan {self.name!r} has no stage {name!r}")

    def validate(self) -> None:
        """Raise :class:`PlanError` for a buffer read before anything wrote it, an unknown buffer, a stage
        name used twice, or a graph output or kernel output that is not the right kind of buffer."""
        names = [s.name for s in self.stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise PlanError(f"plan {self.name!r}: stage names used twice: {sorted(dup)}")
        ready = {k for k, b in self.buffers.items() if b.role in ("input", "const", "host")}
        for s in self.stages:
            for b in (*s.reads(), *s.writes()):
                if b not in self.buffers:
                    raise PlanError(f"plan {self.name!r}, stage {s.name!r}: unknown buffer {b!r}")
            missing = [b for b in s.reads() if b not in ready]
            if missing:
                raise PlanError(f"plan {self.name!r}, stage {s.name!r} reads {missing} before any stage writes them")
            for b in s.writes():
                role = self.buffers[b].role
                want = ("graph",) if isinstance(s, GraphStage) else ("work",)
                if role not in want:
                    raise PlanError(f"plan {self.name!r}, stage {s.name!r} writes {b!r}, a {role} buffer")
            ready.update(s.writes())
        for b in self.outputs:
            if b not in ready:
                raise PlanError(f"plan {self.name!r}: output {b!r} is never written")
        for f in self.fusions:
            kernel = self.stage(f.kernel)
            if not isinstance(kernel, KernelStage) or f.graph not in self.artifacts:
                raise PlanError(f"plan {self.name!r}: fusion of {f.kernel!r} into {f.graph!r} names no such stages")

    def fused(self, kernel: str) -> Plan:
        """The plan with kernel stage ``kernel`` run inside its graph (the declared :class:`Fusion`): the kernel
        stage goes, the graph stage reads the fusion's inputs, and the graph needs the fusion's artifact."""
        fusion = next((f for f in self.fusions if f.kernel == kernel), None)
        if fusion is None:
            raise PlanError(f"plan {self.name!r} declares no fusion of {kernel!r}")
        kernel_stage = self.stage(kernel)
        stages = []
        for s in self.stages:
            if s.name == kernel:
                continue
            if isinstance(s, GraphStage) and s.graph == fusion.graph:
                replaced = {t: b for t, b in s.inputs.items() if b not in kernel_stage.writes()}
                s = replace(s, inputs={**replaced, **fusion.inputs})
            stages.append(s)
        dropped = set(kernel_stage.writes()) - {b for s in stages for b in (*s.reads(), *s.writes())}
        buffers = {k: b for k, b in self.buffers.items() if k not in dropped}
        artifacts = {**self.artifacts, fusion.graph: fusion.artifact}
        return Plan(self.name, buffers, tuple(stages), self.outputs,
                    tuple(f for f in self.fusions if f is not fusion), artifacts)

    def describe(self) -> str:
        """One line per stage: what it reads and writes."""
        lines = [f"plan {self.name}: inputs {', '.join(self.inputs)} → outputs {', '.join(self.outputs)}"]
        for s in self.stages:
            kind = f"graph {self.artifacts[s.graph]}" if isinstance(s, GraphStage) else f"kernel {s.op}"
            lines.append(f"  {s.name:<14} {kind:<24} {', '.join(s.reads())} → {', '.join(s.writes())}")
        return "\n".join(lines)
