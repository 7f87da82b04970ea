"""Backends: what can run here and why not, ``auto``'s choice, and the runtime of each backend (its runner kind
and kernel set). Runs everywhere: where a GPU is missing, every reason must be named."""
from __future__ import annotations

import pytest

from gixdrt.engine import PREFERENCE, EngineUnavailableError, HostKernels, backend_status, choose
from gixdrt.engine import backends as bk

torch = pytest.importorskip("torch")


def test_status_lists_every_backend_with_a_reason_or_none():
    status = backend_status()
    assert {b for b, _ in status} == set(PREFERENCE)
    assert "GPU only" in status["torch-cuda", "cpu"] and "GPU only" in status["tensorrt", "cpu"]
    assert PREFERENCE.index("tensorrt") < PREFERENCE.index("torch-cuda") < PREFERENCE.index("onnxruntime")
    assert status["onnxruntime", "cpu"] is None and status["torch", "cpu"] is None
    from gixdrt.engine import cuda_gpu

    if not cuda_gpu()[0]:  # no GPU: every CUDA entry says so, found without importing the GPU stacks
        assert all(status[b, "cuda"].startswith("no CUDA GPU") for b in PREFERENCE)
    else:
        assert status["torch-cuda", "cuda"] == bk._cuda_kernels_status()


def test_cpu_machine_probes_without_importing_gpu_stacks(tmp_path):
    """On a machine without a GPU, finding the backends imports neither PyTorch nor Numba (start-up time)."""
    import subprocess
    import sys

    from gixdrt.engine import cuda_gpu

    if cuda_gpu()[0]:
        pytest.skip("this machine has a GPU")
    code = ("import sys; from gixdrt.engine import backend_status, choose; backend_status(); choose(); "
            "print(sorted(m for m in ('torch', 'numba', 'tensorrt', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"


def test_cuda_kernel_status_names_every_missing_piece(monkeypatch):
    from numba import cuda as ncuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bk, "_ext_info", lambda: {"roi_align_cuda": False})
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    why = bk._cuda_kernels_status()
    assert "PyTorch has no CUDA device" in why
    assert "gixdrt._ext was built without CUDA" in why
    assert "numba.cuda unavailable" in why and "simulator" in why
    monkeypatch.setattr(bk, "_ext_info", lambda: None)
    assert "gixdrt._ext is not built" in bk._cuda_kernels_status()
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
    monkeypatch.setattr(ncuda, "is_available", lambda: False)
    assert "numba.cuda unavailable: no CUDA GPU or driver" in bk._cuda_kernels_status()
    # every piece present → available
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bk, "_ext_info", lambda: {"roi_align_cuda": True})
    monkeypatch.setattr(ncuda, "is_available", lambda: True)
    assert bk._cuda_kernels_status() is None


def test_choose_names_the_reason():
    status = backend_status()
    if status["torch-cuda", "cuda"] is not None:
        with pytest.raises(EngineUnavailableError, match="torch-cuda") as exc:
            choose("torch-cuda")
        assert status["torch-cuda", "cuda"] in str(exc.value)
    with pytest.raises(EngineUnavailableError, match="GPU only"):
        choose("torch-cuda", "cpu")
    with pytest.raises(ValueError, match="unknown backend 'onnx-foo'"):
        choose("onnx-foo")
    with pytest.raises(ValueError, match=r"invalid device 'cuda:x'.*cpu, cuda or cuda:N"):
        choose("auto", "cuda:x")
    assert choose("torch", "cpu") == ("torch", "cpu")
    assert choose("onnxruntime") == ("onnxruntime", "cpu")


def test_auto_without_a_gpu_ends_at_onnxruntime_on_the_cpu():
    status = backend_status()
    if any(status[b, "cuda"] is None for b in ("tensorrt", "torch-cuda", "onnxruntime")):
        pytest.skip("a GPU backend can run here")
    assert choose() == ("onnxruntime", "cpu")


def test_runtime_of_each_cpu_backend():
    rt = bk.Runtime("onnxruntime", "cpu", threads=1)
    assert isinstance(rt.kernels, HostKernels) and rt.describe() == "onnxruntime on cpu, fp32"
    with pytest.raises(ValueError, match="torch backend runs fp32"):
        bk.Runtime("torch", "cpu", "fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        bk.Runtime("onnxruntime", "cpu", "int4")
    with pytest.raises(EngineUnavailableError, match="GPU only"):
        bk.Runtime("torch-cuda", "cpu")
    assert not rt.fuses("head_pooled", None)  # only TensorRT runs RoIAlign inside a graph
