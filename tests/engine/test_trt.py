"""TensorRT engines: the builder's paths for TensorRT 10 and 11, the sidecar and its checks, ``gixdrt build``,
and the clear errors where TensorRT cannot run.

TensorRT is not needed: a fake ``tensorrt`` module (the documented Python API surface that
:func:`gixdrt.engine.trt.build_engine` uses, recording every call) is handed to the builder by monkeypatching
:func:`gixdrt.engine.trt.require_tensorrt`. The one real build (exported head graph → engine → run, compared
with ONNX Runtime) needs a GPU and TensorRT and is skipped elsewhere.
"""
from __future__ import annotations

import enum
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import gixdrt.engine.trt as trt_mod
from gixdrt.cli import main
from gixdrt.engine.base import EngineUnavailableError
from gixdrt.engine.trt import (
    EngineBuildError,
    EngineMismatchError,
    TensorRTRunner,
    build_engine,
    check_sidecar,
    file_sha256,
    profile_shapes,
    read_sidecar,
    sidecar_path,
    tensorrt_status,
)

GPU = {"name": "NVIDIA Test GPU", "compute_capability": "9.0", "index": 0}


# -------------------------------------------------------------------------------------------------
# A fake tensorrt module: what build_engine calls, recorded
# -------------------------------------------------------------------------------------------------
class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3


class Tensor:
    def __init__(self, name, shape, dtype=DataType.FLOAT):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class ParserError:
    def __init__(self, node, name, op, desc):
        self._node, self._name, self._op, self._desc = node, name, op, desc

    def node(self):
        return self._node

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def desc(self):
        return self._desc


def fake_tensorrt(version="10.9.0.34", *, inputs=(("x", (2, 3)),), outputs=(("y", (2, 3)),), parse_errors=(),
                  plan=b"fake engine bytes"):
    """A stand-in for ``tensorrt`` → (module, record). ``record`` collects what the builder did, in order."""
    record = types.SimpleNamespace(events=[], flags_set=[], flags_cleared=[], network_flags=None, profile={},
                                   pool=None, parsed=None)
    major = int(version.split(".")[0])

    class ILogger:
        def __init__(self):
            pass

    class Network:
        def __init__(self, flags):
            self.tensors_in, self.tensors_out = [], []

        num_inputs = property(lambda self: len(self.tensors_in))
        num_outputs = property(lambda self: len(self.tensors_out))

        def get_input(self, i):
            return self.tensors_in[i]

        def get_output(self, i):
            return self.tensors_out[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, list(parse_errors)

        def parse(self, data, path=None):
            record.events.append("parse")
            record.parsed = (bytes(data), path)
            if self.errors:
                return False
            self.network.tensors_in = [Tensor(n, s) for n, s in inputs]
            self.network.tensors_out = [Tensor(n, s) for n, s in outputs]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return ParserError(*self.errors[i])

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            record.profile[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Cache:
        def serialize(self):
            return b"timing cache"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            record.pool = (pool, size)

        def set_flag(self, flag):
            record.flags_set.append(flag)

        def clear_flag(self, flag):
            record.flags_cleared.append(flag)

        def add_optimization_profile(self, profile):
            record.events.append("profile")
            return 0

        def create_timing_cache(self, blob):
            record.timing_cache_in = bytes(blob)
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return Cache()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            record.network_flags = flags
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record.events.append("build")
            return plan

    flag_names = ["TF32"] if major >= 11 else ["FP16", "TF32"]  # TensorRT 11 removed BuilderFlag.FP16
    trt = types.SimpleNamespace(
        __version__=version,
        ILogger=ILogger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        NetworkDefinitionCreationFlag=enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0}),
        BuilderFlag=enum.Enum("BuilderFlag", flag_names),
        MemoryPoolType=enum.Enum("MemoryPoolType", ["WORKSPACE"]),
        DataType=DataType,
        init_libnvinfer_plugins=lambda logger, namespace: record.events.append("trt-plugins"),
    )
    return trt, record


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake tensorrt for build_engine: ``use_fake(version, ...)`` → record."""

    def install(*args, **kwargs):
        trt, record = fake_tensorrt(*args, **kwargs)
        monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: trt)
        monkeypatch.setattr(trt_mod, "gpu_info", lambda index=None: dict(GPU))
        return record

    return install


def _write_graph(path, *, fp16=False, shape=(2, 3)):
    """A tiny static graph x → Relu → y (fp16: Cast → Relu → Cast, fp16 inside, fp32 I/O)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    if fp16:
        nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16), helper.make_node("Relu", ["xh"], ["yh"]),
                 helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)]
    else:
        nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fp32_graph(tmp_path):
    return _write_graph(tmp_path / "tiny.onnx")


