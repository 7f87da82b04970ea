"""Import hygiene: gixdrt and its host kernels (the compiled cpu backend) run without Numba; without the
compiled extension the kernels fall back to the NumPy reference."""
from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_NUMBA = textwrap.dedent(
    """
    import sys

    class _BlockNumba:
        def find_spec(self, name, path=None, target=None):
            if name == "numba" or name.startswith("numba."):
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, _BlockNumba())
    """
)

WITHOUT_NUMBA = BLOCK_NUMBA + textwrap.dedent(
    """
    import numpy as np

    import gixdrt
    import gixdrt.kernels as K
    from gixdrt.geometry import Geometry, polar_map
    from gixdrt.kernels import registry

    assert "numba" not in sys.modules
    # the cpu backend is the compiled extension: it needs no Numba
    assert registry.available("polar_remap")["cpu"] is None

    g = Geometry(size_x=16, size_y=12, pixel_size=12.8, distance=809.0, wavelength=0.6888,
                 incidence_angle=0.5, y0=4.0, z0=2.0, q_xy_max=2.7, q_z_max=2.7, n_phi=8, n_q=16, flip_y=True)
    pm = polar_map(g)
    frame = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    name, _ = registry.resolve("polar_remap", None, frame)
    assert name == "cpu", name
    out = K.polar_remap(frame, pm)
    ref = K.polar_remap(frame, pm, impl="reference")
    assert out.shape == (8, 16) and out.dtype == np.float32
    assert np.array_equal(out, ref) and np.abs(out).max() > 0
    assert np.array_equal(K.contrast(out), K.contrast(out, impl="reference"))
    assert np.array_equal(K.clahe(frame.astype(np.uint16), 2.0, (2, 2)),
                          K.clahe(frame.astype(np.uint16), 2.0, (2, 2), impl="reference"))
    boxes = np.array([[[0, 0, 4, 4], [1, 1, 5, 5], [8, 8, 9, 9]]], np.float32)
    keep, count = K.nms_fixed(boxes, np.array([[0.9, 0.8, 0.7]], np.float32), np.array([3], np.int32), 0.3, 5)
    assert keep[0, :count[0]].tolist() == [0, 2], keep
    assert "numba" not in sys.modules
    print("OK", gixdrt.__version__)
    """
)

BLOCK_EXT = textwrap.dedent(
    """
    import sys

    class _BlockExt:
        def find_spec(self, name, path=None, target=None):
            if name == "gixdrt._ext":
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, _BlockExt())
    """
)

WITHOUT_EXT = BLOCK_EXT + textwrap.dedent(
    """
    import numpy as np

    import gixdrt.kernels as K
    from gixdrt.geometry import Geometry, polar_map
    from gixdrt.kernels import registry

    reason = registry.available("polar_remap")["cpu"]
    assert reason and "gixdrt._ext" in reason, reason
    g = Geometry(size_x=16, size_y=12, pixel_size=12.8, distance=809.0, wavelength=0.6888,
                 incidence_angle=0.5, y0=4.0, z0=2.0, q_xy_max=2.7, q_z_max=2.7, n_phi=8, n_q=16, flip_y=True)
    pm = polar_map(g)
    frame = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    name, _ = registry.resolve("polar_remap", None, frame)
    assert name == "reference", name
    assert np.array_equal(K.polar_remap(frame, pm), K.polar_remap(frame, pm, impl="reference"))
    try:
        K.polar_remap(frame, pm, impl="cpu")
    except registry.BackendUnavailableError as exc:
        assert "gixdrt._ext" in str(exc)
    else:
        raise AssertionError("impl='cpu' ran without gixdrt._ext")
    print("OK")
    """
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_block_finder_really_blocks():
    proc = _python(BLOCK_NUMBA + "import numba\n")
    assert proc.returncode != 0 and "blocked for this test" in proc.stderr


def test_import_and_cpu_kernels_without_numba():
    proc = _python(WITHOUT_NUMBA)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("OK")


def test_reference_without_the_extension():
    proc = _python(WITHOUT_EXT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("OK")


def test_import_is_light():
    code = (
        "import sys, gixdrt, gixdrt.kernels, gixdrt.geometry, gixdrt.errors\n"
        "heavy = [m for m in ('numba', 'torch', 'cupy', 'onnxruntime', 'tensorrt') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr


def test_ext_build_info():
    from gixdrt import _ext

    info = _ext.build_info()
    assert isinstance(info, dict)
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["version"], str) and info["version"]
