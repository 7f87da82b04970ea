"""The TensorRT backend's way through the detector's plan, with TensorRT stood in for (no machine of this project
has it): static graphs exported per shape, RoIAlign fused into the head engine through gixdrt's plugin, engines
named per graph beside them, device kernels between the engines.

The stand-in for an engine runs the ONNX file TensorRT would be given: ONNX Runtime for the plain graphs, and for
the pooled head graph gixdrt's RoIAlign kernel in place of the ``GixdrtRoIAlign`` plugin node (with the node's own
attributes: what TensorRT's parser hands the plugin) followed by ONNX Runtime on the rest of the graph. So the
exported graphs, the plugin node's wiring and fields and the fused plan are all exercised; the plugin's CUDA code
and TensorRT itself are tested on a GPU (tests/ext/test_trt_plugin.py, tests/engine/test_trt.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.model.config import STAGES
from gixdrt.testing import match_boxes, match_detections

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from gixdrt import engine
from gixdrt.engine import DeviceKernels
from gixdrt.engine import backends as bk
from gixdrt.engine import trt as trt_mod
from gixdrt.export import PLUGIN_DOMAIN, check_graph
from gixdrt.gixd import PeakDetector


class StandInEngine(engine.Runner):
    """Takes TensorRTRunner's arguments; runs ``onnx_path`` as TensorRT would run the engine built from it."""

    name = "tensorrt (stand-in)"
    opened: list = []

    def __init__(self, engine_path, *, device="cuda", onnx_path=None, cuda_graph=False, build=None):
        super().__init__()
        self.engine_path, self.onnx_path, self.cuda_graph, self.build = engine_path, onnx_path, cuda_graph, build

    def activate_impl(self):
        import onnxruntime as ort
        from onnx import helper

        model = onnx.load(str(self.onnx_path))
        plugin = [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN]
        self.fields = None
        if plugin:
            (node,) = plugin
            self.fields = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            self.plugin_inputs = list(node.input)
            model.graph.node.remove(node)
            feat = next(v for v in model.graph.value_info if v.name == node.output[0])
            for name in node.input:
                model.graph.input.remove(next(i for i in model.graph.input if i.name == name))
            model.graph.input.append(feat)
            del model.opset_import[[o.domain for o in model.opset_import].index(PLUGIN_DOMAIN)]
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        StandInEngine.opened.append(self)

    def input_metadata_impl(self):
        model = onnx.load(str(self.onnx_path), load_external_data=False)
        return {i.name: engine.TensorMeta(np.dtype(np.float32), tuple(d.dim_value for d in i.type.tensor_type.shape.dim))
                for i in model.graph.input}

    def infer_impl(self, feed):
        from gixdrt.kernels import roi_align

        feed = {k: np.ascontiguousarray(np.asarray(v)) for k, v in feed.items()}
        if self.fields is not None:
            f = self.fields
            feats = roi_align(feed["p2"], feed["rois"], (f["out_h"], f["out_w"]), (f["scale_y"], f["scale_x"]),
                              f["sampling_ratio"], bool(f["aligned"]))
            feed = {"roi_features": feats}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))

    def deactivate_impl(self):
        self.session = None


@pytest.fixture
def stand_in(monkeypatch):
    """TensorRT 'available' on a 'GPU', the device kernel set in check mode, engines stood in for."""
    StandInEngine.opened = []
    monkeypatch.setattr(bk, "choose", lambda backend="auto", device=None: ("tensorrt", "cuda"))
    monkeypatch.setattr("gixdrt.gixd.detector.choose", lambda backend="auto", device=None: ("tensorrt", "cuda"))
    monkeypatch.setattr(bk, "DeviceKernels", lambda device: DeviceKernels("cpu"))
    monkeypatch.setattr(trt_mod, "TensorRTRunner", StandInEngine)
    monkeypatch.setattr("gixdrt.engine.plugins.plugin_status", lambda: None)
    return StandInEngine


def test_tensorrt_plan_fuses_roialign_into_the_head_engine(stand_in, keep_all, tmp_path):
    images = np.random.default_rng(4).random((2, 64, 128), dtype=np.float32)
    det = PeakDetector(keep_all, backend="tensorrt", cache=tmp_path)
    plan = det.plan(batch=2, height=64, width=128)
    assert plan.artifacts == {"dense": "dense", "head": "head_pooled"}
    assert "roi_align" not in [s.name for s in plan.stages] and plan.stage("head").inputs == {"p2": "p2", "rois": "rois"}
    got = det.run(images, timed=True)
    assert set(det.last_timings) == set(STAGES)  # the RoI rows are still made between the engines
    engines = sorted(r.engine_path.name for r in stand_in.opened)
    assert engines == ["dense-64x128-b2-fp32.engine", "head_pooled-8x32-b2-fp32.engine"]
    assert all(r.build == {"precision": "fp32", "workspace_gib": 4.0} and r.cuda_graph for r in stand_in.opened)
    pooled = next(r for r in stand_in.opened if r.fields is not None)
    assert pooled.fields["plugin_namespace"] == b"gixdrt" and pooled.fields["plugin_version"] == b"1"
    assert (pooled.fields["out_h"], pooled.fields["scale_y"], pooled.fields["scale_x"]) == (16, 0.125, 0.25)
    check_graph(pooled.onnx_path)  # the graph TensorRT is given passes the parser checks, plugin op included
    want = PeakDetector(keep_all, backend="torch", cache=tmp_path).boxes(images)
    for g, w in zip(got, want):
        assert len(w[1]) > 5
        match_boxes((g.boxes, g.scores), w, tol_px=0.01, tol_score=1e-5)


def test_without_the_plugin_library_roialign_runs_between_the_engines(stand_in, keep_all, tmp_path, monkeypatch):
    monkeypatch.setattr("gixdrt.engine.plugins.plugin_status", lambda: "gixdrt was built without TensorRT")
    det = PeakDetector(keep_all, backend="tensorrt", cache=tmp_path)
    plan = det.plan(batch=1, height=64, width=128)
    assert plan.artifacts == {"dense": "dense", "head": "head"} and plan.stage("roi_align")
    det.boxes(np.random.default_rng(4).random((64, 128), dtype=np.float32))
    assert sorted(r.engine_path.name for r in stand_in.opened) == ["dense-64x128-b1-fp32.engine", "head-r1000-fp32.engine"]


@pytest.mark.published
def test_real_frame_gives_the_12_rings_through_the_tensorrt_plan(stand_in, published_model, real_image, tmp_path):
    det = PeakDetector(published_model, backend="tensorrt", cache=tmp_path)
    boxes, scores = det.boxes(real_image)[0]
    match_detections(boxes, scores)
