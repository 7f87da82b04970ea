"""torch → ONNX export: BN folding, graph structure and checks, ONNX Runtime against the torch reference.

A random model with random BN statistics (so folding is not a no-op), exported once per module at a small
shape (128 × 256, batch 2) to keep the tests fast; the published model on the full frame is in
tests/gixd/test_detector.py.

Tolerances (relative to the largest magnitude of each output):
- folded vs original model, fp32: 1e-5 (the folded weights are computed in fp64, then rounded to fp32);
- ONNX Runtime fp32 vs torch: 1e-4 (other convolution algorithms and summation orders);
- fp16 graphs vs torch: 5e-3 (fp16 weights and activations: 11-bit mantissa, 4.9e-4 per rounding, summed
  over a few dozen layers).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gixdrt.engine import OnnxRuntimeRunner
from gixdrt.export import (
    DENSE_OUTPUTS,
    IR_VERSION,
    OPSET,
    GraphCheckError,
    check_graph,
    export_dense,
    export_head,
    export_head_pooled,
    fold_batchnorm,
    graph_metadata,
    model_digest,
    store_weights_fp16,
)
from gixdrt.model import GixdDetector
from gixdrt.model.graphs import DenseGraph, HeadGraph

SHAPE, BATCH, ROIS = (128, 256), 2, 64
TOL_FOLD, TOL_ORT, TOL_FP16 = 1e-5, 1e-4, 5e-3


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GixdDetector()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(BATCH, 1, *SHAPE)


@pytest.fixture(scope="module")
def rois():
    torch.manual_seed(2)
    return torch.randn(ROIS, 64, 16, 16)


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    out = {}
    for fp16 in (False, True):
        tag = "fp16" if fp16 else "fp32"
        out["dense", tag] = export_dense(model, d / f"dense-{tag}.onnx", shape=SHAPE, batch=BATCH, fp16=fp16)
        out["head", tag] = export_head(model, d / f"head-{tag}.onnx", rois=ROIS, fp16=fp16)
    return out


@pytest.fixture(scope="module")
def reference(model, images, rois):
    """The graphs as PyTorch modules (BN not folded): what every export is compared with."""
    with torch.no_grad():
        p2, logits, deltas = DenseGraph(model)(images)
        head_logits, head_deltas = HeadGraph(model)(rois)
    return {"p2": p2, "logits": logits, "deltas": deltas, "head_logits": head_logits, "head_deltas": head_deltas}


# --- BN folding ---------------------------------------------------------------------------------------
def test_fold_batchnorm_matches_original(model, images):
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20  # the original is untouched
    with torch.no_grad():
        a, b = model.dense(images), folded.dense(images)
    for x, y in zip(a.features + a.logits + a.deltas, b.features + b.logits + b.deltas):
        assert rel_err(y, x) <= TOL_FOLD


def test_fold_rejects_a_lonely_batchnorm():
    net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="could not be folded"):
        fold_batchnorm(net)


# --- graph structure and checks -----------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_pass_check_with_static_float32_boundaries(graphs, model, precision):
    dense = check_graph(graphs["dense", precision])
    head = check_graph(graphs["head", precision])
    for report in (dense, head):
        assert report.ok and report.opset == OPSET >= 17 and report.ir_version == IR_VERSION
        assert "BatchNormalization" not in report.ops and "Identity" not in report.ops
        assert all(t == "FLOAT" for t, _ in [*report.inputs.values(), *report.outputs.values()])
    assert dense.inputs == {"images": ("FLOAT", (BATCH, 1, *SHAPE))}
    assert list(dense.outputs) == list(DENSE_OUTPUTS)
    assert dense.outputs["p2"][1] == (BATCH, 64, SHAPE[0] // 8, SHAPE[1] // 4)
    anchors = 2 * sum((SHAPE[0] // s) * (SHAPE[1] // 4) for s in (8, 16, 32))
    assert dense.outputs["logits"][1] == (BATCH, anchors) and dense.outputs["deltas"][1] == (BATCH, anchors, 4)
    assert set(dense.ops) <= {"Conv", "Relu", "MaxPool", "Add", "Resize", "Sub", "Div", "Cast", "Transpose",
                              "Reshape", "Flatten", "Concat"}
    assert head.inputs == {"roi_features": ("FLOAT", (ROIS, 64, 16, 16))}
    assert head.outputs == {"logits": ("FLOAT", (ROIS,)), "deltas": ("FLOAT", (ROIS, 4))}
    assert ("Cast" in dense.ops) == (precision == "fp16")
    meta = graph_metadata(graphs["dense", precision])
    assert meta["gixdrt.graph"] == "dense" and meta["gixdrt.precision"] == precision
    assert meta["gixdrt.model_sha256"] == model_digest(model) and meta["gixdrt.batch"] == str(BATCH)


def test_fp16_graph_weights_are_half(graphs):
    m = onnx.load(graphs["dense", "fp16"])
    kinds = {onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
    assert "FLOAT16" in kinds and "FLOAT" not in kinds  # Resize sizes and reshape targets are INT64


def test_dynamic_graphs_serve_any_batch_and_image_size(model, tmp_path):
    """Exported without a shape, one file runs every batch and image size (fixed per session, as the runtime
    does): the RPN outputs come flattened in anchor order, BatchNorm stays in the graph."""
    dense = export_dense(model, tmp_path / "dense.onnx")
    head = export_head(model, tmp_path / "head.onnx")
    ops = {n.op_type for n in onnx.load(dense).graph.node}
    assert "BatchNormalization" in ops  # the runtime folds it: the stored weights stay the model's values
    meta = graph_metadata(dense)
    assert meta["gixdrt.image_shape"] == "dynamic" and meta["gixdrt.batch"] == "dynamic"
    assert meta["gixdrt.roi_scale"] == "0.125,0.25"
    rng = np.random.default_rng(8)
    for n, h, w in ((1, 64, 128), (3, 96, 40)):
        x = rng.random((n, 1, h, w), dtype=np.float32)
        levels = [(h // s, w // 4) for s in (8, 16, 32)]
        dims = {"batch": n, "height": h, "width": w, "p2_height": h // 8, "p2_width": w // 4,
                "anchors": 2 * sum(a * b for a, b in levels)}
        with OnnxRuntimeRunner(dense, threads=1, dims=dims) as runner:
            out = runner.infer({"images": x})
        with torch.no_grad():
            want = DenseGraph(model)(torch.from_numpy(x))
        for name, ref in zip(DENSE_OUTPUTS, want):
            assert out[name].shape == tuple(ref.shape) and rel_err(out[name], ref) <= TOL_ORT, (name, n, h, w)
    with OnnxRuntimeRunner(head, threads=1, dims={"rois": 5}) as runner:
        assert runner.infer({"roi_features": np.zeros((5, 64, 16, 16), np.float32)})["deltas"].shape == (5, 4)


def test_weights_stored_in_fp16_only_where_exact(model, tmp_path, images):
    """fp16 storage is lossless: weights that fp16 represents exactly go fp16 (+ a Cast), the others stay fp32,
    and the graph computes exactly what it computed before."""
    half_model = GixdDetector()
    half_model.load_state_dict({k: v.half().float() if v.is_floating_point() and k.endswith("weight") else v
                                for k, v in model.state_dict().items()})
    plain = export_dense(half_model, tmp_path / "plain.onnx")
    stored = export_dense(half_model, tmp_path / "stored.onnx", weights_fp16=True)
    assert stored.stat().st_size < 0.6 * plain.stat().st_size
    kinds = {onnx.TensorProto.DataType.Name(i.data_type) for i in onnx.load(stored).graph.initializer}
    assert {"FLOAT16", "FLOAT"} <= kinds  # BN statistics are not fp16 values: they stay fp32
    dims = {"batch": BATCH, "height": SHAPE[0], "width": SHAPE[1], "p2_height": SHAPE[0] // 8,
            "p2_width": SHAPE[1] // 4, "anchors": 2 * sum((SHAPE[0] // s) * (SHAPE[1] // 4) for s in (8, 16, 32))}
    with OnnxRuntimeRunner(plain, threads=1, dims=dims) as a, OnnxRuntimeRunner(stored, threads=1, dims=dims) as b:
        x = {"images": images.numpy()}
        for name, value in a.infer(x).items():
            np.testing.assert_array_equal(b.infer(x)[name], value)
    assert store_weights_fp16(onnx.load(stored)).graph.initializer  # idempotent on an already stored graph


def test_pooled_head_graph_for_tensorrt(model, tmp_path):
    path = export_head_pooled(model, tmp_path / "head_pooled.onnx", batch=2, p2_shape=(SHAPE[0] // 8, SHAPE[1] // 4))
    report = check_graph(path)  # the plugin op is accepted: TensorRT maps it to gixdrt's plugin
    assert report.inputs == {"p2": ("FLOAT", (2, 64, SHAPE[0] // 8, SHAPE[1] // 4)), "rois": ("FLOAT", (2000, 5))}
    assert report.outputs == {"logits": ("FLOAT", (2000,)), "deltas": ("FLOAT", (2000, 4))}
    g = onnx.load(path).graph
    (node,) = [n for n in g.node if n.op_type == "GixdrtRoIAlign"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "gixdrt" and attrs["plugin_namespace"] == b"gixdrt" and attrs["plugin_version"] == b"1"
    assert (attrs["out_h"], attrs["out_w"], attrs["sampling_ratio"], attrs["aligned"]) == (16, 16, -1, 0)
    assert (attrs["scale_y"], attrs["scale_x"]) == pytest.approx((0.125, 0.25))
    half = export_head_pooled(model, tmp_path / "head_pooled16.onnx", batch=1, p2_shape=(4, 8), fp16=True)
    check_graph(half)
    fp16_nodes = [n for n in onnx.load(half).graph.node if n.op_type == "Cast"]
    assert fp16_nodes and onnx.load(half).graph.node[0].op_type == "GixdrtRoIAlign"  # the plugin stays fp32


def _tiny(op: str, dims_in, dims_out, **attrs):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims_in)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims_out)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def test_check_graph_accepts_a_supported_static_graph():
    assert check_graph(_tiny("Relu", [2, 3], [2, 3])).ok


def test_check_graph_rejects_unsupported_op():
    with pytest.raises(GraphCheckError, match="Unique.*not supported") as info:
        check_graph(_tiny("Unique", [6], [None]))
    assert not info.value.report.ok


def test_check_graph_rejects_dynamic_shape():
    with pytest.raises(GraphCheckError, match=r"x: shape \['N', 3\] is not static"):
        check_graph(_tiny("Relu", ["N", 3], ["N", 3]))


def test_check_graph_rejects_data_dependent_op():
    with pytest.raises(GraphCheckError, match="data-dependent"):
        check_graph(_tiny("NonZero", [2, 3], [2, None]))


def test_check_graph_follows_the_parser_document():
    # docs/operators.md (TensorRT 10.15): AffineGrid is marked N; Resize supports nearest and linear only;
    # pooling takes no dilations
    with pytest.raises(GraphCheckError, match="AffineGrid.*not supported"):
        check_graph(_tiny("AffineGrid", [2, 2, 3], [2, 4, 5, 2]))
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")
    model = helper.make_model(helper.make_graph([node], "r", [x], [y], [scales]),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    with pytest.raises(GraphCheckError, match="mode cubic"):
        check_graph(model)
    with pytest.raises(GraphCheckError, match="dilations"):
        check_graph(_tiny("MaxPool", [1, 1, 8, 8], [1, 1, 6, 6], kernel_shape=[2, 2], dilations=[2, 2]))


def test_check_graph_rejects_custom_domain(graphs, tmp_path):
    m = onnx.load(graphs["head", "fp32"])
    m.graph.node[-1].domain = "com.example"
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    with pytest.raises(GraphCheckError, match="custom domain"):
        check_graph(m)


def test_export_argument_checks(model, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        export_dense(model, tmp_path / "x.onnx", shape=(100, 256))
    with pytest.raises(ValueError, match="batch"):
        export_dense(model, tmp_path / "x.onnx", shape=SHAPE, batch=0)
    with pytest.raises(ValueError, match="rois"):
        export_head(model, tmp_path / "x.onnx", rois=0)
    assert not (tmp_path / "x.onnx").exists()


# --- ONNX Runtime vs the torch reference --------------------------------------------------------------
@pytest.mark.parametrize("precision,tol", [("fp32", TOL_ORT), ("fp16", TOL_FP16)])
def test_onnxruntime_dense_matches_torch(graphs, images, reference, precision, tol):
    with OnnxRuntimeRunner(graphs["dense", precision], threads=2) as runner:
        out = runner.infer({"images": images.numpy()})
        assert runner.providers == ["CPUExecutionProvider"]
    assert list(out) == list(DENSE_OUTPUTS)
    for name, value in out.items():
        assert value.dtype == np.float32 and value.shape == tuple(reference[name].shape)
        assert rel_err(value, reference[name]) <= tol, name


@pytest.mark.parametrize("precision,tol", [("fp32", TOL_ORT), ("fp16", TOL_FP16)])
def test_onnxruntime_head_matches_torch(graphs, rois, reference, precision, tol):
    with OnnxRuntimeRunner(graphs["head", precision], threads=2) as runner:
        out = runner.infer({"roi_features": rois})  # a CPU torch tensor is viewed, not copied
    assert out["logits"].shape == (ROIS,) and out["deltas"].shape == (ROIS, 4)
    for name in ("logits", "deltas"):
        assert rel_err(out[name], reference[f"head_{name}"]) <= tol, name


def test_export_leaves_the_callers_model_as_it_is(model, tmp_path):
    """Exporting traces a float32 CPU copy when it must: the caller's model keeps its dtype, device and weights (a
    model restored "in place" after export was a latent bug of the GPU path)."""
    double = GixdDetector()
    double.load_state_dict(model.state_dict())
    double = double.double()
    before = {k: v.clone() for k, v in double.state_dict().items()}
    export_dense(double, tmp_path / "d.onnx", shape=SHAPE, batch=1)
    export_head(double, tmp_path / "h.onnx", rois=4)
    after = double.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert double.backbone.backbone.conv1.weight.dtype == torch.float64
    assert not double.training