@pytest.fixture
def fp16_graph(tmp_path):
    return _write_graph(tmp_path / "tiny-fp16.onnx", fp16=True)


# -------------------------------------------------------------------------------------------------
# Builder paths
# -------------------------------------------------------------------------------------------------
def test_trt10_fp16_from_fp32_graph_sets_the_fp16_flag(use_fake, fp32_graph, tmp_path):
    rec = use_fake("10.9.0.34")
    build_engine(fp32_graph, tmp_path / "m.engine", precision="fp16", plugins=False)
    assert [f.name for f in rec.flags_set] == ["FP16"]
    assert rec.network_flags == 0  # weakly typed: TensorRT chooses fp16 kernels
    assert rec.flags_cleared == []  # TF32 stays as TensorRT's default in an fp16 build
    assert read_sidecar(tmp_path / "m.engine")["precision"] == "fp16"


def test_trt10_fp32_build_has_no_fp16_and_no_tf32(use_fake, fp32_graph, tmp_path):
    rec = use_fake("10.9.0.34")
    build_engine(fp32_graph, tmp_path / "m.engine", precision="fp32", workspace_gib=2, plugins=False)
    assert rec.flags_set == [] and [f.name for f in rec.flags_cleared] == ["TF32"]
    assert rec.network_flags == 0
    assert rec.pool[0].name == "WORKSPACE" and rec.pool[1] == 2 << 30


def test_trt10_fp16_graph_is_built_strongly_typed(use_fake, fp16_graph, tmp_path):
    rec = use_fake("10.9.0.34")
    build_engine(fp16_graph, tmp_path / "m.engine", precision="fp16", plugins=False)
    assert rec.network_flags == 1 << 0  # STRONGLY_TYPED
    assert rec.flags_set == []  # precision flags are not allowed (nor needed) in a strongly typed network
    side = read_sidecar(tmp_path / "m.engine")
    assert side["strongly_typed"] and side["onnx"]["precision"] == "fp16"


def test_trt11_creates_a_strongly_typed_network(use_fake, fp16_graph, fp32_graph, tmp_path):
    rec = use_fake("11.3.0.1")
    build_engine(fp16_graph, tmp_path / "h.engine", precision="fp16", plugins=False)
    assert rec.network_flags == 1 << 0 and rec.flags_set == []
    rec = use_fake("11.3.0.1")
    build_engine(fp32_graph, tmp_path / "f.engine", precision="fp32", plugins=False)
    assert rec.network_flags == 1 << 0 and rec.flags_set == []
    assert read_sidecar(tmp_path / "f.engine")["strongly_typed"] is True


def test_trt11_refuses_fp16_from_an_fp32_graph(use_fake, fp32_graph, tmp_path):
    rec = use_fake("11.3.0.1")
    with pytest.raises(EngineBuildError, match=r"strongly typed.*fp32.*export an fp16 graph"):
        build_engine(fp32_graph, tmp_path / "m.engine", precision="fp16", plugins=False)
    assert "build" not in rec.events and not (tmp_path / "m.engine").exists()


def test_fp16_graph_refuses_fp32_precision(use_fake, fp16_graph, tmp_path):
    use_fake("10.9.0.34")
    with pytest.raises(EngineBuildError, match="graph is fp16"):
        build_engine(fp16_graph, tmp_path / "m.engine", precision="fp32", plugins=False)


def test_old_tensorrt_is_refused(use_fake, fp32_graph, tmp_path):
    use_fake("8.6.1")
    with pytest.raises(EngineUnavailableError, match="TensorRT 8.6.1 is too old"):
        build_engine(fp32_graph, tmp_path / "m.engine", plugins=False)


def test_profile_gets_the_static_shapes(use_fake, fp32_graph, tmp_path):
    rec = use_fake(inputs=[("images", (2, 1, 128, 256)), ("extra", (7,))])
    build_engine(fp32_graph, tmp_path / "m.engine", plugins=False)
    assert rec.profile == {"images": ((2, 1, 128, 256),) * 3, "extra": ((7,),) * 3}
    assert rec.events.index("profile") < rec.events.index("build")
    side = read_sidecar(tmp_path / "m.engine")
    assert side["batch"] == {"min": 2, "opt": 2, "max": 2}
    assert side["profile"]["images"] == {"min": [2, 1, 128, 256], "opt": [2, 1, 128, 256], "max": [2, 1, 128, 256]}


