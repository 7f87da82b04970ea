"""The tensorrt backend's stages (gixdrt.engine.trt_stages): engine files per shape, rebuilds, and the dense
engine's outputs flattened exactly as the PyTorch stage it replaces. TensorRT itself is stood in for: no machine
of this project has it."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gixdrt.engine import trt as trt_mod
from gixdrt.engine.torch_cuda import _stage_modules
from gixdrt.engine.trt_stages import TrtStages, _EngineStage
from gixdrt.export.fold import fold_batchnorm
from gixdrt.model import GixdDetector
from gixdrt.model.detector import DetectorConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return GixdDetector(DetectorConfig()).eval()


def bare_stages(model, tmp_path, precision="fp32"):
    """A TrtStages with only what open_engine and the engine stages use (no GPU, no TensorRT)."""
    from gixdrt.export.graphs import model_digest

    st = TrtStages.__new__(TrtStages)
    st.model, st.config, st.precision = model, model.config, precision
    st.device = torch.device("cpu")
    st.cache, st.digest = tmp_path, model_digest(model)
    st.engine_graphs, st.workspace_gib = True, 4.0
    return st


class FakeRunner:
    """Stands in for TensorRTRunner: runs a PyTorch module on the feed; can refuse its engine once."""

    opened: ClassVar[list] = []
    refuse: ClassVar[set] = set()

    def __init__(self, engine_path, *, device, onnx_path, cuda_graph):
        self.engine_path, self.onnx_path, self.cuda_graph = engine_path, onnx_path, cuda_graph
        self.fn = None

    def activate(self):
        if self.engine_path in FakeRunner.refuse:
            FakeRunner.refuse.discard(self.engine_path)
            raise trt_mod.EngineMismatchError(self.engine_path, ["built with TensorRT 10.0, this is 10.9"])
        FakeRunner.opened.append(self)
        return self

    def infer(self, feed, check=True):
        return self.fn(**feed)

    def deactivate(self):
        pass


def test_open_engine_exports_builds_and_rebuilds_a_mismatching_engine(model, tmp_path, monkeypatch):
    built = []

    def fake_build(onnx_path, engine_path, *, precision, workspace_gib):
        assert onnx_path.is_file() and onnx_path.suffix == ".onnx"
        built.append((engine_path.name, precision))
        engine_path.write_bytes(b"engine")

    monkeypatch.setattr(trt_mod, "build_engine", fake_build)
    monkeypatch.setattr(trt_mod, "TensorRTRunner", FakeRunner)
    st = bare_stages(model, tmp_path)
    r = st.open_engine("dense", (2, 1, 64, 128))
    onnx_path, engine_path = st.paths("dense", (2, 1, 64, 128))
    assert "-64x128-b2-fp32-" in engine_path.name and r.engine_path == engine_path and r.onnx_path == onnx_path
    assert r.cuda_graph and built == [(engine_path.name, "fp32")]
    st.open_engine("dense", (2, 1, 64, 128))  # cached: no new build
    assert len(built) == 1
    FakeRunner.refuse.add(engine_path)  # the cached engine does not fit this machine: rebuilt once
    st.open_engine("dense", (2, 1, 64, 128))
    assert len(built) == 2
    head_onnx, head_engine = st.paths("head", (2000, 64, 16, 16))
    st.open_engine("head", (2000, 64, 16, 16))
    assert head_onnx.is_file() and "-r2000-" in head_engine.name and len(built) == 3


def test_dense_engine_outputs_flatten_like_the_pytorch_stage(model, tmp_path):
    """The engine's per-level NCHW outputs → (p2, logits [N, A], deltas [N, A, 4]) in flatten_rpn order."""
    st = bare_stages(model, tmp_path)
    dense_cls, _ = _stage_modules()
    folded = fold_batchnorm(model)
    want_net = dense_cls(folded, torch.float32, False)

    def engine(images):  # what the exported dense graph returns
        with torch.no_grad():
            d = model.dense(images)
        out = {"p2": d.features[0]}
        for i, (lg, dl) in enumerate(zip(d.logits, d.deltas)):
            out[f"logits_{i}"], out[f"deltas_{i}"] = lg, dl
        return out

    stage = _EngineStage(st, "dense")
    x = torch.rand(2, 1, 64, 128)
    stage.runners[(2, 1, 64, 128)] = FakeRunner("dense.engine", device="cpu", onnx_path=None, cuda_graph=False)
    stage.runners[(2, 1, 64, 128)].fn = engine
    p2, logits, deltas = stage(x)
    with torch.no_grad():
        wp2, wlg, wdl = want_net(x)
    assert stage.level_shapes == want_net.level_shapes
    np.testing.assert_allclose(p2.numpy(), wp2.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), wlg.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(deltas.numpy(), wdl.numpy(), rtol=1e-4, atol=1e-5)

    head = _EngineStage(st, "head")
    feats = torch.rand(7, 64, 16, 16)
    head.runners[(7, 64, 16, 16)] = FakeRunner("head.engine", device="cpu", onnx_path=None, cuda_graph=False)
    head.runners[(7, 64, 16, 16)].fn = lambda roi_features: {"logits": torch.arange(7.0).reshape(7, 1),
                                                           "deltas": torch.ones(7, 4)}
    lg, dl = head(feats)
    assert lg.shape == (7,) and dl.shape == (7, 4)


def test_tensorrt_backend_refuses_with_the_reason_here(model):
    from gixdrt.engine import Detector, EngineUnavailableError, backend_status

    why = backend_status()["tensorrt", "cuda"]
    assert why  # no GPU / no TensorRT on this machine
    with pytest.raises(EngineUnavailableError, match="tensorrt"):
        Detector(model, backend="tensorrt")
    with pytest.raises(EngineUnavailableError, match="CUDA GPU only"):
        TrtStages(model, device="cpu")
