"""``gixdrt mask --cluster``: the serial command's masks (U-Net and classical, .h5 and .npy) from a LocalCluster of
2 worker processes shared by the module and from ``local:1`` started by the command; a corrupt file reported in one
line while the other units finish; the run resumed with only the missing units (a deleted part, a repaired file)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scale_helpers import corrupt_chunk

from gixdrt.cli import main

distributed = pytest.importorskip("distributed")
torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

SHAPE = (128, 128)


def _write_frames(d, images) -> list[str]:
    """A .npy stack of the first 3 frames and an HDF5 stack of the other 2 (gzip, one frame per chunk)."""
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "a.npy", np.stack(images[:3]))
    with h5py.File(d / "b.h5", "w") as f:
        f.create_dataset("entry/data/data", data=np.stack(images[3:]), chunks=(1, *SHAPE), compression="gzip")
    return [str(d / "a.npy"), f"{d / 'b.h5'}::/entry/data/data"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Five generated 128² powder frames in two files, the PONI file and detector mask of the first, a depth-2
    U-Net."""
    from gixdrt.model.unet import UNet
    from gixdrt.powder.model import save_unet
    from gixdrt.sim.powder import PowderSimulator

    d = tmp_path_factory.mktemp("mask-cluster")
    sim = PowderSimulator(seed=5, size=SHAPE)
    frames = [sim.frame(i) for i in range(5)]
    inputs = _write_frames(d / "in", [f.image for f in frames])
    frames[0].geometry.write_poni(d / "det.poni")
    np.save(d / "dmask.npy", frames[0].detector_mask)
    torch.manual_seed(3)
    model = save_unet(UNet(depth=2).eval(), d / "model", normalization={"bins_per_unit": 1024, "max_log": 24,
                      "min_mad": 0.01}, mask={"threshold": 0.5, "min_size": 0, "connectivity": 8})
    return {"dir": d, "inputs": inputs, "images": [f.image for f in frames], "model": model,
            "poni": d / "det.poni", "dmask": d / "dmask.npy"}


def mask_args(inputs, out, data, *extra) -> list[str]:
    return ["mask", *map(str, inputs), "--out", str(out), "--poni", str(data["poni"]), "--model", str(data["model"]),
            "--mask", str(data["dmask"]), "--threads", "1", *extra]


@pytest.fixture(scope="module")
def serial(data, tmp_path_factory):
    """The serial command's masks (--method both, .h5): {dataset: array} and the file's attrs."""
    out = tmp_path_factory.mktemp("serial") / "serial.h5"
    assert main(mask_args(data["inputs"], out, data, "--method", "both")) == 0
    with h5py.File(out) as h5:
        return {name: h5[name][()] for name in h5}, dict(h5.attrs)


@pytest.fixture(scope="module")
def cluster():
    """The scheduler address of a LocalCluster: 2 worker processes, 1 thread each, no dashboard."""
    import logging

    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                     silence_logs=logging.CRITICAL)
    yield local.scheduler_address
    local.close()


def _read(out):
    with h5py.File(out) as h5:
        return {name: h5[name][()] for name in h5}, dict(h5.attrs)


