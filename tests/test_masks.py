"""Bad pixels: where masks come from (NeXus/Eiger HDF5, user images, the config), how a run combines them, and what
a masked frame gives, up to the published real frame with detector gaps and flag values."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from gixdrt.errors import ConfigError, DataWarning, FrameError
from gixdrt.geometry import MaskConfig, config_from_mapping
from gixdrt.io.masks import Masks, detector_mask, read_mask, run_masks

SHAPE = (6, 8)


def _eiger(path, mask=None, saturation=None, specific=True, nx_class=True):
    """An Eiger-like master file: data and, in the detector group (or its detectorSpecific group), the mask."""
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = np.zeros((2, *SHAPE), np.uint32)
        det = f.require_group("entry/instrument/detector")
        if nx_class:
            det.attrs["NX_class"] = "NXdetector"
        where = det.require_group("detectorSpecific") if specific else det
        if mask is not None:
            where["pixel_mask"] = mask
        if saturation is not None:
            (where if not specific else det)["saturation_value"] = saturation
    return path


def test_masks_from_an_eiger_master_file(tmp_path):
    mask = np.zeros(SHAPE, np.uint32)
    mask[2, :] = 1  # a gap row
    mask[0, 0] = 16  # a noisy pixel
    m = detector_mask(_eiger(tmp_path / "scan_master.h5", mask, saturation=12345), SHAPE)
    assert m.pixels.dtype == np.uint8 and m.pixels.sum() == 9 and m.pixels[2].all() and m.pixels[0, 0] == 1
    assert m.saturation == 12345.0
    assert any("detectorSpecific/pixel_mask" in s for s in m.sources)
    assert abs(m.fraction - 9 / 48) < 1e-12


def test_masks_from_a_nexus_detector_group(tmp_path):
    mask = np.eye(*SHAPE, dtype=np.int32)
    m = detector_mask(_eiger(tmp_path / "nx.nxs", mask, specific=False), SHAPE)
    assert m.pixels.sum() == 6 and m.saturation is None


def test_files_without_masks_and_other_formats_give_nothing(tmp_path):
    assert detector_mask(_eiger(tmp_path / "plain.h5"), SHAPE).empty
    np.save(tmp_path / "f.npy", np.zeros(SHAPE))
    assert detector_mask(tmp_path / "f.npy", SHAPE).empty


def test_a_detector_mask_of_the_wrong_shape_is_named(tmp_path):
    path = _eiger(tmp_path / "bad.h5", np.zeros((3, 3), np.uint32))
    with pytest.raises(FrameError, match=r"bad.h5::/entry/instrument/detector/detectorSpecific/pixel_mask: pixel mask "
                                         r"of shape \(3, 3\)"):
        detector_mask(path, SHAPE)


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".h5"])
def test_user_masks_in_any_readable_format(tmp_path, suffix):
    arr = np.zeros(SHAPE, np.float32)
    arr[1, 2] = 1.0
    arr[3, 4] = 255
    path = tmp_path / f"m{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, arr)
    elif suffix == ".npy":
        np.save(path, arr.astype(bool))
    else:
        with h5py.File(path, "w") as f:
            f["mask"] = arr.astype(np.uint8)
    m = read_mask(path, SHAPE)
    assert m.pixels.tolist() == (arr != 0).astype(np.uint8).tolist()
    with pytest.raises(FrameError, match=r"shape \(6, 8\) does not match the detector, 5×5 \(q_space.size_y"):
        read_mask(path, (5, 5))


def test_a_mask_must_be_finite(tmp_path):
    arr = np.zeros(SHAPE, np.float32)
    arr[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(FrameError, match="a mask must hold finite numbers"):
        read_mask(tmp_path / "nan.npy", SHAPE)


def test_a_run_combines_every_source(tmp_path):
    file_mask = np.zeros(SHAPE, np.uint32)
    file_mask[0] = 1
    scan = _eiger(tmp_path / "scan.h5", file_mask, saturation=1000)
    user = np.zeros(SHAPE, np.uint8)
    user[:, 0] = 1
    np.save(tmp_path / "user.npy", user)
    cfg_mask = np.zeros(SHAPE, np.uint8)
    cfg_mask[5, 7] = 1
    tifffile.imwrite(tmp_path / "cfg_mask.tif", cfg_mask)
    config = MaskConfig.from_mapping({"file": "cfg_mask.tif", "saturation_value": 500}, str(tmp_path / "c.yaml"))
    m = run_masks([f"{scan}::/entry/data/data"], SHAPE, config_mask=config, user_masks=[tmp_path / "user.npy"])
    expect = (file_mask != 0) | (user != 0) | (cfg_mask != 0)
    np.testing.assert_array_equal(m.pixels, expect.astype(np.uint8))
    assert m.saturation == 500.0  # the lower of the file's and the config's
    assert len(m.sources) == 5  # the file's mask and saturation value, the config's file and value, --mask
    off = MaskConfig.from_mapping({"detector": False}, None)
    assert run_masks([scan], SHAPE, config_mask=off).empty  # the files' own masks are not read
    assert "values ≥ 500" in m.describe() and "pixels" in m.describe()


def test_the_config_mask_section(tmp_path):
    base = {"q_space": {"size_x": 8, "size_y": 6, "pixel_size": 0.2, "distance": 100, "wavelength": 1.0,
                        "incidence_angle": 0.5, "y0": 3, "z0": 2, "q_xy_max": 2.0, "q_z_max": 2.0},
            "polar_config": {"angular_size": 8, "q_size": 8}}
    path = str(tmp_path / "c.yaml")
    assert config_from_mapping(base, path).mask == MaskConfig()
    short = config_from_mapping({**base, "mask": "gaps.tif"}, path).mask
    assert short.file == str(tmp_path / "gaps.tif") and short.detector
    full = config_from_mapping({**base, "mask": {"saturation_value": 1e6, "detector": False}}, path)
    assert full.mask == MaskConfig(None, 1e6, False)
    assert yaml.safe_load(yaml.safe_dump(full.to_dict()))["mask"]["saturation_value"] == 1e6
    for bad, message in [({"saturation_value": -1}, "mask.saturation_value: must be > 0"),
                         ({"file": 3}, "mask.file: expected a file name"),
                         ({"gaps": "x"}, "mask: unknown key"),
                         (5, "mask: expected a file name or a mapping"),
                         ({"detector": "yes"}, "mask.detector: expected true or false")]:
        with pytest.raises(ConfigError, match=message):
            config_from_mapping({**base, "mask": bad}, path)


def test_masks_union_checks_shapes():
    a = Masks(np.zeros((2, 2), np.uint8), None, ("a",))
    b = Masks(np.zeros((3, 3), np.uint8), None, ("b",))
    with pytest.raises(FrameError, match="masks of different shapes"):
        a.union(b)


# -------------------------------------------------------------------------------------------------
# The published real frame with gaps and flag values: the same rings
# -------------------------------------------------------------------------------------------------
def _gaps(shape):
    """An Eiger-like gap pattern: horizontal gaps of 37 rows every 551 rows, vertical ones of 10 columns every
    1040 columns."""
    gaps = np.zeros(shape, bool)
    for r in range(514, shape[0], 551):
        gaps[r:r + 37] = True
    for c in range(1030, shape[1], 1040):
        gaps[:, c:c + 10] = True
    return gaps


@pytest.fixture(scope="module")
def real(published_assets, published_config):
    from gixdrt.gixd.detector import PeakDetector
    from gixdrt.io import read_frame

    frame = read_frame(published_assets.frame)
    return frame, published_config, PeakDetector("default", backend="onnxruntime")


def _rings(frame, config, detector, masks=None):
    from gixdrt.gixd.pipeline import Pipeline
    from gixdrt.testing import match_rings, published_ring_q

    pipe = Pipeline(config, detector, keep_polar=False, masks=masks)
    result = next(pipe.iter_results([type("F", (), {"index": 0, "source": "real", "data": frame})()]))
    rings = match_rings(result.table.q, published_ring_q(config.geometry.q_max))
    return rings["found"], result


def _flagged(frame, where, case):
    """The frame with the pixels ``where`` at ``case``'s flag value: unsigned counts (the frame + 1000, rounded) at
    2^bits − 1, or float32 NaN or ±max."""
    if case.startswith("uint"):
        dtype = np.dtype(case.split("-")[0])
        data = np.clip(np.rint(frame + 1000.0), 0, np.iinfo(dtype).max - 1).astype(dtype)  # counts ≥ 0
        data[where] = np.iinfo(dtype).max
        return data
    data = frame.copy()
    data[where] = {"float32-nan": np.nan, "float32-max": np.finfo(np.float32).max,
                   "float32-min": -np.finfo(np.float32).max}[case]
    return data


@pytest.mark.published
@pytest.mark.parametrize("case", ["uint32-flag", "uint16-flag", "float32-nan", "float32-max", "float32-min"])
def test_the_real_frame_with_its_gaps_at_a_flag_value_gives_the_same_rings(real, case):
    """The real frame's own empty pixels (its first and last rows and ~500 dead pixels, 0 in the file) and 300
    more pixels set to the flag value of the data type: masked, the same 12 rings; the flagged pixels are reported."""
    frame, config, detector = real
    found, clean = _rings(frame, config, detector)
    assert found == 12 and clean.masked == 0.0
    rng = np.random.default_rng(11)
    where = frame == 0
    assert where.sum() > 4096  # two empty rows and more
    where[rng.integers(0, frame.shape[0], 300), rng.integers(0, frame.shape[1], 300)] = True
    found, result = _rings(_flagged(frame, where, case), config, detector)
    assert found == 12 and len(result.table) == 12, case
    assert result.masked > 0


@pytest.mark.published
def test_an_eiger_like_gap_layout_with_a_mask(real):
    """Gaps of 37 rows and 10 columns (8 % of the polar image) at 1e9 counts: without a mask no ring is found; with
    the mask the gaps are filled from their neighbours, 11 of the 12 rings are found (the weakest, scored 0.75 on
    the whole frame, loses too much of its arc: the published model loses it too) and no false peak."""
    frame, config, detector = real
    gaps = _gaps(frame.shape)
    data = frame.copy()
    data[gaps] = 1e9
    found, result = _rings(data, config, detector, Masks(np.zeros(frame.shape, np.uint8)))
    assert found == 0
    found, result = _rings(data, config, detector, Masks(gaps.astype(np.uint8), None, ("gaps",)))
    assert found >= 11 and len(result.table) <= 12
    assert 0.05 < result.masked < 0.15 and result.filled > 10000


@pytest.mark.published
def test_extreme_values_without_a_saturation_value_are_warned_about(real):
    frame, config, detector = real
    data = frame.copy()
    rng = np.random.default_rng(2)
    data[rng.integers(0, 2048, 400), rng.integers(0, 2048, 400)] = 3.0e38  # not the float32 flag value itself
    with pytest.warns(DataWarning, match=r"beyond ±1e\+?12 and no saturation value"):
        _rings(data, config, detector)
    found, result = _rings(data, config, detector, Masks(None, 1e30, ("test",)))  # a saturation value masks them
    assert found == 12 and result.masked > 0


# -------------------------------------------------------------------------------------------------
# The command line: masks from the input file, the config and --mask, and what is reported
# -------------------------------------------------------------------------------------------------
def test_detect_and_preprocess_use_every_mask(small_config, tmp_path, capsys):
    from gixdrt.cli import main
    from gixdrt.geometry import load_config
    from gixdrt.gixd.preprocess import Preprocessor

    cfg = load_config(small_config)
    h, w = cfg.geometry.frame_shape
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 500, (2, h, w)).astype(np.uint16)
    frames[:, 5, :] = 65535  # a gap row at the flag value
    file_mask = np.zeros((h, w), np.uint32)
    file_mask[:, 10] = 1  # a dead column declared by the detector
    scan = _eiger(tmp_path / "scan.h5", file_mask)
    with h5py.File(scan, "r+") as f:
        del f["entry/data/data"]
        f["entry/data/data"] = frames
    user = np.zeros((h, w), bool)
    user[20:25, 30:35] = True
    np.save(tmp_path / "user.npy", user)
    out = tmp_path / "peaks.csv"
    assert main(["detect", str(scan), "--config", str(small_config), "--mask", str(tmp_path / "user.npy"),
                 "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"masked: {h + 25} pixels" in captured.err, captured.err  # the file's column and --mask; the gap row
    assert "pixel_mask" in captured.err and "user.npy" in captured.err  # is flagged in the frames themselves
    assert "% of the polar image sampled masked pixels on average" in captured.out, captured.out

    polar = tmp_path / "polar.npy"
    assert main(["preprocess", f"{scan}::/entry/data/data", "--index", "1", "--config", str(small_config), "--stage",
                 "polar", "--mask", str(tmp_path / "user.npy"), "--out", str(polar)]) == 0
    assert "masked:" in capsys.readouterr().out
    expect = Preprocessor(cfg, masks=Masks((user | (file_mask != 0)).astype(np.uint8))).polar(frames[1])
    np.testing.assert_array_equal(np.load(polar), expect)
    plain = Preprocessor(cfg).polar(frames[1])  # the flag row is masked even without any mask
    assert np.isfinite(plain).all() and plain.max() < 500
