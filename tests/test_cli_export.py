"""``gixdrt export``: files, the per-graph report, fp16 weights, the --graph both naming rule, errors.

A randomly initialised model saved in gixdrt's format and a small shape (64 × 128), so each export takes a
second or two and no assets are needed.
"""
from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from gixdrt.cli import main
from gixdrt.export import graph_metadata


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from gixdrt.model import GixdDetector, save_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("export-model") / "random-model"
    save_model(GixdDetector(), d)
    return d


def float_kinds(path) -> set[str]:
    """Element types of the graph's floating-point initializers."""
    m = onnx.load(str(path))
    kinds = {onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
    return kinds & {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"}


def input_shape(path) -> list[int]:
    m = onnx.load(str(path), load_external_data=False)
    return [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]


def test_export_dense_writes_checked_graph(model_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "model.onnx"
    assert main(["export", "--model", str(model_dir), "--shape", "64x128", "--batch", "2", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith(f"{out}: dense graph (batch 2, 64×128), fp32")
    assert "opset 17" in line and "static shapes OK" in line and "Conv×" in line and " MB" in line
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]
    assert input_shape(out) == [2, 1, 64, 128]
    meta = graph_metadata(out)
    assert meta["gixdrt.graph"] == "dense" and meta["gixdrt.batch"] == "2" and meta["gixdrt.image_shape"] == "64x128"
    assert float_kinds(out) == {"FLOAT"}


def test_export_both_fp16(model_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    args = ["export", "--model", str(model_dir), "--shape", "64x128", "--batch", "2", "--graph", "both",
            "--precision", "fp16", "--out", str(out)]
    assert main(args) == 0
    dense, head = tmp_path / "model.dense.onnx", tmp_path / "model.head.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dense.onnx", "model.head.onnx"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{dense}: dense graph") and lines[1].startswith(f"{head}: head graph (2000 RoIs)")
    assert all("fp16" in ln and "static shapes OK" in ln for ln in lines)
    for path in (dense, head):
        assert float_kinds(path) == {"FLOAT16"}, path  # every float weight is half
        assert graph_metadata(path)["gixdrt.precision"] == "fp16"
        m = onnx.load(str(path), load_external_data=False)
        assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # the boundary stays fp32
    assert input_shape(head) == [2000, 64, 16, 16]  # 1000 RoIs per image × batch 2


def test_export_head_rois_and_no_check(model_dir, tmp_path, capsys):
    out = tmp_path / "head.onnx"
    assert main(["export", "--model", str(model_dir), "--graph", "head", "--rois", "50", "--no-check",
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: head graph (50 RoIs), fp32") and "not checked" in line
    assert input_shape(out) == [50, 64, 16, 16]


@pytest.mark.parametrize(
    "shape, expect",
    [
        ("64by128", "--shape: '64by128': expected HxW"),
        ("64x128x2", "--shape: '64x128x2': expected HxW"),
        ("0x128", "--shape: '0x128': height and width must be in [1, 16384]"),
        ("60x128", "--shape 60x128: this model needs H a multiple of 32"),
    ],
)
def test_export_bad_shape(model_dir, tmp_path, capsys, shape, expect):
    out = tmp_path / "model.onnx"
    assert main(["export", "--model", str(model_dir), "--shape", shape, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gixdrt export: error:") and expect in err, err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_bad_out_suffix(model_dir, tmp_path, capsys):
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "model.trt")]) == 2
    assert "must name an .onnx file" in capsys.readouterr().err


def test_export_failed_check_is_one_line_naming_the_file(model_dir, tmp_path, capsys, monkeypatch):
    from gixdrt.export import check

    def failing(path, **kwargs):
        report = check.GraphReport(source=str(path), opset=17, ir_version=10, ops=Counter(Foo=1), inputs={},
                                   outputs={}, problems=["Foo 'x': not supported by TensorRT's ONNX parser",
                                                         "y: shape [None] is not static"])
        raise check.GraphCheckError(report)

    monkeypatch.setattr(check, "check_graph", failing)
    out = tmp_path / "head.onnx"
    assert main(["export", "--model", str(model_dir), "--graph", "head", "--rois", "8", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(out) in err and "2 problem(s)" in err and "Foo 'x': not supported" in err
    assert captured.out == ""