def test_same_masks_as_serial(tmp_path, data, serial, cluster, capsys):
    from gixdrt.powder.classical import RingIndex, pixel_mask_search
    from gixdrt.powder.geometry import PowderGeometry

    out = tmp_path / "run.h5"
    code = main(mask_args(data["inputs"], out, data, "--method", "both", "--cluster", cluster,
                          "--work-unit", "frames:2"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (got, attrs), (want, want_attrs) = _read(out), serial
    assert sorted(got) == ["frames", "masks", "masks_classical", "masks_unet"] == sorted(want)
    for name in ("masks", "masks_classical", "masks_unet"):
        assert got[name].dtype == bool and got[name].shape == (5, *SHAPE)
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(got["masks"], got["masks_unet"])
    assert list(got["frames"]) == list(want["frames"]) and len(got["frames"]) == 5
    assert attrs["settings"] == want_attrs["settings"] and "weights_sha256" in attrs["settings"]
    # the classical masks computed here, frame by frame, in input order
    index = RingIndex.from_geometry(PowderGeometry.from_poni(data["poni"], shape=SHAPE),
                                    np.load(data["dmask"]).astype(np.uint8))
    direct = np.stack([pixel_mask_search(image, index) for image in data["images"]])
    assert direct.any() and not direct.all()
    np.testing.assert_array_equal(got["masks_classical"], direct)
    assert "cluster: 3 unit(s), 5 frame(s)" in captured.out  # a.npy in 2 units (2 + 1 frames), b.h5 in 1
    assert f"classical: {int(direct.sum())} spot pixels in 5 frame(s)" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]  # parts folder and manifest removed


def test_local_cluster_started_by_the_command_npy(tmp_path, data, capsys):
    """--cluster local:1 starts (and stops) its own worker; the .npy output equals the serial command's."""
    serial_out, out = tmp_path / "serial.npy", tmp_path / "run.npy"
    assert main(mask_args(data["inputs"], serial_out, data, "--method", "classical")) == 0
    assert main(mask_args(data["inputs"], out, data, "--method", "classical", "--cluster", "local:1")) == 0
    got, want = np.load(out), np.load(serial_out)
    assert got.dtype == want.dtype == bool and got.shape == (5, *SHAPE)
    np.testing.assert_array_equal(got, want)
    assert "cluster: 2 unit(s), 5 frame(s)" in capsys.readouterr().out  # one unit per file


def test_corrupt_file_reported_others_finish_then_resume(tmp_path, data, serial, cluster, capsys):
    inputs = _write_frames(tmp_path / "in", data["images"])
    good = tmp_path / "good.h5"
    shutil.copy(tmp_path / "in" / "b.h5", good)
    corrupt_chunk(tmp_path / "in" / "b.h5", 1)  # the last frame: unit 4 fails, units 0…3 are good
    out = tmp_path / "out" / "run.h5"
    args = mask_args(inputs, out, data, "--method", "both", "--cluster", cluster, "--work-unit", "frames:1",
                     "--retries", "0")
    assert main(args) == 2
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 1, err
    assert failed[0].startswith("gixdrt mask: unit 4 (") and "b.h5" in failed[0]
    assert "1 of 5 unit(s) failed; 4 unit(s), 4 of 5 frame(s) finished" in err
    assert not out.exists()
    manifest = tmp_path / "out" / "run.h5.manifest.json"
    assert sorted(json.loads(manifest.read_text())["done"]) == ["0", "1", "2", "3"]
    # other settings or units are refused in one line, naming the difference; nothing is lost
    for extra, message in ((["--threshold", "0.3"], "setting threshold was None, now 0.3"),
                           (["--work-unit", "file"], "--work-unit was frames:1, now file")):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # unit 0's part deleted and b.h5 repaired (a new modification time): units 0, 3 and 4 are done again
    (tmp_path / "out" / "run.h5.parts" / "unit-000000.npz").unlink()
    shutil.copy(good, tmp_path / "in" / "b.h5")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "2 unit(s), 2 frame(s) done before" in captured.err
    assert "cluster: 3 unit(s), 3 frame(s)" in captured.out
    got, _ = _read(out)
    for name, want in serial[0].items():
        if name != "frames":  # the labels name these copies of the inputs
            np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert [s.decode().rsplit("/", 1)[-1] for s in got["frames"]] == \
        [s.decode().rsplit("/", 1)[-1] for s in serial[0]["frames"]]
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5"]


def test_cluster_options_refused_in_one_line(tmp_path, data, capsys):
    cases = [(["--work-unit", "frames:2"], "--work-unit: needs --cluster"),
             (["--retries", "1"], "--retries: needs --cluster"),
             (["--cluster", "local:1", "--work-unit", "lines:2"], "--work-unit lines:2: expected file, files:K"),
             (["--cluster", "nowhere"], "--cluster nowhere: expected local:N or a scheduler address"),
             (["--cluster", "local:1", "--method", "both"], "--method both needs an HDF5 output"),
             (["--cluster", "local:1", "--integrate", str(tmp_path / "p.h5")], "--integrate: not available with")]
    for extra, message in cases:
        assert main(mask_args(data["inputs"], tmp_path / "o.npy", data, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_mask_unit_in_plain_python(tmp_path, data):
    """process_unit without Dask: a mask unit's part holds its frames' masks in input order; the engine cache keeps
    one engine per task settings."""
    from gixdrt.io.sources import resolve_inputs, stack_sizes
    from gixdrt.powder.plan import PowderMasker
    from gixdrt.scale import plan_units, process_unit
    from gixdrt.scale.powder import make_mask_settings, read_mask_part
    from gixdrt.scale.worker import _key, part_name, task_of

    files = resolve_inputs(data["inputs"])
    units, _ = plan_units(files, stack_sizes(files), frames_per_unit=2)
    np.save(tmp_path / "dmask.npy", np.load(data["dmask"]))
    settings = make_mask_settings(methods=["unet"], shape=SHAPE, model=data["model"], poni=data["poni"],
                                  mask=tmp_path / "dmask.npy", threads=1, parts=tmp_path)
    summary = process_unit(units[1], settings)  # frame 2 of a.npy
    masks, sources = read_mask_part(tmp_path / part_name(units[1]))
    assert sources == [f"{data['inputs'][0]}[2]"] and summary["frames"] == 1
    want = PowderMasker(data["model"], detector_mask=np.load(data["dmask"]) != 0, threads=1)(data["images"][2])
    np.testing.assert_array_equal(masks["unet"][0], want)
    assert summary["spots"] == {"unet": int(want.sum())}
    assert task_of({}) == "detect" and task_of(settings) == "mask"
    assert _key(settings) != _key({**settings, "threshold": 0.4}) != _key({**settings, "task": "detect"})
    with pytest.raises(ValueError, match="unknown task"):
        task_of({"task": "integrate"})
