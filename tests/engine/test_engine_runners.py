"""Runner lifecycle and feed checks (torch, ONNX Runtime), and the clear errors of runtimes that cannot run here."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from gixdrt.engine import (
    EngineUnavailableError,
    OnnxRuntimeRunner,
    TensorRTRunner,
    TorchRunner,
    cuda_gpu,
    onnxruntime_devices,
)
from gixdrt.export import export_head
from gixdrt.model import GixdDetector
from gixdrt.model.graphs import HEAD_INPUTS, HEAD_OUTPUTS, HeadGraph

ROIS = 8


def head_runner(model, rois=ROIS):
    return TorchRunner(HeadGraph(model), {HEAD_INPUTS[0]: (np.float32, (rois, 64, 16, 16))}, HEAD_OUTPUTS)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return GixdDetector()


@pytest.fixture(scope="module")
def head_graph(model, tmp_path_factory):
    return export_head(model, tmp_path_factory.mktemp("head") / "head.onnx", rois=ROIS)


@pytest.fixture(scope="module")
def feats():
    torch.manual_seed(4)
    return torch.randn(ROIS, 64, 16, 16)


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_lifecycle(kind, model, head_graph, feats):
    runner = head_runner(model, rois=ROIS) if kind == "torch" else OnnxRuntimeRunner(head_graph)
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({"roi_features": feats})
    assert runner.activate() is runner and runner.is_active
    runner.activate()  # a second activate is harmless
    meta = runner.input_metadata()
    assert list(meta) == ["roi_features"] and meta["roi_features"].shape == (ROIS, 64, 16, 16)
    first = runner.infer({"roi_features": feats})
    assert set(first) == {"logits", "deltas"} and runner.last_inference_time > 0
    runner.deactivate()
    assert not runner.is_active
    runner.deactivate()
    with runner:  # activate again, as a context manager
        again = runner.infer({"roi_features": feats.numpy()})
    assert not runner.is_active
    np.testing.assert_array_equal(np.asarray(again["deltas"]), np.asarray(first["deltas"]))


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_feed_checks(kind, model, head_graph, feats):
    runner = head_runner(model, rois=ROIS) if kind == "torch" else OnnxRuntimeRunner(head_graph)
    with runner:
        with pytest.raises(ValueError, match="missing"):
            runner.infer({})
        with pytest.raises(ValueError, match="unexpected"):
            runner.infer({"roi_features": feats, "extra": feats})
        with pytest.raises(ValueError, match=r"float32\[7, 64, 16, 16\]"):
            runner.infer({"roi_features": feats[:7]})
        with pytest.raises(ValueError, match="float64"):
            runner.infer({"roi_features": feats.double()})


def test_torch_and_onnxruntime_agree(model, head_graph, feats):
    with head_runner(model, rois=ROIS) as ref, OnnxRuntimeRunner(head_graph, threads=1) as ort_runner:
        a, b = ref.infer({"roi_features": feats}), ort_runner.infer({"roi_features": feats})
    for name in ("logits", "deltas"):
        np.testing.assert_allclose(b[name], a[name].numpy(), rtol=1e-4, atol=1e-5)


def test_onnxruntime_metadata(head_graph):
    with OnnxRuntimeRunner(head_graph) as runner:
        assert runner.metadata()["gixdrt.graph"] == "head"
        assert runner.output_metadata()["deltas"].shape == (ROIS, 4)


def test_onnxruntime_device_argument(head_graph):
    with pytest.raises(ValueError, match="invalid device"):
        OnnxRuntimeRunner(head_graph, device="tpu")


def test_onnxruntime_cuda_is_gated(head_graph, feats):
    why = onnxruntime_devices()["cuda"]
    runner = OnnxRuntimeRunner(head_graph, device="cuda")
    if why is not None:  # CPU-only onnxruntime or no GPU: a clear error, never a crash
        with pytest.raises(EngineUnavailableError, match="CUDA|onnxruntime-gpu"):
            runner.activate()
        return
    with runner:  # pragma: no cover - runs only with onnxruntime-gpu on a GPU
        out = runner.infer({"roi_features": feats})
        assert tuple(out["deltas"].shape) == (ROIS, 4)


def test_tensorrt_runner_says_why_it_cannot_run():
    runner = TensorRTRunner("detector.engine")
    with pytest.raises(EngineUnavailableError, match="no CUDA GPU|TensorRT is not installed|no such engine file") as info:
        runner.activate()
    assert not runner.is_active
    if not cuda_gpu()[0]:
        assert "no CUDA GPU" in str(info.value)


def test_torch_runner_math_settings_are_set_and_restored(model):
    """fp32 forces IEEE convolutions/matmuls (no TF32) while a CUDA module runs, fp16 no reduced-precision
    reductions; everything is restored afterwards. (Only the flags: they take effect on a GPU.)"""
    b = torch.backends
    runner = TorchRunner(HeadGraph(model), {"roi_features": (np.float32, (1, 64, 16, 16))}, HEAD_OUTPUTS,
                         precision="fp32", cudnn_benchmark=True)
    runner.device = torch.device("cuda")  # _math() is a no-op on the CPU
    before = (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision, b.cudnn.benchmark,
              b.cuda.matmul.allow_fp16_reduced_precision_reduction)
    with runner._math():
        assert b.cudnn.conv.fp32_precision == "ieee" and b.cuda.matmul.fp32_precision == "ieee"
        assert b.cudnn.benchmark is True
    runner.precision = "fp16"
    with runner._math():
        assert b.cuda.matmul.allow_fp16_reduced_precision_reduction is False
    with pytest.raises(KeyError), runner._math():
        raise KeyError("restored on errors too")
    assert before == (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision, b.cudnn.benchmark,
                      b.cuda.matmul.allow_fp16_reduced_precision_reduction)


def test_onnxruntime_free_dimensions(model, tmp_path, feats):
    """A graph with a dynamic RoI count runs as a static one once the dimension's value is given."""
    path = export_head(model, tmp_path / "head-dyn.onnx")
    with OnnxRuntimeRunner(path, dims={"rois": ROIS}) as runner:
        assert runner.input_metadata()["roi_features"].shape == (ROIS, 64, 16, 16)
        out = runner.infer({"roi_features": feats})
    with head_runner(model) as ref:
        want = ref.infer({"roi_features": feats})
    np.testing.assert_allclose(out["deltas"], want["deltas"].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="dynamic shape"), OnnxRuntimeRunner(path):
        pass
