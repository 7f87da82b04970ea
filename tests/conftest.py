"""Shared fixtures and marks.

Marks:
- ``needs_gpu``: a real CUDA GPU with CuPy; skipped automatically where there is none.
- ``cudasim``: runs the Numba CUDA kernels under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1 is set for
  the whole test session in conftest before Numba is imported, unless a real GPU is present).
- ``published``: needs the published assets (downloaded once into GIXDRT_CACHE by gixdrt.io.assets).
"""
from __future__ import annotations

import os
import shutil

import pytest


def _real_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_GPU = _real_gpu()
if not HAS_GPU:
    # Numba's CUDA simulator runs the CUDA kernels' Python bodies on the CPU: slow, so tests keep
    # images small (≤ 64×128), but it exercises the same kernel code on every machine.
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_gpu: needs a real CUDA GPU and CuPy")
    config.addinivalue_line("markers", "cudasim: runs CUDA kernels (simulator without a GPU)")
    config.addinivalue_line("markers", "published: needs the published gixi assets (downloaded on first use)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU with CuPy on this machine")
    for item in items:
        if "needs_gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def published_assets():
    """The published frame, config and checkpoints (downloaded once into GIXDRT_CACHE, sha256-verified)."""
    from gixdrt.io import fetch_published

    return fetch_published(quiet=True)


@pytest.fixture(scope="session")
def published_config(published_assets):
    from gixdrt.geometry import load_config

    return load_config(published_assets.config)


@pytest.fixture(scope="session")
def published_frame(published_assets):
    from gixdrt.io import read_frame

    frame = read_frame(published_assets.frame)
    frame.setflags(write=False)
    return frame


@pytest.fixture(scope="module")
def published_model(published_assets):
    """The published default checkpoint as a GixdDetector (fp32, CPU), one per test module."""
    from gixdrt.model import load_published

    return load_published(published_assets.default_checkpoint)


@pytest.fixture(scope="module")
def real_image(published_frame, published_config):
    """The real frame's contrast image, float32[512, 1024] in [0, 1]: the published detector's input."""
    import numpy as np

    from gixdrt.gixd.preprocess import Preprocessor

    pre = Preprocessor(published_config)
    return np.asarray(pre.contrast(pre.polar(published_frame)), dtype=np.float32)


@pytest.fixture(scope="session")
def small_config(tmp_path_factory):
    """Path of a small geometry config: a 60×80 detector → 32×64 polar images (fast CLI and pipeline tests)."""
    import yaml

    cfg = {
        "q_space": dict(size_x=80, size_y=60, pixel_size=0.2, distance=100, wavelength=1.0, incidence_angle=0.5,
                        y0=10, z0=8, q_xy_max=2.0, q_z_max=2.0, flip_y=True, flip_x=False),
        "polar_config": {"algorithm": 1, "angular_size": 32, "q_size": 64},
        "contrast": {"coef": 5000.0, "limit": 2000.0, "log": True, "disable": False},
    }
    path = tmp_path_factory.mktemp("small-config") / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