def test_profile_of_a_dynamic_batch_and_a_mismatching_batch():
    assert profile_shapes({"x": (-1, 3, 8)}, (1, 4, 8)) == {"x": ((1, 3, 8), (4, 3, 8), (8, 3, 8))}
    assert profile_shapes({"x": (-1, 3)}, 2) == {"x": ((2, 3),) * 3}
    assert profile_shapes({"x": (2, 3)}, 2) == {"x": ((2, 3),) * 3}
    with pytest.raises(EngineBuildError, match="static batch of 2.*export with batch=4"):
        profile_shapes({"x": (2, 3)}, 4, source="g.onnx")
    with pytest.raises(EngineBuildError, match="dynamic batch dimension"):
        profile_shapes({"x": (-1, 3)}, None)
    with pytest.raises(EngineBuildError, match="dynamic dimensions"):
        profile_shapes({"x": (2, -1)}, None)
    with pytest.raises(ValueError, match="min ≤ opt ≤ max"):
        profile_shapes({"x": (-1, 3)}, (4, 2, 8))


def test_parser_errors_are_all_reported(use_fake, fp32_graph, tmp_path):
    rec = use_fake(parse_errors=[(3, "conv_3", "Conv", "weights must be constant"),
                                 (7, "roi_7", "RoiAlign", "unsupported mode"),
                                 (-1, "", "", "graph has no outputs")])
    with pytest.raises(EngineBuildError) as info:
        build_engine(fp32_graph, tmp_path / "m.engine", plugins=False)
    msg = str(info.value)
    assert "3 error(s)" in msg and str(fp32_graph) in msg
    assert "node 3 'conv_3' (Conv): weights must be constant" in msg
    assert "node 7 'roi_7' (RoiAlign): unsupported mode" in msg
    assert "graph has no outputs" in msg
    assert "build" not in rec.events and not (tmp_path / "m.engine").exists()


def test_plugins_are_registered_before_parsing(use_fake, fp32_graph, tmp_path, monkeypatch):
    rec = use_fake()
    plugins = types.ModuleType("gixdrt.engine.plugins")
    plugins.load_trt_plugins = lambda trt: rec.events.append("gixdrt-plugins") or "libgixdrt_trt.so"
    monkeypatch.setitem(sys.modules, "gixdrt.engine.plugins", plugins)
    build_engine(fp32_graph, tmp_path / "m.engine")
    assert rec.events.index("gixdrt-plugins") < rec.events.index("parse")
    assert rec.events.index("trt-plugins") < rec.events.index("parse")
    assert read_sidecar(tmp_path / "m.engine")["plugins"] == "libgixdrt_trt.so"


def test_a_failing_plugin_library_does_not_stop_the_build(use_fake, fp32_graph, tmp_path, monkeypatch):
    rec = use_fake()
    plugins = types.ModuleType("gixdrt.engine.plugins")

    def broken(trt):
        raise OSError("libgixdrt_trt.so: cannot open shared object file")

    plugins.load_trt_plugins = broken
    monkeypatch.setitem(sys.modules, "gixdrt.engine.plugins", plugins)
    build_engine(fp32_graph, tmp_path / "m.engine")
    assert "build" in rec.events and read_sidecar(tmp_path / "m.engine")["plugins"] is None

    def absent(trt):
        raise EngineUnavailableError("TensorRT plugins: gixdrt was built without TensorRT")

    plugins.load_trt_plugins = absent
    build_engine(fp32_graph, tmp_path / "m2.engine")
    assert read_sidecar(tmp_path / "m2.engine")["plugins"] is None


def test_a_plugin_handle_is_recorded_as_the_library_path(use_fake, fp32_graph, tmp_path, monkeypatch):
    use_fake()
    plugins = types.ModuleType("gixdrt.engine.plugins")
    plugins.load_trt_plugins = lambda trt: object()  # TensorRT's handle
    plugins.plugin_library_path = lambda: tmp_path / "libgixdrt_trt.so"
    monkeypatch.setitem(sys.modules, "gixdrt.engine.plugins", plugins)
    build_engine(fp32_graph, tmp_path / "m.engine")
    assert read_sidecar(tmp_path / "m.engine")["plugins"] == str(tmp_path / "libgixdrt_trt.so")


