"""INT8 dense graph (gixdrt.export.quantize): Q/DQ structure, TensorRT's op check, the CPU rewrite, caching, and
the int8 detector on the real frame.

The default model's int8 graph is quantised once per session into a temporary cache with the default
calibration settings except the number of simulated images (4 instead of 32: about 10 s instead of 50 s on 2
cores); the caching test quantises a small random model on two tiny images.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from onnx import numpy_helper  # noqa: E402

from gixdrt.export import Calibration, check_graph, cpu_int8, qdq_summary, static_int8  # noqa: E402
from gixdrt.export.quantize import RPN_OUTPUTS  # noqa: E402
from gixdrt.gixd.artifacts import ModelGraphs  # noqa: E402

SMALL = {"images": (1, 1, 64, 256)}
TEST_CALIBRATION = Calibration(sim_images=4)


@pytest.fixture(scope="session")
def int8_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="session")
def default_int8(int8_cache, published_assets):
    """Path of the default model's int8 dense graph (shipped, or quantised once per session)."""
    graphs = ModelGraphs.open("default", cache=int8_cache)
    graphs.calibration = TEST_CALIBRATION
    path, _ = graphs.onnx("dense", precision="int8", shapes=SMALL)
    return path


def _session(graph, image):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"]).run(None, {"images": image})


def test_int8_graph_has_qdq_per_channel_weights_and_zero_points_zero(default_int8):
    model = onnx.load(str(default_int8))
    s = qdq_summary(model)
    # every convolution but the RPN's six output convolutions (left fp32) takes int8 inputs, per-channel weights
    assert s["convs"] == 35 and s["convs_int8"] == 35 - len(RPN_OUTPUTS) == 29 and s["per_channel"] == 29
    assert s["zero_points"] == [0]  # symmetric: what TensorRT's explicit quantisation takes
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # activations: int8, one scale per tensor
            assert inits[node.input[2]].dtype == np.int8 and inits[node.input[1]].size == 1
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim == 4:
            q = inits[node.input[0]]
            assert q.dtype == np.int8
            # symmetric per-channel scales: each output channel's largest |q| is 127 (max |w| / scale)
            assert np.array_equal(np.abs(q.astype(np.int16)).reshape(q.shape[0], -1).max(axis=1),
                                  np.full(q.shape[0], 127))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["gixdrt.precision"] == "int8" and meta["gixdrt.graph"] == "dense"
    assert '"method": "Percentile"' in meta["gixdrt.calibration"]
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in RPN_OUTPUTS:  # fp32 weights, fed the dequantised activation
            assert node.input[1] in inits and inits[node.input[1]].dtype == np.float32
            assert producer[node.input[0]].op_type == "DequantizeLinear"


def test_int8_graph_passes_tensorrt_check_with_static_shapes(default_int8, tmp_path):
    graphs = ModelGraphs.open("default", cache=tmp_path)
    path = static_int8(default_int8, tmp_path / "static.onnx", graphs.dims("dense", SMALL))
    report = check_graph(path)
    assert report.ok and report.ops["QuantizeLinear"] > 29 and report.ops["DequantizeLinear"] > 58
    assert report.inputs["images"] == ("FLOAT", SMALL["images"])
    assert report.outputs["p2"] == ("FLOAT", (1, 64, 8, 64))
    with pytest.raises(Exception, match="not static"):  # the dynamic graph itself is not a TensorRT input
        check_graph(default_int8)


def test_cpu_rewrite_computes_the_same_values(default_int8, real_image):
    """uint8 activations (zero point 128) and the ReLUs folded into the quantisation give the int8 graph's outputs
    (on a real image: the rewrite only moves the upper clamp of a ReLU's output, from 127 to 255 steps)."""
    image = np.ascontiguousarray(real_image[200:264, 300:556])[None, None]
    model = onnx.load(str(default_int8))
    rewritten = onnx.load_from_string(cpu_int8(model))
    relus = sum(n.op_type == "Relu" for n in model.graph.node)
    assert relus == 20 and sum(n.op_type == "Relu" for n in rewritten.graph.node) == 0
    inits = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    quantized = {inits[n.input[2]].dtype.name for n in rewritten.graph.node if n.op_type == "QuantizeLinear"}
    weights = {inits[n.input[0]].dtype.name for n in rewritten.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4}
    assert quantized == {"uint8"} and weights == {"int8"}  # activations uint8, weights int8
    want = _session(str(default_int8), image)
    got = _session(rewritten.SerializeToString(), image)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6 * max(1.0, float(np.abs(w).max())))


def test_int8_detector_finds_the_real_frame_rings(default_int8, int8_cache, published_assets):
    from gixdrt.geometry import load_config
    from gixdrt.gixd import PeakDetector, Pipeline
    from gixdrt.io import read_frame
    from gixdrt.testing import match_rings, published_ring_q

    config = load_config(published_assets.config)
    det = PeakDetector("default", backend="onnxruntime", precision="int8", threads=2, cache=int8_cache,
                       calibration=TEST_CALIBRATION)
    assert det.graphs.needs_export("onnxruntime", "int8") is False  # the session's graph is reused
    table = Pipeline(config, det).detect(read_frame(published_assets.frame))
    res = match_rings(table.q, published_ring_q(config.geometry.q_max), tol_q=0.01)
    assert res["found"] == 12 and res["max_dq"] <= 0.01, res
    assert det.describe().endswith("int8")


def test_int8_graphs_are_cached_by_calibration(tmp_path):
    torch = pytest.importorskip("torch")
    from gixdrt.model import GixdDetector

    torch.manual_seed(1)
    model = GixdDetector().eval()
    cal = Calibration(sim_images=2, sim_size=(64, 256), real_frame=False)
    graphs = ModelGraphs.open(model, cache=tmp_path)
    graphs.calibration = cal
    assert graphs.needs_export("onnxruntime", "int8")
    path, dims = graphs.onnx("dense", precision="int8", shapes=SMALL)
    assert path.name == f"dense-int8-{cal.key()}.onnx" and dims["height"] == 64 and dims["anchors"] > 0
    assert not graphs.needs_export("onnxruntime", "int8")
    stamp = path.stat().st_mtime_ns
    assert graphs.onnx("dense", precision="int8", shapes=SMALL)[0].stat().st_mtime_ns == stamp  # not rebuilt
    head, _ = graphs.onnx("head", precision="int8", shapes={"roi_features": (8, 64, 16, 16)})
    assert head.name == "head-fp32.onnx"  # the head stays fp32
    other = Calibration(method="MinMax", sim_images=2, sim_size=(64, 256), real_frame=False)
    assert other.key() != cal.key()
    graphs.calibration = other
    assert graphs.needs_export("onnxruntime", "int8")
    assert graphs.onnx("dense", precision="int8", shapes=SMALL)[0].name == f"dense-int8-{other.key()}.onnx"
    assert len(list(tmp_path.rglob("dense-int8-*.onnx"))) == 2


def test_int8_needs_onnxruntime_and_valid_calibration():
    from gixdrt.engine.backends import Runtime

    with pytest.raises(ValueError, match="int8 runs on onnxruntime"):
        Runtime("torch", "cpu", "int8")
    with pytest.raises(ValueError, match="calibration method"):
        Calibration(method="Mean")
    with pytest.raises(ValueError, match="at least one image"):
        Calibration(sim_images=0, real_frame=False)
