"""gixdrt's TensorRT plugin library (csrc/trt, gixdrt.engine.plugins).

Everywhere: where the library is looked for, why it cannot be used, and what load_trt_plugins, plugin_fields and
add_roi_align_layer ask of TensorRT, through a stub ``tensorrt`` module that records the calls. With TensorRT, a
GPU and CuPy (``needs_gpu``): a one-layer network with the plugin against the C++ CPU kernel.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from gixdrt.engine import plugins
from gixdrt.engine import trt as trt_engine
from gixdrt.engine.base import EngineUnavailableError
from gixdrt.engine.plugins import (
    ENV_VAR,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    add_roi_align_layer,
    load_trt_plugins,
    plugin_fields,
    plugin_library_path,
    plugin_status,
)

_ext = pytest.importorskip("gixdrt._ext", reason="gixdrt._ext is not built")


# --- a stub of the parts of the tensorrt module the helpers use -----------------------------------------------------
class FakePluginField:
    def __init__(self, name, data, type):
        self.name, self.data, self.type = name, data, type


class FakeCreator:
    def __init__(self):
        self.calls = []

    def create_plugin(self, name, fields, phase):
        self.calls.append((name, fields, phase))
        return ("plugin", name)


class FakeRegistry:
    def __init__(self, trt, handle, registers):
        self.trt, self.handle, self.registers = trt, handle, registers
        self.creator = None

    def load_library(self, path):
        self.trt.calls.append(("load_library", path))
        if self.handle is not None and self.registers:
            self.creator = FakeCreator()
        return self.handle

    def get_creator(self, name, version, namespace=""):
        self.trt.calls.append(("get_creator", name, version, namespace))
        if (name, version, namespace) == (PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE):
            return self.creator
        return None


class FakeLayer:
    name = None

    def __init__(self, inputs, shape_inputs, plugin):
        self.inputs, self.shape_inputs, self.plugin = inputs, shape_inputs, plugin


class FakeNetwork:
    def __init__(self):
        self.layers = []

    def add_plugin_v3(self, inputs, shape_inputs, plugin):
        self.layers.append(FakeLayer(inputs, shape_inputs, plugin))
        return self.layers[-1]


class FakeTrt:
    """Records every call: ``calls`` lists (what, args...) in order."""

    class PluginFieldType:
        INT32 = "INT32"
        FLOAT32 = "FLOAT32"

    class TensorRTPhase:
        BUILD = "BUILD"
        RUNTIME = "RUNTIME"

    PluginField = FakePluginField

    @staticmethod
    def PluginFieldCollection(fields):
        return ("collection", list(fields))

    def __init__(self, handle="HANDLE", registers=True):
        self.calls = []
        self.registry = FakeRegistry(self, handle, registers)

    def get_plugin_registry(self):
        self.calls.append(("get_plugin_registry",))
        return self.registry


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def fake_library(tmp_path, monkeypatch):
    """An (empty) file standing in for the library, named by the environment override."""
    lib = tmp_path / plugins.library_name()
    lib.write_bytes(b"")
    monkeypatch.setenv(ENV_VAR, str(lib))
    return lib


# --- build_info and where the library is ----------------------------------------------------------------------------
def test_build_info_records_whether_the_plugin_was_built(no_override):
    info = _ext.build_info()
    assert "trt_plugin" in info
    assert isinstance(info["trt_plugin"], bool)
    assert info["tensorrt_plugin"] is info["trt_plugin"]
    installed = any((d / plugins.library_name()).is_file() for d in plugins._package_dirs())
    assert info["trt_plugin"] is installed
    if not info["cuda"]:
        assert info["trt_plugin"] is False  # the plugin needs the CUDA kernel


@pytest.mark.skipif(bool(_ext.build_info().get("trt_plugin")), reason="this gixdrt was built with the TensorRT plugin")
def test_without_tensorrt_there_is_no_library_and_a_reason(no_override):
    info = _ext.build_info()
    assert info["trt_plugin"] is False
    assert plugin_library_path() is None
    why = plugin_status()
    assert isinstance(why, str)
    if info["cuda"]:
        assert why == "gixdrt was built without TensorRT (TensorRT_ROOT not set when building)"
    else:
        assert "without CUDA" in why


def test_library_is_found_in_the_package_folders(no_override, tmp_path, monkeypatch):
    empty, build = tmp_path / "src", tmp_path / "build"
    empty.mkdir()
    build.mkdir()
    monkeypatch.setattr(plugins, "_package_dirs", lambda: [empty, build])
    assert plugin_library_path() is None
    (build / plugins.library_name()).write_bytes(b"")
    assert plugin_library_path() == build / plugins.library_name()


def test_environment_override_wins_even_when_missing(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "libx.so"
    monkeypatch.setenv(ENV_VAR, str(missing))
    assert plugin_library_path() == missing
    assert plugin_status() == f"{ENV_VAR}={missing} does not exist"


def test_status_names_a_missing_gpu(fake_library, monkeypatch):
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: (False, "the CUDA driver reports no GPU"))
    assert plugin_status() == "no CUDA GPU (the CUDA driver reports no GPU)"


def test_status_names_a_missing_tensorrt(fake_library, monkeypatch):
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: (True, "1 CUDA device(s)"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        trt_engine.importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real_find_spec(name, *a)
    )
    assert plugin_status() == "TensorRT is not installed (pip install tensorrt)"


def test_importing_plugins_does_not_import_tensorrt():
    import subprocess
    import sys

    code = "import sys, gixdrt.engine.plugins; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- load_trt_plugins -----------------------------------------------------------------------------------------------
def test_load_calls_load_library_with_the_path(fake_library):
    trt = FakeTrt(handle="HANDLE-1")
    assert load_trt_plugins(trt) == "HANDLE-1"
    loads = [c for c in trt.calls if c[0] == "load_library"]
    assert loads == [("load_library", str(fake_library))]
    # the registration is checked before and after, by name, version and namespace
    lookups = [c for c in trt.calls if c[0] == "get_creator"]
    assert lookups == [("get_creator", PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)] * 2
    # a second call does not load again (TensorRT refuses to register a plugin twice) and gives the same handle
    assert load_trt_plugins(trt) == "HANDLE-1"
    assert [c for c in trt.calls if c[0] == "load_library"] == loads


def test_load_takes_an_explicit_path(tmp_path, no_override):
    lib = tmp_path / "custom.so"
    lib.write_bytes(b"")
    trt = FakeTrt()
    load_trt_plugins(trt, lib)
    assert ("load_library", str(lib)) in trt.calls


def test_load_raises_when_the_library_is_missing(tmp_path, monkeypatch):
    missing = tmp_path / "libgone.so"
    monkeypatch.setenv(ENV_VAR, str(missing))
    trt = FakeTrt()
    with pytest.raises(EngineUnavailableError, match=f"{missing}.* does not exist"):
        load_trt_plugins(trt)
    assert not [c for c in trt.calls if c[0] == "load_library"]


def test_load_raises_when_nothing_was_built(no_override, monkeypatch, tmp_path):
    monkeypatch.setattr(plugins, "_package_dirs", lambda: [tmp_path])
    trt = FakeTrt()
    with pytest.raises(EngineUnavailableError, match=plugins.library_name()) as info:
        load_trt_plugins(trt)
    assert str(tmp_path) in str(info.value) and ENV_VAR in str(info.value)
    assert trt.calls == []


def test_load_raises_naming_the_path_when_tensorrt_refuses(fake_library):
    trt = FakeTrt(handle=None)  # load_library returns None on failure
    with pytest.raises(EngineUnavailableError, match="load_library") as info:
        load_trt_plugins(trt)
    assert str(fake_library) in str(info.value)


def test_load_raises_when_the_library_registers_no_creator(fake_library):
    trt = FakeTrt(handle="HANDLE", registers=False)
    with pytest.raises(EngineUnavailableError, match=f"registered no {PLUGIN_NAMESPACE}::{PLUGIN_NAME}"):
        load_trt_plugins(trt)


def test_load_wraps_exceptions_from_tensorrt(fake_library):
    trt = FakeTrt()

    def boom(path):
        raise RuntimeError("libcudart.so.13: cannot open shared object file")

    trt.registry.load_library = boom
    with pytest.raises(EngineUnavailableError, match="cannot open shared object") as info:
        load_trt_plugins(trt)
    assert str(fake_library) in str(info.value)


# --- plugin_fields and add_roi_align_layer --------------------------------------------------------------------------
def _fields(collection):
    tag, fields = collection
    assert tag == "collection"
    return {f.name: f for f in fields}


def test_plugin_fields_names_types_and_values():
    fields = _fields(plugin_fields(FakeTrt(), (16, 12), (1 / 8, 1 / 4), sampling_ratio=2, aligned=True))
    assert list(fields) == ["out_h", "out_w", "scale_y", "scale_x", "sampling_ratio", "aligned"]
    expected = {
        "out_h": ("INT32", np.int32, 16),
        "out_w": ("INT32", np.int32, 12),
        "scale_y": ("FLOAT32", np.float32, 0.125),
        "scale_x": ("FLOAT32", np.float32, 0.25),
        "sampling_ratio": ("INT32", np.int32, 2),
        "aligned": ("INT32", np.int32, 1),
    }
    for name, (ftype, dtype, value) in expected.items():
        f = fields[name]
        assert f.type == ftype, name
        assert isinstance(f.data, np.ndarray) and f.data.dtype == dtype and f.data.shape == (1,), name
        assert f.data[0] == value, name


def test_plugin_fields_defaults_and_scalars():
    fields = _fields(plugin_fields(FakeTrt()))  # the published geometry
    assert [fields[n].data[0] for n in ("out_h", "out_w", "sampling_ratio", "aligned")] == [16, 16, -1, 0]
    assert fields["scale_y"].data[0] == np.float32(0.125) and fields["scale_x"].data[0] == np.float32(0.25)
    fields = _fields(plugin_fields(FakeTrt(), 7, 0.5, aligned=False))
    assert [fields[n].data[0] for n in ("out_h", "out_w")] == [7, 7]
    assert fields["scale_y"].data[0] == fields["scale_x"].data[0] == np.float32(0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out_size": (0, 4)}, "output size"),
        ({"out_size": (1, 2, 3)}, "out_size"),
        ({"scales": (0.0, 0.25)}, "finite and > 0"),
        ({"scales": (float("nan"), 0.25)}, "finite and > 0"),
    ],
)
def test_plugin_fields_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plugin_fields(FakeTrt(), **kwargs)


def test_add_roi_align_layer_uses_the_registered_creator(fake_library):
    trt = FakeTrt()
    load_trt_plugins(trt)
    network = FakeNetwork()
    layer = add_roi_align_layer(network, trt, "FEATURES", "ROIS", (8, 4), (0.5, 0.25), 3, True, name="pool")
    assert ("get_creator", PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) in trt.calls
    ((name, collection, phase),) = trt.registry.creator.calls
    assert name == "pool" and phase == "BUILD"
    fields = _fields(collection)
    assert [fields[n].data[0] for n in ("out_h", "out_w", "sampling_ratio", "aligned")] == [8, 4, 3, 1]
    assert network.layers == [layer]
    assert layer.inputs == ["FEATURES", "ROIS"] and layer.shape_inputs == [] and layer.plugin == ("plugin", "pool")
    assert layer.name == "pool"


def test_add_roi_align_layer_needs_the_library_loaded():
    with pytest.raises(EngineUnavailableError, match="load_trt_plugins"):
        add_roi_align_layer(FakeNetwork(), FakeTrt(), "F", "R")


# --- real TensorRT ----------------------------------------------------------------------------------------------------
@pytest.mark.needs_gpu
@pytest.mark.parametrize("aligned, sampling_ratio", [(False, -1), (True, 2)])
def test_plugin_layer_matches_the_cpu_kernel(aligned, sampling_ratio):
    trt = pytest.importorskip("tensorrt")
    cp = pytest.importorskip("cupy")
    why = plugin_status()
    if why:
        pytest.skip(why)
    from gixdrt.kernels.roi_align import roi_align

    rng = np.random.default_rng(7)
    n, c, h, w = 2, 3, 12, 20
    features = rng.standard_normal((n, c, h, w)).astype(np.float32)
    img_h, img_w = h * 8, w * 4  # the map is at (1/8, 1/4) of the input
    k = 9
    x0 = rng.uniform(-0.2 * img_w, 0.9 * img_w, k)
    y0 = rng.uniform(-0.2 * img_h, 0.9 * img_h, k)
    rois = np.c_[
        rng.integers(0, n, k), x0, y0, x0 + rng.uniform(1, 0.6 * img_w, k), y0 + rng.uniform(1, 0.6 * img_h, k)
    ].astype(np.float32)
    out_size, scale = (7, 5), (1 / 8, 1 / 4)
    expected = roi_align(features, rois, out_size, scale, sampling_ratio, aligned)

    logger = trt.Logger(trt.Logger.WARNING)
    load_trt_plugins(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    f_in = network.add_input("features", trt.float32, features.shape)
    r_in = network.add_input("rois", trt.float32, rois.shape)
    layer = add_roi_align_layer(network, trt, f_in, r_in, out_size, scale, sampling_ratio, aligned)
    pooled = layer.get_output(0)
    pooled.name = "pooled"
    network.mark_output(pooled)
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None, "TensorRT could not build the one-layer network"

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)  # createPlugin(RUNTIME) from the serialized fields
    assert engine is not None
    assert tuple(engine.get_tensor_shape("pooled")) == expected.shape
    context = engine.create_execution_context()
    d_features, d_rois = cp.asarray(features), cp.asarray(rois)
    d_out = cp.full(expected.shape, cp.nan, dtype=cp.float32)
    for name, arr in (("features", d_features), ("rois", d_rois), ("pooled", d_out)):
        assert context.set_tensor_address(name, int(arr.data.ptr))
    stream = cp.cuda.Stream(non_blocking=True)
    assert context.execute_async_v3(stream.ptr)
    stream.synchronize()
    np.testing.assert_allclose(cp.asnumpy(d_out), expected, atol=1e-5, rtol=1e-5)
