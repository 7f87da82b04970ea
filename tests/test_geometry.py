"""Config loading/validation, the polar sampling map and PONI import."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gixdrt.errors import ConfigError
from gixdrt.geometry import Geometry, build_polar_map, load_config, polar_map

# The published test_config.yaml, reduced to the sections gixdrt reads (values as published).
PUBLISHED_YAML = """\
contrast:
  coef: 5000.0
  disable: false
  limit: 2000.0
  log: true
general:
  sum_images: 10
polar_config:
  algorithm: 1
  angular_size: 512
  q_size: 1024
postprocessing_config:
  nms_level: 0.1
  score_level: 0.6
q_space:
  distance: 809
  flip_x: false
  flip_y: true
  incidence_angle: 0.5
  pixel_size: 0.2
  q_xy_max: 2.7
  q_xy_num: 1350
  q_z_max: 2.7
  q_z_num: 1350
  size_x: 2048
  size_y: 2048
  wavelength: 0.6888
  y0: 545
  z0: 222
"""

PUBLISHED = dict(
    size_x=2048, size_y=2048, pixel_size=0.2, distance=809.0, wavelength=0.6888, incidence_angle=0.5,
    y0=545.0, z0=222.0, q_xy_max=2.7, q_z_max=2.7, n_phi=512, n_q=1024, flip_x=False, flip_y=True,
)


def _geom(**over) -> Geometry:
    return Geometry(**{**PUBLISHED, **over})


@pytest.fixture(scope="module")
def published_geometry() -> Geometry:
    return _geom()


@pytest.fixture(scope="module")
def published_map(published_geometry):
    return polar_map(published_geometry)


# -------------------------------------------------------------------------------------------------
# Loading and validation
# -------------------------------------------------------------------------------------------------
def _check_config(cfg):
    g = cfg.geometry
    for key, value in PUBLISHED.items():
        assert getattr(g, key) == value, key
    assert g.frame_shape == (2048, 2048)
    assert g.polar_shape == (512, 1024)
    assert math.isclose(g.q_max, 3.818377, rel_tol=1e-6)
    assert cfg.contrast.coef == 5000.0 and cfg.contrast.limit == 2000.0
    assert cfg.contrast.log is True and cfg.contrast.disable is False
    assert cfg.postprocessing.nms_level == 0.1 and cfg.postprocessing.score_level == 0.6
    assert cfg.sum_images == 10


def test_load_config_values(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text(PUBLISHED_YAML)
    cfg = load_config(p)
    _check_config(cfg)
    assert cfg.geometry.source == str(p)


@pytest.mark.published
def test_load_published_config():
    from gixdrt.io import fetch_published

    _check_config(load_config(fetch_published(quiet=True).config))


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BAD_CONFIGS = {
    # name: (transform of the published YAML, expected key, words expected in the problem)
    "missing-q_space": (lambda t: t[: t.index("q_space:")], "q_space", "missing section"),
    "missing-distance": (lambda t: _replace(t, "  distance: 809\n", ""), "q_space.distance", "missing key"),
    "zero-distance": (lambda t: _replace(t, "distance: 809", "distance: 0"), "q_space.distance", "> 0"),
    "negative-distance": (lambda t: _replace(t, "distance: 809", "distance: -5"), "q_space.distance", "> 0"),
    "zero-wavelength": (lambda t: _replace(t, "wavelength: 0.6888", "wavelength: 0"), "q_space.wavelength", "> 0"),
    "negative-wavelength": (
        lambda t: _replace(t, "wavelength: 0.6888", "wavelength: -0.6888"), "q_space.wavelength", "> 0"),
    "text-distance": (lambda t: _replace(t, "distance: 809", "distance: far"), "q_space.distance", "expected a number"),
    "list-pixel": (lambda t: _replace(t, "pixel_size: 0.2", "pixel_size: [0.2]"), "q_space.pixel_size",
                   "expected a number"),
    "y0-outside": (lambda t: _replace(t, "y0: 545", "y0: 2048"), "q_space.y0", "outside the detector"),
    "y0-negative": (lambda t: _replace(t, "y0: 545", "y0: -1"), "q_space.y0", "outside the detector"),
    "z0-outside": (lambda t: _replace(t, "z0: 222", "z0: 5000"), "q_space.z0", "outside the detector"),
    "angular-size-0": (lambda t: _replace(t, "angular_size: 512", "angular_size: 0"), "polar_config.angular_size",
                       "polar size"),
    "q-size-0": (lambda t: _replace(t, "q_size: 1024", "q_size: 0"), "polar_config.q_size", "polar size"),
    "algorithm-2": (lambda t: _replace(t, "algorithm: 1", "algorithm: 2"), "polar_config.algorithm", "bilinear"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_invalid_config_names_file_key_problem(tmp_path, name):
    transform, key, problem = BAD_CONFIGS[name]
    p = tmp_path / f"{name}.yaml"
    p.write_text(transform(PUBLISHED_YAML))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    err = info.value
    assert err.key == key
    assert err.path == str(p)
    msg = str(err)
    assert str(p) in msg and key in msg and problem in msg, msg


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty", "", "empty file"),
        ("blank", "  \n\n", "empty file"),
        ("invalid", "q_space: [1, 2\n  distance: : :\n", "invalid YAML"),
        ("scalar", "just a string\n", "mapping"),
    ],
)
def test_unreadable_config(tmp_path, name, content, problem):
    p = tmp_path / f"{name}.yaml"
    p.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value) and problem in str(info.value)


def test_config_not_found(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(p)
    assert str(p) in str(info.value)


def test_config_round_trip(tmp_path):
    import yaml

    p = tmp_path / "cfg.yaml"
    p.write_text(PUBLISHED_YAML)
    cfg = load_config(p)
    q = tmp_path / "again.yaml"
    q.write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_config(q)
    assert again.geometry == cfg.geometry
    assert again.contrast == cfg.contrast and again.postprocessing == cfg.postprocessing


# -------------------------------------------------------------------------------------------------
# The polar map
# -------------------------------------------------------------------------------------------------
def _independent(g: Geometry, i: int, j: int) -> tuple[float, float] | None:
    """published-detector.md §4, written out again point by point: (row, col) in the raw frame or None."""
    q_max = math.sqrt(g.q_xy_max**2 + g.q_z_max**2)
    q = j * q_max / (g.n_q - 1)
    phi = i * (math.pi / 2) / (g.n_phi - 1)
    q_xy, q_z = q * math.cos(phi), q * math.sin(phi)
    k = 2 * math.pi / g.wavelength
    d = g.distance / g.pixel_size
    alpha = math.radians(g.incidence_angle)
    a, b = q_xy / k, q_z / k
    L = d / (1 - (a * a + b * b) / 2)
    z = (L * (b - math.sin(alpha)) + d * math.sin(alpha)) / math.cos(alpha)
    y2 = L * L - z * z - d * d
    if y2 < 0:
        return None
    column = math.sqrt(y2) + g.y0
    row = z + g.z0
    if g.flip_y:
        row = g.size_y - 1 - row
    if g.flip_x:
        column = g.size_x - 1 - column
    return row, column


POINTS = [(0, 0), (0, 1), (0, 1023), (1, 5), (100, 200), (256, 512), (300, 77), (511, 0), (511, 1), (511, 600),
          (500, 1023), (37, 999), (480, 30)]


def test_map_matches_independent_formulas(published_geometry, published_map):
    pm = published_map
    assert pm.row.shape == pm.col.shape == (512, 1024)
    assert pm.row.dtype == pm.col.dtype == np.float64
    n_defined = n_undefined = 0
    for i, j in POINTS:
        expect = _independent(published_geometry, i, j)
        if expect is None:
            n_undefined += 1
            assert not pm.defined[i, j], (i, j)
            assert np.isnan(pm.row[i, j]) and np.isnan(pm.col[i, j]), (i, j)
        else:
            n_defined += 1
            assert pm.defined[i, j], (i, j)
            assert abs(pm.row[i, j] - expect[0]) < 1e-9, (i, j, pm.row[i, j], expect[0])
            assert abs(pm.col[i, j] - expect[1]) < 1e-9, (i, j, pm.col[i, j], expect[1])
    assert n_defined >= 8 and n_undefined >= 2  # the sample exercises both cases


def test_map_flip_x_and_no_flip():
    # Every combination of flips against the same independent derivation.
    for fx in (False, True):
        for fy in (False, True):
            g = _geom(n_phi=16, n_q=32, flip_x=fx, flip_y=fy)
            pm = polar_map(g)
            for i, j in ((0, 0), (3, 7), (8, 20), (15, 2), (12, 31)):
                expect = _independent(g, i, j)
                if expect is None:
                    assert np.isnan(pm.row[i, j])
                else:
                    assert abs(pm.row[i, j] - expect[0]) < 1e-9
                    assert abs(pm.col[i, j] - expect[1]) < 1e-9


def test_q_zero_maps_to_beam_centre(published_geometry, published_map):
    g, pm = published_geometry, published_map
    # flip_y: the beam row z0 = 222 is given after the flip, i.e. raw row 2047 − 222.
    assert np.all(pm.defined[:, 0])
    np.testing.assert_allclose(pm.row[:, 0], g.size_y - 1 - g.z0, atol=1e-9)
    np.testing.assert_allclose(pm.col[:, 0], g.y0, atol=1e-9)
    assert g.q_axis()[0] == 0.0 and math.isclose(g.q_axis()[-1], g.q_max)
    assert g.phi_axis()[0] == 0.0 and g.phi_axis()[-1] == 90.0


def test_flip_y_is_folded(published_geometry):
    g_flip = published_geometry
    g_plain = _geom(flip_y=False)
    a, b = polar_map(g_flip), polar_map(g_plain)
    np.testing.assert_array_equal(a.defined, b.defined)
    d = a.defined
    np.testing.assert_allclose(a.row[d], g_flip.size_y - 1 - b.row[d], atol=1e-9)
    np.testing.assert_array_equal(a.col[d], b.col[d])


def test_undefined_positions(published_map):
    pm = published_map
    undef = ~pm.defined
    assert undef.any() and pm.defined.any()
    assert np.all(np.isnan(pm.row[undef])) and np.all(np.isnan(pm.col[undef]))
    assert np.all(np.isfinite(pm.row[pm.defined])) and np.all(np.isfinite(pm.col[pm.defined]))
    assert not pm.inside[undef].any()
    # kernel form: undefined → top-left (−2, −2), zero fractions
    assert np.all(pm.y0[undef] == -2) and np.all(pm.x0[undef] == -2)
    assert np.all(pm.fy[undef] == 0) and np.all(pm.fx[undef] == 0)


def test_inside_consistent(published_geometry, published_map):
    g, pm = published_geometry, published_map
    with np.errstate(invalid="ignore"):
        expect = pm.defined & (pm.row > -1) & (pm.row < g.size_y) & (pm.col > -1) & (pm.col < g.size_x)
    np.testing.assert_array_equal(pm.inside, expect)
    assert pm.inside.any() and (pm.defined & ~pm.inside).any()  # this geometry has both
    outside = ~pm.inside
    assert np.all(pm.y0[outside] == -2) and np.all(pm.x0[outside] == -2)


def test_kernel_form_reproduces_row_col(published_map):
    pm = published_map
    assert pm.y0.dtype == pm.x0.dtype == np.int32
    assert pm.fy.dtype == pm.fx.dtype == np.float32
    ins = pm.inside
    for f in (pm.fy, pm.fx):
        assert f.min() >= 0.0 and f.max() < 1.0
    # The kernel samples at the positions rounded to float32 in the config's (row-flipped) frame, as the
    # published pipeline's float32 OpenCV maps did: exactly that, and within float32 precision of row/col.
    g = pm.geometry
    assert g.flip_y and not g.flip_x
    row32 = (g.size_y - 1) - ((g.size_y - 1) - pm.row).astype(np.float32).astype(np.float64)
    col32 = pm.col.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(pm.y0[ins] + pm.fy[ins].astype(np.float64), row32[ins])
    np.testing.assert_array_equal(pm.x0[ins] + pm.fx[ins].astype(np.float64), col32[ins])
    np.testing.assert_allclose(pm.y0[ins] + pm.fy[ins].astype(np.float64), pm.row[ins], rtol=0, atol=1.5e-4)
    np.testing.assert_allclose(pm.x0[ins] + pm.fx[ins].astype(np.float64), pm.col[ins], rtol=0, atol=1.5e-4)
    # the arrays are read-only: a shared cached map cannot be corrupted
    with pytest.raises(ValueError):
        pm.row[0, 0] = 1.0


def test_opencv_maps(published_map):
    mx, my = published_map.opencv_maps()
    assert mx.dtype == my.dtype == np.float32
    d = published_map.defined
    np.testing.assert_allclose(mx[d], published_map.col[d], rtol=1e-6)
    assert np.all(mx[~d] == -10) and np.all(my[~d] == -10)


def test_map_cache():
    g1 = _geom(n_phi=20, n_q=40)
    g2 = Geometry(**{**PUBLISHED, "n_phi": 20, "n_q": 40}, source="elsewhere.yaml")  # source is not compared
    assert g1 == g2 and hash(g1) == hash(g2)
    assert polar_map(g1) is polar_map(g2)
    g3 = _geom(n_phi=20, n_q=40, z0=223.0)
    assert polar_map(g3) is not polar_map(g1)
    assert build_polar_map(g1) is not polar_map(g1)


# -------------------------------------------------------------------------------------------------
# PONI
# -------------------------------------------------------------------------------------------------
PIXEL_M = 0.2e-3


def _write_poni(path, *, rot1=0.0, pixel2=PIXEL_M, max_shape=True, geometry: Geometry | None = None):
    g = geometry or _geom()
    raw_row = (g.size_y - 1 - g.z0) if g.flip_y else g.z0  # pyFAI counts rows of the raw frame
    poni1 = (raw_row + 0.5) * PIXEL_M
    poni2 = (g.y0 + 0.5) * PIXEL_M
    det = {"pixel1": PIXEL_M, "pixel2": pixel2}
    if max_shape:
        det["max_shape"] = [g.size_y, g.size_x]
    path.write_text(
        "# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis\n"
        "# Calibration done with pyFAI\n"
        "poni_version: 2\n"
        "Detector: Detector\n"
        f"Detector_config: {json.dumps(det)}\n"
        f"Distance: {g.distance * 1e-3!r}\n"
        f"Poni1: {poni1!r}\n"
        f"Poni2: {poni2!r}\n"
        f"Rot1: {rot1!r}\n"
        "Rot2: 0.0\n"
        "Rot3: 0.0\n"
        f"Wavelength: {g.wavelength * 1e-10!r}\n"
    )
    return path


def test_from_poni_matches_yaml(tmp_path, published_geometry, published_map):
    p = _write_poni(tmp_path / "det.poni")
    g = Geometry.from_poni(p, 0.5, q_xy_max=2.7, q_z_max=2.7)
    assert g.frame_shape == (2048, 2048) and g.polar_shape == (512, 1024)
    assert g.flip_y and not g.flip_x
    assert math.isclose(g.y0, 545, abs_tol=1e-6) and math.isclose(g.z0, 222, abs_tol=1e-6)
    assert math.isclose(g.distance, 809, rel_tol=1e-12) and math.isclose(g.pixel_size, 0.2, rel_tol=1e-12)
    assert math.isclose(g.wavelength, 0.6888, rel_tol=1e-12)
    pm = polar_map(g)
    ref = published_map
    np.testing.assert_array_equal(pm.defined, ref.defined)
    d = ref.defined
    np.testing.assert_allclose(pm.row[d], ref.row[d], rtol=0, atol=1e-6)
    np.testing.assert_allclose(pm.col[d], ref.col[d], rtol=0, atol=1e-6)


def test_from_poni_shape_argument(tmp_path):
    p = _write_poni(tmp_path / "noshape.poni", max_shape=False)
    with pytest.raises(ConfigError, match="shape"):
        Geometry.from_poni(p, 0.5, q_xy_max=2.7, q_z_max=2.7)
    g = Geometry.from_poni(p, 0.5, q_xy_max=2.7, q_z_max=2.7, shape=(2048, 2048), n_phi=16, n_q=32)
    assert g.frame_shape == (2048, 2048) and math.isclose(g.z0, 222, abs_tol=1e-6)


def test_from_poni_tilted(tmp_path):
    p = _write_poni(tmp_path / "tilted.poni", rot1=0.01)
    with pytest.raises(ConfigError) as info:
        Geometry.from_poni(p, 0.5, q_xy_max=2.7, q_z_max=2.7)
    assert info.value.key == "Rot1"
    assert "Rot1" in str(info.value) and "tilted" in str(info.value) and str(p) in str(info.value)


def test_from_poni_non_square_pixels(tmp_path):
    p = _write_poni(tmp_path / "rect.poni", pixel2=0.1e-3)
    with pytest.raises(ConfigError, match="square") as info:
        Geometry.from_poni(p, 0.5, q_xy_max=2.7, q_z_max=2.7)
    assert str(p) in str(info.value)


def test_from_poni_missing_and_empty(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        Geometry.from_poni(tmp_path / "absent.poni", 0.5, q_xy_max=2.7, q_z_max=2.7)
    empty = tmp_path / "empty.poni"
    empty.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="empty"):
        Geometry.from_poni(empty, 0.5, q_xy_max=2.7, q_z_max=2.7)
    p = _write_poni(tmp_path / "nodist.poni")
    p.write_text("\n".join(line for line in p.read_text().splitlines() if not line.startswith("Distance")))
    with pytest.raises(ConfigError) as info:
        Geometry.from_poni(p, 0.5, q_xy_max=2.7, q_z_max=2.7)
    assert info.value.key == "Distance" and "missing key" in str(info.value)
