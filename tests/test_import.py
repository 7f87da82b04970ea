"""Import hygiene: gixdrt imports without Numba and its kernels fall back to the NumPy reference."""
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
    reason = registry.available("polar_remap")["cpu"]
    assert reason and "numba" in reason, reason

    g = Geometry(size_x=16, size_y=12, pixel_size=12.8, distance=809.0, wavelength=0.6888,
                 incidence_angle=0.5, y0=4.0, z0=2.0, q_xy_max=2.7, q_z_max=2.7, n_phi=8, n_q=16, flip_y=True)
    pm = polar_map(g)
    frame = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    name, _ = registry.resolve("polar_remap", None, frame)
    assert name == "reference", name
    out = K.polar_remap(frame, pm)
    ref = K.polar_remap(frame, pm, backend="reference")
    assert out.shape == (8, 16) and out.dtype == np.float32
    assert np.array_equal(out, ref) and np.abs(out).max() > 0
    try:
        K.polar_remap(frame, pm, backend="cpu")
    except registry.BackendUnavailableError as exc:
        assert "numba" in str(exc)
    else:
        raise AssertionError("backend='cpu' ran without numba")
    assert "numba" not in sys.modules
    print("OK", gixdrt.__version__)
    """
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_block_finder_really_blocks():
    proc = _python(BLOCK_NUMBA + "import numba\n")
    assert proc.returncode != 0 and "blocked for this test" in proc.stderr


def test_import_and_reference_without_numba():
    proc = _python(WITHOUT_NUMBA)
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