def test_engine_sidecar_and_timing_cache_are_written(use_fake, fp32_graph, tmp_path):
    rec = use_fake("10.9.0.34", plan=b"ENGINE")
    cache = tmp_path / "timing.cache"
    out = build_engine(fp32_graph, tmp_path / "sub" / "m.engine", timing_cache=cache, plugins=False)
    assert out == tmp_path / "sub" / "m.engine" and out.read_bytes() == b"ENGINE"
    assert rec.parsed == (fp32_graph.read_bytes(), str(fp32_graph))
    assert sidecar_path(out) == tmp_path / "sub" / "m.engine.json"
    side = json.loads(sidecar_path(out).read_text())
    assert side["onnx"]["sha256"] == file_sha256(fp32_graph)
    assert side["engine_sha256"] == file_sha256(out)
    assert side["tensorrt_version"] == "10.9.0.34" and side["gpu"] == GPU
    assert side["inputs"] == [{"name": "x", "shape": [2, 3], "dtype": "float32"}]
    assert side["outputs"] == [{"name": "y", "shape": [2, 3], "dtype": "float32"}]
    assert side["gixdrt_version"] and side["created"].endswith("+00:00")
    assert rec.timing_cache_in == b"" and cache.read_bytes() == b"timing cache"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.engine", "m.engine.json"]  # no temporaries left


def test_build_argument_checks(use_fake, fp32_graph, tmp_path):
    use_fake()
    with pytest.raises(ValueError, match="unknown precision"):
        build_engine(fp32_graph, tmp_path / "m.engine", precision="int8")
    with pytest.raises(ValueError, match="batch"):
        build_engine(fp32_graph, tmp_path / "m.engine", batch=(1, 2))
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")


# -------------------------------------------------------------------------------------------------
# Sidecar checks
# -------------------------------------------------------------------------------------------------
@pytest.fixture
def built(use_fake, fp32_graph, tmp_path):
    use_fake("10.9.0.34")
    return build_engine(fp32_graph, tmp_path / "m.engine", plugins=False)


def test_check_sidecar_accepts_the_same_setup(built, fp32_graph):
    side = check_sidecar(built, onnx_path=fp32_graph, trt_version="10.9.0.34", gpu=GPU)
    assert side["precision"] == "fp32"


def test_check_sidecar_refuses_another_tensorrt_version(built):
    with pytest.raises(EngineMismatchError, match=r"m\.engine: built with TensorRT 10\.9\.0\.34, this is TensorRT 10\.13\.0") as info:
        check_sidecar(built, trt_version="10.13.0", gpu=GPU)
    assert info.value.engine_path == str(built) and "gixdrt build" in str(info.value)


def test_check_sidecar_refuses_another_gpu(built):
    other = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    with pytest.raises(EngineMismatchError, match=r"m\.engine: built for GPU NVIDIA Test GPU \(compute capability 9\.0\), "
                                                  r"this GPU is NVIDIA A100"):
        check_sidecar(built, trt_version="10.9.0.34", gpu=other)


def test_check_sidecar_refuses_another_onnx_graph(built, tmp_path):
    other = _write_graph(tmp_path / "other.onnx", shape=(4, 3))
    with pytest.raises(EngineMismatchError, match=r"m\.engine: built from another ONNX graph .*other\.onnx"):
        check_sidecar(built, onnx_path=other, trt_version="10.9.0.34", gpu=GPU)


def test_check_sidecar_names_every_difference(built, tmp_path):
    other = _write_graph(tmp_path / "other.onnx", shape=(4, 3))
    with pytest.raises(EngineMismatchError) as info:
        check_sidecar(built, onnx_path=other, trt_version="11.0.0", gpu={"name": "X", "compute_capability": "8.6"})
    assert len(info.value.differences) == 3


def test_check_sidecar_refuses_an_engine_replaced_after_the_build(built):
    built.write_bytes(b"another engine")
    with pytest.raises(EngineMismatchError, match="does not match its sidecar"):
        check_sidecar(built, trt_version="10.9.0.34", gpu=GPU)


def test_an_engine_without_sidecar_is_refused(tmp_path):
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(EngineMismatchError, match=r"lonely\.engine: no sidecar lonely\.engine\.json.*gixdrt build .*--out"):
        check_sidecar(engine, trt_version="10.9.0.34", gpu=GPU)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(EngineMismatchError, match="unreadable"):
        check_sidecar(engine, trt_version="10.9.0.34", gpu=GPU)


