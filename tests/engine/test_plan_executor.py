"""Plans and the executor: a plan is checked when made, fused on request, and one executor runs any plan with any
runner and kernel set.

The second plan here stands in for the powder U-Net of a later pipeline: a small two-layer convolutional graph
(probability map) followed by a threshold kernel (mask). It runs through the same executor as the GIXD detector,
on ONNX Runtime and PyTorch with the host kernels, and through the device kernel set's check mode; every
combination must give the mask the PyTorch module gives.
"""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.engine import Buffer, Executor, Fusion, GraphStage, HostKernels, KernelStage, Plan, PlanError

torch = pytest.importorskip("torch")

N, H, W = 2, 16, 24


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(4, 1, 3, padding=1), torch.nn.Sigmoid())
        self.eval()

    def forward(self, x):
        return self.net(x)


def mask_plan(n=N, h=H, w=W, value=0.5) -> Plan:
    buffers = {
        "image": Buffer((n, 1, h, w), "float32", "input"),
        "prob": Buffer((n, 1, h, w), "float32", "graph"),
        "mask": Buffer((n, 1, h, w), "bool"),
    }
    stages = (GraphStage("net", "net", {"x": "image"}, {"y": "prob"}, timer="graph"),
              KernelStage("mask", "threshold", ("prob",), ("mask",), {"value": value}, timer="threshold"))
    return Plan("mask", buffers, stages, ("mask", "prob"))


@pytest.fixture(scope="module")
def module():
    return TwoLayer()


@pytest.fixture(scope="module")
def onnx_file(module, tmp_path_factory):
    pytest.importorskip("onnx")
    import warnings

    path = tmp_path_factory.mktemp("plan") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module, (torch.zeros(N, 1, H, W),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
    return path


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).random((N, 1, H, W), dtype=np.float32)


def expected(module, image, value=0.5):
    with torch.no_grad():
        prob = module(torch.from_numpy(image)).numpy()
    return prob, prob > value


def runner(kind, module, onnx_file, device="cpu"):
    if kind == "onnxruntime":
        from gixdrt.engine import OnnxRuntimeRunner

        return OnnxRuntimeRunner(onnx_file, threads=1)
    from gixdrt.engine import TorchRunner

    return TorchRunner(module, {"x": (np.float32, (N, 1, H, W))}, ["y"], device=device)


@pytest.mark.parametrize("kind", ["onnxruntime", "torch"])
def test_second_plan_runs_on_host_kernels(kind, module, onnx_file, image):
    ex = Executor(mask_plan(), {"net": runner(kind, module, onnx_file)}, HostKernels())
    out = ex.run({"image": image}, timed=True)
    prob, mask = expected(module, image)
    np.testing.assert_allclose(out["prob"], prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["mask"], mask)
    assert 0 < mask.mean() < 1  # the threshold cuts through the map: the test can fail
    assert set(ex.timings) == {"graph", "threshold"} and all(t >= 0 for t in ex.timings.values())
    again = ex.run({"image": image[::-1].copy()})  # buffers are reused: a second run gives the second answer
    np.testing.assert_array_equal(again["mask"], expected(module, image[::-1].copy())[1])


def test_second_plan_runs_through_the_device_kernel_set_check_mode(module, image):
    from gixdrt.engine import DeviceKernels

    kernels = DeviceKernels("cpu")  # torch tensors as buffers, host kernels on views of them
    ex = Executor(mask_plan(), {"net": runner("torch", module, None)}, kernels)
    out = ex.run({"image": torch.from_numpy(image)})
    assert isinstance(out["mask"], torch.Tensor)
    mask, = kernels.to_host([out["mask"]])
    np.testing.assert_array_equal(mask, expected(module, image)[1])


