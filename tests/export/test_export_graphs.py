"""torch → ONNX export: BN folding, graph structure and checks, ONNX Runtime against the torch reference.

A random model with random BN statistics (so folding is not a no-op), exported once per module at a small
shape (128 × 256, batch 2) to keep the tests fast; the published model on the full frame is in
tests/engine/test_engine_detector.py.

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
from gixdrt.engine.pyt import dense_runner, head_runner
from gixdrt.export import (
    IR_VERSION,
    OPSET,
    GraphCheckError,
    check_graph,
    dense_outputs,
    export_dense,
    export_head,
    fold_batchnorm,
    graph_metadata,
    model_digest,
)
from gixdrt.model import GixdDetector

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
    with dense_runner(model, shape=SHAPE, batch=BATCH) as dense, head_runner(model, rois=ROIS) as head:
        return {**dense.infer({"images": images}), **head.infer({"roi_features": rois})}


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
    assert list(dense.outputs) == list(dense_outputs())
    assert dense.outputs["p2"][1] == (BATCH, 64, SHAPE[0] // 8, SHAPE[1] // 4)
    assert dense.outputs["deltas_2"][1] == (BATCH, 8, SHAPE[0] // 32, SHAPE[1] // 4)
    assert set(dense.ops) <= {"Conv", "Relu", "MaxPool", "Add", "Resize", "Sub", "Div", "Cast"}
    assert head.inputs == {"roi_features": ("FLOAT", (ROIS, 64, 16, 16))}
    assert head.outputs == {"logits": ("FLOAT", (ROIS,)), "deltas": ("FLOAT", (ROIS, 4))}
    assert ("Cast" in dense.ops) == (precision == "fp16")
    meta = graph_metadata(graphs["dense", precision])
    assert meta["gixdrt.graph"] == "dense" and meta["gixdrt.precision"] == precision
    assert meta["gixdrt.model_sha256"] == model_digest(model) and meta["gixdrt.batch"] == str(BATCH)


def test_fp16_graph_weights_are_half(graphs):
    m = onnx.load(graphs["dense", "fp16"])
    kinds = {onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
    assert "FLOAT16" in kinds and "FLOAT" not in kinds  # Resize sizes are INT64


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
    assert list(out) == list(dense_outputs())
    for name, value in out.items():
        assert value.dtype == np.float32 and value.shape == tuple(reference[name].shape)
        assert rel_err(value, reference[name]) <= tol, name


@pytest.mark.parametrize("precision,tol", [("fp32", TOL_ORT), ("fp16", TOL_FP16)])
def test_onnxruntime_head_matches_torch(graphs, rois, reference, precision, tol):
    with OnnxRuntimeRunner(graphs["head", precision], threads=2) as runner:
        out = runner.infer({"roi_features": rois})  # a CPU torch tensor is viewed, not copied
    assert out["logits"].shape == (ROIS,) and out["deltas"].shape == (ROIS, 4)
    for name in ("logits", "deltas"):
        assert rel_err(out[name], reference[name]) <= tol, name