def test_runner_refuses_an_engine_without_sidecar_before_tensorrt_loads_it(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"engine")
    trt, _ = fake_tensorrt()
    trt.Runtime = lambda logger: pytest.fail("the engine must not be deserialized")
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_mod, "_torch_cuda", lambda: torch)
    monkeypatch.setattr(trt_mod, "gpu_info", lambda index=None: dict(GPU))
    runner = TensorRTRunner(engine)
    with pytest.raises(EngineMismatchError, match="no sidecar"):
        runner.activate()
    assert not runner.is_active


# -------------------------------------------------------------------------------------------------
# Where TensorRT cannot run (this machine, usually)
# -------------------------------------------------------------------------------------------------
def test_runner_device_argument():
    with pytest.raises(ValueError, match="CUDA GPU"):
        TensorRTRunner("m.engine", device="cpu")
    assert TensorRTRunner("m.engine", device="cuda:1")._index == 1


def test_runner_activate_says_why_it_cannot_run(tmp_path):
    why = tensorrt_status()
    if why is None:
        pytest.skip("TensorRT can run here")
    runner = TensorRTRunner(tmp_path / "m.engine")
    with pytest.raises(EngineUnavailableError) as info:
        runner.activate()
    assert why in str(info.value) and not runner.is_active


def test_build_engine_says_why_it_cannot_run(fp32_graph, tmp_path):
    why = tensorrt_status()
    if why is None:
        pytest.skip("TensorRT can run here")
    with pytest.raises(EngineUnavailableError, match="TensorRT") as info:
        build_engine(fp32_graph, tmp_path / "m.engine")
    assert why in str(info.value) and not (tmp_path / "m.engine").exists()


def test_detector_tensorrt_backend_says_why():
    from gixdrt.engine import backend_status
    from gixdrt.gixd import PeakDetector

    why = backend_status()["tensorrt", "cuda"]
    if why is None:
        pytest.skip("the TensorRT backend can run here")
    with pytest.raises(EngineUnavailableError, match="backend 'tensorrt' on cuda is not available here") as info:
        PeakDetector(backend="tensorrt")
    assert why in str(info.value)


def test_runner_builds_a_missing_engine_and_rebuilds_a_mismatching_one(tmp_path, monkeypatch, fp32_graph):
    """build=: the engine is built from the graph when its file is missing, and rebuilt once when its sidecar
    does not fit this machine; without build= such an engine is refused."""
    torch = pytest.importorskip("torch")
    trt, _ = fake_tensorrt()
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_mod, "_torch_cuda", lambda: torch)
    monkeypatch.setattr(trt_mod, "gpu_info", lambda index=None: dict(GPU))
    built, opened = [], []

    def fake_build(onnx_path, engine_path, **kw):
        built.append((Path(engine_path).name, kw["precision"]))
        Path(engine_path).parent.mkdir(parents=True, exist_ok=True)  # as build_engine's atomic write does
        Path(engine_path).write_bytes(b"engine")

    checks = {"refuse": 0}

    def fake_check(engine_path, **kw):
        if checks["refuse"]:
            checks["refuse"] -= 1
            raise EngineMismatchError(engine_path, ["built with TensorRT 10.0, this is 10.9"])
        return {"format": "gixdrt.tensorrt-engine"}

    monkeypatch.setattr(trt_mod, "build_engine", fake_build)
    monkeypatch.setattr(trt_mod, "check_sidecar", fake_check)
    monkeypatch.setattr(TensorRTRunner, "_open", lambda self, trt, torch, dev, path: opened.append(path))
    import contextlib

    monkeypatch.setattr(torch.cuda, "device", lambda dev: contextlib.nullcontext())  # no GPU in this test
    engine = tmp_path / "cache" / "dense.engine"
    build = {"precision": "fp16", "workspace_gib": 2.0}
    TensorRTRunner(engine, onnx_path=fp32_graph, build=build).activate()
    assert built == [("dense.engine", "fp16")] and opened == [engine]
    TensorRTRunner(engine, onnx_path=fp32_graph, build=build).activate()  # cached: no new build
    assert len(built) == 1
    checks["refuse"] = 1  # the cached engine does not fit this machine: rebuilt once
    TensorRTRunner(engine, onnx_path=fp32_graph, build=build).activate()
    assert len(built) == 2 and len(opened) == 3
    checks["refuse"] = 1
    with pytest.raises(EngineMismatchError, match="10.0"):
        TensorRTRunner(engine, onnx_path=fp32_graph).activate()  # no build=: refused, as before
    with pytest.raises(ValueError, match="onnx_path"):
        TensorRTRunner(engine, build=build)


