"""The U-Net plan: ONNX Runtime equals the PyTorch module, tiled equals whole-frame, the chunked runner, the model
files, and the settings a card carries."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from gixdrt.engine import ChunkedRunner, TorchRunner  # noqa: E402
from gixdrt.errors import CheckpointError  # noqa: E402
from gixdrt.kernels.reference.powder import powder_normalize  # noqa: E402
from gixdrt.model.unet import UNet  # noqa: E402
from gixdrt.powder.model import load_card, load_unet, save_unet  # noqa: E402
from gixdrt.powder.plan import MaskSettings, PowderMasker, powder_plan, tile_layout  # noqa: E402

NORM = {"bins_per_unit": 1024, "max_log": 24, "min_mad": 0.01}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = UNet(depth=3)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        m.train()
        for _ in range(3):
            m(torch.randn(2, 1, 32, 32) * 2 + 0.5)
        m.head.bias.copy_(torch.tensor([0.0, -0.05]))
    d = tmp_path_factory.mktemp("unet") / "model"
    return save_unet(m.eval(), d, normalization=NORM, mask={"threshold": 0.45, "min_size": 3, "connectivity": 8})


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    img = rng.poisson(100.0, (150, 206)).astype(np.float32)
    img[40:46, 50:55] += 5000
    mask = np.zeros(img.shape, np.uint8)
    mask[:, 100:104] = 1
    return img, mask


def _module_log_odds(model, img, mask):
    h, w = img.shape
    x = np.zeros((1, 1, -(-h // 4) * 4, -(-w // 4) * 4), np.float32)
    powder_normalize(img[None], mask, out=x, **NORM)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    return (y[0, 1] - y[0, 0])[:h, :w]


def test_onnxruntime_plan_equals_the_torch_module(model_dir, frame):
    img, mask = frame
    model = load_unet(model_dir)
    want = _module_log_odds(model, img, mask)
    masker = PowderMasker(model_dir, detector_mask=mask, threads=1)
    got = masker.run(img, timed=True)
    np.testing.assert_allclose(got["log_odds"], want, rtol=1e-4, atol=2e-4)
    assert set(masker.timings) == {"normalize", "unet", "stitch", "mask"}
    # the mask: P(spot) > 0.45, not on the detector mask, components of ≥ 3 px
    from gixdrt.kernels.reference.powder import remove_small_components

    raw = (1 / (1 + np.exp(-want.astype(np.float64))) > 0.45) & (mask == 0)
    expect = remove_small_components(raw[None], out=np.zeros((1, *raw.shape), bool), min_size=3)[0]
    near = np.abs(want - np.log(0.45 / 0.55)) < 1e-3  # pixels at the threshold may flip with rounding
    assert 0 < expect.sum() < expect.size and not got["spots"][mask != 0].any()
    assert np.count_nonzero((got["spots"] != expect) & ~near) <= 3


def test_torch_runtime_and_tiles_give_the_same_log_odds(model_dir, frame):
    img, mask = frame
    whole = PowderMasker(model_dir, runtime="torch", detector_mask=mask, tile=0).run(img)
    tiled_masker = PowderMasker(model_dir, detector_mask=mask, tile=96, halo=24, threads=1)
    tiled = tiled_masker.run(img, timed=True)
    assert "tiles" in tiled_masker.timings
    np.testing.assert_allclose(tiled["log_odds"], whole["log_odds"], rtol=1e-4, atol=5e-4)


def test_tile_layout_partitions_the_frame():
    lay = tile_layout(2880, 2881, multiple=4, tile=1024, halo=32)
    assert lay.padded == (2880, 2884) and lay.tile == (1024, 1024)
    for starts, cores, length in ((lay.starts_y, lay.cores_y, 2880), (lay.starts_x, lay.cores_x, 2884)):
        assert starts[0] == 0 and starts[-1] == length - 1024
        assert cores[0][0] == 0 and cores[-1][1] == length
        for (a, b), (c, _) in zip(cores, cores[1:]):
            assert b == c  # contiguous, no gap, no overlap
        for s, (lo, hi) in zip(starts, cores):
            assert (lo == 0 or lo >= s + 32) and (hi == length or hi <= s + 1024 - 32)
    assert tile_layout(1000, 1000, multiple=4, tile=1024).whole
    assert tile_layout(1000, 1000, multiple=4, tile=0).padded == (1000, 1000)


def test_plan_describes_its_stages(frame):
    img, mask = frame
    plan = powder_plan(*img.shape, mask=mask, settings=MaskSettings(tile=64, halo=16, min_size=2))
    names = [s.name for s in plan.stages]
    assert names == ["normalize", "tiles", "unet", "stitch", "threshold", "components"]
    assert plan.outputs == ("spots", "log_odds")
    with pytest.raises(ValueError, match="detector mask shape"):
        powder_plan(10, 12, mask=np.zeros((12, 10)))


def test_chunked_runner_runs_one_item_at_a_time():
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    inner = TorchRunner(net, {"x": (np.float32, (1, 1, 8, 8))}, ["y"])
    calls = []
    real = inner.infer_impl
    inner.infer_impl = lambda feed: (calls.append(feed["x"].shape), real(feed))[1]
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    with ChunkedRunner(inner, 3) as runner:
        y = runner.infer({"x": x})["y"]
    with torch.no_grad():
        np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), rtol=1e-6)
    assert calls == [(1, 1, 8, 8)] * 3
    with pytest.raises(ValueError, match="not a multiple"):
        ChunkedRunner(TorchRunner(net, {"x": (np.float32, (2, 1, 8, 8))}, ["y"]), 3).activate()


def test_card_and_settings(model_dir):
    card = load_card(model_dir)
    assert card["storage_dtype"] == "float16" and card["parameters"] == 29_650
    s = MaskSettings.from_card(card, min_size=None, threshold=0.7)
    assert (s.threshold, s.min_size) == (0.7, 3)
    with pytest.raises(CheckpointError, match="no powder model"):
        load_card(model_dir.parent / "nothing")
    with pytest.raises(ValueError, match="threshold"):
        MaskSettings(threshold=1.0)


def test_plan_runs_through_the_device_kernel_set_check_mode(model_dir, frame):
    from gixdrt.engine import DeviceKernels, Executor

    img, mask = frame
    settings = MaskSettings(tile=96, halo=24, threshold=0.45, min_size=3)
    plan = powder_plan(*img.shape, mask=mask, settings=settings)
    lay = tile_layout(*img.shape, multiple=4, tile=96, halo=24)
    inner = TorchRunner(load_unet(model_dir), {"x": (np.float32, (1, 1, *lay.tile))}, ["logits"])
    kernels = DeviceKernels("cpu")  # torch tensors as buffers, the host kernels on views of them
    out = Executor(plan, {"unet": ChunkedRunner(inner, lay.count)}, kernels).run({"frames": torch.from_numpy(img[None])})
    spots, log_odds = kernels.to_host([out["spots"], out["log_odds"]])
    want = PowderMasker(model_dir, runtime="torch", detector_mask=mask, tile=0).run(img)
    np.testing.assert_allclose(log_odds[0], want["log_odds"], rtol=1e-4, atol=5e-4)
    assert spots[0].any() and not spots[0][mask != 0].any()


# ---- two-channel models (the ring channel) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ring_model_dir(tmp_path_factory):
    torch.manual_seed(1)
    m = UNet(depth=3, in_channels=2)
    with torch.no_grad():
        m.train()
        for _ in range(3):
            m(torch.randn(2, 2, 32, 32) * 2 + 0.5)
    d = tmp_path_factory.mktemp("unet2") / "model"
    return save_unet(m.eval(), d, normalization=NORM, mask={"threshold": 0.5, "min_size": 0, "connectivity": 8},
                     extra={"ring": {"width_px": 3.0, "min_pixels": 12, "min_scale": 2.0}})


@pytest.fixture(scope="module")
def powder_frame():
    from gixdrt.sim.powder import PowderSimConfig, PowderSimulator

    return PowderSimulator(PowderSimConfig(), seed=5, size=(150, 206)).frame(0)


def test_two_channel_plan_equals_the_module_on_both_channels(ring_model_dir, powder_frame):
    from gixdrt.kernels.reference.powder import ring_normalize
    from gixdrt.powder.classical import RingIndex

    f = powder_frame
    model = load_unet(ring_model_dir)
    x = np.zeros((1, 2, 152, 208), np.float32)
    powder_normalize(f.image[None], f.detector_mask, out=x, **NORM)
    idx = RingIndex.from_geometry(f.geometry, f.detector_mask, width_px=3.0)  # the card's ring settings
    ring_normalize(f.image[None], out=x, pixels=idx.pixels, ptr=idx.ptr, channel=1, min_pixels=12, min_scale=2.0)
    assert np.abs(x[0, 1]).max() > 1 and np.abs(x[0, 0] - x[0, 1]).max() > 1
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    want = (y[0, 1] - y[0, 0])[:150, :206]
    masker = PowderMasker(ring_model_dir, detector_mask=f.detector_mask, geometry=f.geometry, threads=1)
    got = masker.run(f.image, timed=True)
    np.testing.assert_allclose(got["log_odds"], want, rtol=1e-4, atol=3e-4)
    assert "ring" in masker.timings
    tiled = PowderMasker(ring_model_dir, runtime="torch", kernels="reference", detector_mask=f.detector_mask,
                         geometry=f.geometry, tile=96, halo=24).run(f.image)
    np.testing.assert_allclose(tiled["log_odds"], want, rtol=1e-4, atol=5e-4)


def test_two_channel_model_needs_the_geometry(ring_model_dir, powder_frame, tmp_path):
    from gixdrt.errors import ConfigError

    with pytest.raises(ConfigError, match="geometry"):
        PowderMasker(ring_model_dir)
    poni = powder_frame.geometry.write_poni(tmp_path / "det.poni")
    a = PowderMasker(ring_model_dir, geometry=poni, detector_mask=powder_frame.detector_mask).run(powder_frame.image)
    b = PowderMasker(ring_model_dir, geometry=powder_frame.geometry,
                     detector_mask=powder_frame.detector_mask).run(powder_frame.image)
    np.testing.assert_array_equal(a["log_odds"], b["log_odds"])


def test_one_channel_model_ignores_a_geometry(model_dir, frame, powder_frame):
    img, mask = frame
    plain = PowderMasker(model_dir, detector_mask=mask, threads=1).run(img)
    masker = PowderMasker(model_dir, detector_mask=mask, threads=1, geometry=powder_frame.geometry)
    assert masker.in_channels == 1 and masker.rings(img.shape) is None
    np.testing.assert_array_equal(masker.run(img)["log_odds"], plain["log_odds"])


def test_bf16_on_the_cpu_stays_close_to_fp32(model_dir, frame):
    img, mask = frame
    fp32 = PowderMasker(model_dir, runtime="torch", detector_mask=mask).run(img)
    bf16 = PowderMasker(model_dir, runtime="torch", precision="bf16", detector_mask=mask).run(img)
    assert bf16["log_odds"].dtype == np.float32
    diff = np.abs(bf16["log_odds"] - fp32["log_odds"])
    assert 0 < diff.max() < 0.5 and np.median(diff) < 0.05  # bf16 did run (not bit-equal), and stays close
    assert np.count_nonzero(bf16["spots"] != fp32["spots"]) <= max(5, fp32["spots"].sum() // 50)


def test_precision_and_runtime_checks(model_dir):
    from gixdrt.powder.plan import auto_runtime

    with pytest.raises(ValueError, match="bf16"):
        PowderMasker(model_dir, runtime="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        PowderMasker(model_dir, runtime="torch", precision="fp8")
    runtime, precision = auto_runtime()
    m = PowderMasker(model_dir, runtime="auto")
    assert (m.runtime, m.precision) == (runtime, precision) and precision in ("fp32", "bf16")


def test_device_plan_sequence_in_check_mode(ring_model_dir, powder_frame):
    """PowderMasker(device=...) runs the plan on tensors through the device kernel set; "cpu-check" does that on CPU
    tensors with the host kernels, so the sequence (constants, tiles, the runner on the kernels' device, the copy of
    the results to the host) is tested without a GPU."""
    f = powder_frame
    want = PowderMasker(ring_model_dir, runtime="torch", detector_mask=f.detector_mask, geometry=f.geometry,
                        tile=96, halo=24).run(f.image)
    m = PowderMasker(ring_model_dir, runtime="torch", device="cpu-check", detector_mask=f.detector_mask,
                     geometry=f.geometry, tile=96, halo=24)
    got = m.run(f.image, timed=True)
    assert isinstance(got["spots"], np.ndarray) and got["spots"].dtype == bool
    np.testing.assert_allclose(got["log_odds"], want["log_odds"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["spots"], want["spots"])
    assert {"normalize", "ring", "tiles", "unet", "stitch", "mask"} <= set(m.timings)
    with pytest.raises(ValueError, match="runtime='torch'"):
        PowderMasker(ring_model_dir, device="cuda", geometry=f.geometry)
    with pytest.raises(ValueError, match="device must be"):
        PowderMasker(ring_model_dir, runtime="torch", device="tpu", geometry=f.geometry)


def test_tensorrt_runtime_is_gated_and_its_static_graph_matches(ring_model_dir, powder_frame, tmp_path):
    """Without TensorRT or a GPU, runtime='tensorrt' says why in one error (never a crash later); the static-shape
    graph it would build from runs and equals the dynamic one."""
    import onnxruntime as ort

    from gixdrt.engine import EngineUnavailableError
    from gixdrt.engine.backends import backend_status
    from gixdrt.powder.model import onnx_graph, static_graph

    if backend_status().get(("tensorrt", "cuda")):
        with pytest.raises(EngineUnavailableError, match="TensorRT"):
            PowderMasker(ring_model_dir, runtime="tensorrt", geometry=powder_frame.geometry)
    with pytest.raises(ValueError, match="bf16"):
        PowderMasker(ring_model_dir, runtime="tensorrt", precision="bf16", geometry=powder_frame.geometry)
    path = static_graph(ring_model_dir, (1, 2, 64, 96), tmp_path)
    assert static_graph(ring_model_dir, (1, 2, 64, 96), tmp_path) == path  # made once
    x = np.random.default_rng(3).normal(size=(1, 2, 64, 96)).astype(np.float32)
    dyn = ort.InferenceSession(str(onnx_graph(ring_model_dir)), providers=["CPUExecutionProvider"])
    sta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [d for d in sta.get_outputs()[0].shape] == [1, 2, 64, 96]
    np.testing.assert_allclose(sta.run(None, {"x": x})[0], dyn.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
