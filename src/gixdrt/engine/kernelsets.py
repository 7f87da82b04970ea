"""Kernel sets: where a plan's buffers live and which implementation of each kernel runs on them.

- :class:`HostKernels`: NumPy buffers; each op runs its host implementation from the kernel registry (``cpu``,
  the compiled C++ kernels, where the op has one, else the NumPy ``reference``; or ``reference`` throughout).
- :class:`DeviceKernels`: PyTorch CUDA tensors on one device; each op runs its ``cuda`` implementation,
  launched on one stream (PyTorch's current stream of that device, which the graph runners also use), with
  no host synchronisation between stages. Only :meth:`~DeviceKernels.to_host` copies results back.

Both have the same small interface, which is all the :class:`~gixdrt.engine.executor.Executor` uses:
``allocate``, ``constant``, ``bind_input``, ``adopt``, ``call``, ``synchronize``, ``to_host``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..kernels.registry import BackendUnavailableError, registered, resolve

__all__ = ["DeviceKernels", "HostKernels", "KernelSet"]


class KernelSet:
    """The interface of a kernel set (see the module docstring)."""

    name = "kernels"
    on_device = False

    def allocate(self, shape: tuple[int, ...], dtype: str) -> Any:
        raise NotImplementedError

    def constant(self, value: np.ndarray) -> Any:
        raise NotImplementedError

    def bind_input(self, buffer: Any, value: Any) -> Any:
        raise NotImplementedError

    def adopt(self, value: Any) -> Any:
        raise NotImplementedError

    def call(self, op: str, args: Sequence[Any], kwargs: Mapping[str, Any], out: tuple[Any, ...],
             params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def to_host(self, arrays: Sequence[Any]) -> list[np.ndarray]:
        raise NotImplementedError

    def scope(self):
        """A context in which the stages run (the device and stream for device kernels)."""
        return contextlib.nullcontext()


def _out_arg(out: tuple[Any, ...]) -> Any:
    return out[0] if len(out) == 1 else out


class HostKernels(KernelSet):
    """NumPy buffers and the registry's host kernels. impl: ``"cpu"`` (default: the compiled kernel of each op
    where there is one, else its NumPy reference) or ``"reference"`` (NumPy throughout, for checks)."""

    on_device = False

    def __init__(self, impl: str = "cpu"):
        if impl not in ("cpu", "reference"):
            raise ValueError(f"host kernels are 'cpu' or 'reference', got {impl!r}")
        self.impl = impl
        self.name = f"host kernels ({impl})"
        self._fns: dict[str, Any] = {}

    def allocate(self, shape, dtype):
        return np.zeros(shape, dtype)

    def constant(self, value):
        return np.ascontiguousarray(value)

    def bind_input(self, buffer, value):
        """The caller's array itself when it has the buffer's shape, dtype and layout (no copy), else a copy
        into the buffer."""
        if isinstance(value, np.ndarray) and value.shape == buffer.shape and value.dtype == buffer.dtype \
                and value.flags.c_contiguous:
            return value
        value = _host_array(value)
        if value.shape != buffer.shape:
            raise ValueError(f"input of shape {value.shape} for a buffer of shape {buffer.shape}")
        np.copyto(buffer, value, casting="same_kind")
        return buffer

    def adopt(self, value):
        return _host_array(value)

    def _fn(self, op: str):
        fn = self._fns.get(op)
        if fn is None:
            impl = self.impl if self.impl in registered().get(op, ()) else "reference"
            try:
                fn = resolve(op, impl)[1]
            except BackendUnavailableError:
                if impl == "reference":
                    raise
                fn = resolve(op, "reference")[1]  # the compiled kernels are not built here: the NumPy reference
            self._fns[op] = fn
        return fn

    def call(self, op, args, kwargs, out, params):
        self._fn(op)(*args, **kwargs, **params, out=_out_arg(out))

    def to_host(self, arrays):
        return [np.asarray(a) for a in arrays]


def _host_array(value: Any) -> np.ndarray:
    """A NumPy view of a host array or CPU tensor (no copy)."""
    if type(value).__module__.startswith("torch"):
        return value.detach().numpy()
    return np.asarray(value)


class DeviceKernels(KernelSet):
    """PyTorch CUDA tensors on ``device`` and the registry's ``cuda`` kernels on PyTorch's current stream.

    ``device="cpu"`` is a check mode, not a backend: PyTorch CPU tensors, each op running its host kernel on
    NumPy views of them, so that a plan's sequence through this kernel set (allocation, adoption of the graph
    runners' tensors, stage order) is tested on machines without a GPU.
    """

    on_device = True

    def __init__(self, device: Any = "cuda"):
        import torch

        self.torch = torch
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.type not in ("cuda", "cpu"):
            raise ValueError(f"device kernels run on cuda[:N] (or cpu to check), got {device!r}")
        self.device = dev
        self.check_mode = dev.type == "cpu"
        self.on_device = not self.check_mode
        self.name = "host kernels on torch CPU tensors (check mode)" if self.check_mode else f"CUDA kernels on {dev}"
        self._host = HostKernels("cpu") if self.check_mode else None
        self._fns: dict[str, Any] = {}

    # --- buffers ----------------------------------------------------------------------------------
    def allocate(self, shape, dtype):
        return self.torch.zeros(shape, dtype=getattr(self.torch, np.dtype(dtype).name), device=self.device)

    def constant(self, value):
        return self.torch.from_numpy(np.array(value, order="C")).to(self.device)  # a copy: plan constants are read-only

    def bind_input(self, buffer, value):
        """Copy ``value`` (a host array or a tensor on any device) into the input buffer: the one host→device copy
        of a frame. The buffer keeps its address, so captured CUDA graphs stay valid."""
        torch = self.torch
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if tuple(value.shape) != tuple(buffer.shape):
            raise ValueError(f"input of shape {tuple(value.shape)} for a buffer of shape {tuple(buffer.shape)}")
        if value.data_ptr() != buffer.data_ptr():
            buffer.copy_(value, non_blocking=True)
        return buffer

    def adopt(self, value):
        torch = self.torch
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.ascontiguousarray(value))
        return value.to(self.device)

    def scope(self):
        if self.check_mode:
            return contextlib.nullcontext()
        return self.torch.cuda.device(self.device)

    # --- ops ----------------------------------------------------------------------------------------
    def call(self, op, args, kwargs, out, params):
        if self.check_mode:
            view = [a.numpy() if isinstance(a, self.torch.Tensor) else a for a in args]
            kview = {k: v.numpy() if isinstance(v, self.torch.Tensor) else v for k, v in kwargs.items()}
            self._host.call(op, view, kview, tuple(o.numpy() for o in out), params)
            return
        fn = self._fns.get(op)
        if fn is None:
            fn = self._fns[op] = resolve(op, "cuda")[1]
        fn(*args, **kwargs, **params, out=_out_arg(out), stream=self.torch.cuda.current_stream(self.device))

    def synchronize(self):
        if not self.check_mode:
            self.torch.cuda.current_stream(self.device).synchronize()

    def to_host(self, arrays):
        """The results on the host: pinned non-blocking copies, then one wait on the stream."""
        torch = self.torch
        if self.check_mode:
            return [a.numpy() for a in arrays]
        host = [torch.empty(tuple(a.shape), dtype=a.dtype, pin_memory=True) for a in arrays]
        for h, d in zip(host, arrays):
            h.copy_(d, non_blocking=True)
        self.synchronize()
        return [h.numpy() for h in host]