def test_cli_build_without_tensorrt_exits_2(fp32_graph, tmp_path, capsys):
    why = tensorrt_status()
    if why is None:
        pytest.skip("TensorRT can run here")
    code = main(["build", str(fp32_graph), "--precision", "fp16", "--out", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gixdrt build: error:") and why in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.engine").exists()


def test_cli_build_reports_the_status_reason(fp32_graph, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trt_mod, "tensorrt_status", lambda: "TensorRT is not installed (pip install tensorrt)")
    code = main(["build", str(fp32_graph), "--out", str(tmp_path / "m.engine"), "--batch", "1:2:4"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "gixdrt build: error: TensorRT cannot run here: TensorRT is not installed (pip install tensorrt)")


def test_cli_build_with_fake_tensorrt(use_fake, fp32_graph, tmp_path, capsys, monkeypatch):
    use_fake("10.9.0.34")
    monkeypatch.setattr(trt_mod, "tensorrt_status", lambda: None)
    out = tmp_path / "m.engine"
    assert main(["build", str(fp32_graph), "--out", str(out), "--no-progress", "--no-plugins"]) == 0
    printed = capsys.readouterr().out
    assert f"built {out} (fp32" in printed and "NVIDIA Test GPU sm 9.0" in printed
    assert read_sidecar(out)["onnx"]["sha256"] == file_sha256(fp32_graph)
    # a graph with a static batch of 2 cannot take another batch profile: a clear error, exit 1
    assert main(["build", str(fp32_graph), "--out", str(out), "--batch", "4", "--no-plugins"]) == 2
    assert "static batch of 2" in capsys.readouterr().err


def test_cli_build_argument_errors(tmp_path, capsys):
    assert main(["build", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "m.engine")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err
    assert main(["build", "m.onnx", "--out", "m.engine", "--batch", "1:2"]) == 2
    assert "--batch: '1:2': expected N or MIN:OPT:MAX" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------
# The real thing (GPU and TensorRT)
# -------------------------------------------------------------------------------------------------
@pytest.mark.needs_gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_head_engine_matches_onnxruntime(tmp_path, cuda_graph):
    pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    if tensorrt_status() is not None or not torch.cuda.is_available():
        pytest.skip(f"TensorRT cannot run here: {tensorrt_status() or 'PyTorch sees no CUDA GPU'}")
    from gixdrt.engine import OnnxRuntimeRunner
    from gixdrt.export import export_head
    from gixdrt.model import GixdDetector

    rois = 16
    torch.manual_seed(3)
    model = GixdDetector()
    graph = export_head(model, tmp_path / "head.onnx", rois=rois)
    engine = build_engine(graph, tmp_path / "head.engine", precision="fp32", workspace_gib=1)
    side = read_sidecar(engine)
    assert side["inputs"] == [{"name": "roi_features", "shape": [rois, 64, 16, 16], "dtype": "float32"}]
    torch.manual_seed(4)
    feats = torch.randn(rois, 64, 16, 16)
    with OnnxRuntimeRunner(graph, threads=1) as ref_runner:
        ref = ref_runner.infer({"roi_features": feats.numpy()})
    with TensorRTRunner(engine, onnx_path=graph, cuda_graph=cuda_graph) as runner:
        assert runner.input_metadata()["roi_features"].shape == (rois, 64, 16, 16)
        for _ in range(3):  # warm-up, capture, replay
            out = runner.infer({"roi_features": feats.cuda()})
            for name in ("logits", "deltas"):
                got = out[name].cpu().numpy()
                scale = max(float(np.abs(ref[name]).max()), 1e-12)
                assert float(np.abs(got - ref[name]).max()) / scale < 1e-4, name
        first = {k: v.clone() for k, v in out.items()}  # the runner overwrites its outputs on the next call
        again = runner.infer({"roi_features": feats.numpy()})  # NumPy input: uploaded
        for name in ("logits", "deltas"):
            np.testing.assert_array_equal(again[name].cpu().numpy(), first[name].cpu().numpy())
        if cuda_graph:
            assert runner.graph_captured