def test_inputs_are_bound_without_a_copy_on_the_host(module, onnx_file, image):
    ex = Executor(mask_plan(), {"net": runner("torch", module, onnx_file)}, HostKernels())
    ex.run({"image": image})
    assert ex.buffers["image"] is image
    ex.run({"image": image.astype(np.float64)})  # another dtype: copied into the plan's own buffer
    assert ex.buffers["image"] is not image and ex.buffers["image"].dtype == np.float32


def test_executor_refuses_wrong_inputs_and_runners(module, onnx_file, image):
    with pytest.raises(PlanError, match="no runner for graph"):
        Executor(mask_plan(), {}, HostKernels())
    ex = Executor(mask_plan(), {"net": runner("torch", module, onnx_file)}, HostKernels())
    with pytest.raises(PlanError, match="takes the inputs"):
        ex.run({"images": image})
    with pytest.raises(ValueError, match="shape"):
        ex.run({"image": image[:1]})


def test_graph_output_of_the_wrong_shape_names_the_stage(module, onnx_file, image):
    plan = mask_plan()
    bad = Plan("mask", {**plan.buffers, "prob": Buffer((N, 2, H, W), "float32", "graph"),
                        "mask": Buffer((N, 2, H, W), "bool")}, plan.stages, plan.outputs)
    ex = Executor(bad, {"net": runner("onnxruntime", module, onnx_file)}, HostKernels())
    with pytest.raises(PlanError, match=r"stage 'net'.*returned y as float32\[2, 1, 16, 24\]"):
        ex.run({"image": image})


# --- plan checks -----------------------------------------------------------------------------------------
def test_plan_checks_its_buffers_and_order():
    image = Buffer((1, 4), "float32", "input")
    work = Buffer((1, 4), "bool")
    with pytest.raises(PlanError, match="unknown buffer 'nope'"):
        Plan("p", {"x": image, "m": work}, (KernelStage("k", "threshold", ("nope",), ("m",), {"value": 0}),), ("m",))
    with pytest.raises(PlanError, match="reads \\['m'\\] before any stage writes them"):
        Plan("p", {"x": image, "m": work, "o": work}, (KernelStage("k", "threshold", ("m",), ("o",), {"value": 0}),), ("o",))
    with pytest.raises(PlanError, match="writes 'x', a input buffer"):
        Plan("p", {"x": image}, (KernelStage("k", "threshold", ("x",), ("x",), {"value": 0}),), ("x",))
    with pytest.raises(PlanError, match="never written"):
        Plan("p", {"x": image, "m": work}, (), ("m",))
    with pytest.raises(PlanError, match="used twice"):
        Plan("p", {"x": image, "m": work}, (KernelStage("k", "threshold", ("x",), ("m",), {"value": 0}),) * 2, ("m",))
    with pytest.raises(PlanError, match="const value"):
        Buffer((2,), "float32", "const", np.zeros(3, np.float32))
    with pytest.raises(PlanError, match="unknown buffer role"):
        Buffer((2,), "float32", "scratch")


def test_fusion_moves_a_kernel_stage_into_its_graph():
    bufs = {
        "x": Buffer((2, 3), "float32", "input"),
        "feat": Buffer((2, 3), "float32"),
        "y": Buffer((2, 3), "float32", "graph"),
    }
    stages = (KernelStage("pool", "threshold", ("x",), ("feat",), {"value": 0}),
              GraphStage("head", "head", {"features": "feat"}, {"out": "y"}))
    plan = Plan("p", bufs, stages, ("y",), (Fusion("head", "pool", "head_pooled", {"raw": "x"}),))
    assert plan.artifacts == {"head": "head"}
    fused = plan.fused("pool")
    assert [s.name for s in fused.stages] == ["head"] and fused.stages[0].inputs == {"raw": "x"}
    assert fused.artifacts == {"head": "head_pooled"} and "feat" not in fused.buffers and not fused.fusions
    assert "graph head_pooled" in fused.describe()
    with pytest.raises(PlanError, match="no fusion"):
        fused.fused("pool")
