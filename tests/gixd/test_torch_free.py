"""The CPU runtime needs no PyTorch: the real frame, in a fresh process where PyTorch, onnx, safetensors and SciPy
cannot be imported (as if not installed), gives the published 12 rings with the default model.

The blocked modules are set to None in ``sys.modules`` before gixdrt is imported: ``import torch`` then raises
ImportError and ``importlib.util.find_spec("torch")`` returns None, exactly as on a machine without them.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

BLOCKED = ("torch", "onnx", "safetensors", "scipy")

SCRIPT = """
import json, sys
sys.modules.update({{name: None for name in {blocked!r}}})
from gixdrt.cli import main
code = main({argv!r})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
print("MODULES " + json.dumps({{"imported": heavy, "numba": "numba" in sys.modules}}))
sys.exit(code)
"""


def run_blocked(argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    code = SCRIPT.format(blocked=BLOCKED, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_blocking_works(tmp_path):
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.modules.update({{n: None for n in {BLOCKED!r}}}); "
                                                 "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "ModuleNotFoundError: import of torch halted" in proc.stderr


@pytest.mark.published
def test_real_frame_without_pytorch_gives_the_12_rings(published_assets, tmp_path):
    from gixdrt.geometry import load_config
    from gixdrt.testing import match_rings, published_ring_q

    out = tmp_path / "peaks.csv"
    proc = run_blocked(["detect", str(published_assets.frame), "--config", str(published_assets.config),
                        "--out", str(out), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend onnxruntime on cpu" in proc.stderr
    modules = json.loads(proc.stdout.split("MODULES ", 1)[1])
    assert modules["imported"] == []
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    q = np.array([float(r["q"]) for r in rows])
    config = load_config(published_assets.config)
    rings = match_rings(q, published_ring_q(config.geometry.q_max))
    assert rings["found"] == 12, rings


def test_a_model_without_graphs_says_what_to_install(tmp_path):
    """A published-format checkpoint needs exporting once: without PyTorch that is one clear line."""
    ckpt = tmp_path / "model.h5"
    ckpt.write_bytes(b"not really a checkpoint")
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((64, 128), np.float32))
    proc = run_blocked(["detect", str(image), "--input", "processed", "--model", str(ckpt), "--out",
                        str(tmp_path / "p.csv"), "--no-progress"], tmp_path)
    assert proc.returncode != 0
    assert "pip install 'gixdrt[torch]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.csv").exists()
