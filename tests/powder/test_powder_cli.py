"""gixdrt mask / evaluate-powder / train-powder from the command line: outputs equal the Python API's, one-line
errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from gixdrt.cli import main  # noqa: E402
from gixdrt.model.unet import UNet  # noqa: E402
from gixdrt.powder.classical import RingIndex, pixel_mask_search  # noqa: E402
from gixdrt.powder.model import save_unet  # noqa: E402
from gixdrt.powder.plan import PowderMasker  # noqa: E402
from gixdrt.sim.powder import PowderSimulator  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(1)
    model = save_unet(UNet(depth=3).eval(), d / "model", normalization={"bins_per_unit": 1024, "max_log": 24,
                      "min_mad": 0.01}, mask={"threshold": 0.5, "min_size": 0, "connectivity": 8})
    f = PowderSimulator(seed=2, size=(160, 192)).frame(0)
    np.save(d / "frame.npy", f.image)
    np.save(d / "dmask.npy", f.detector_mask)
    g = f.geometry
    (d / "det.poni").write_text(
        f"PixelSize1: {g.pixel1}\nPixelSize2: {g.pixel2}\nDistance: {g.dist}\nPoni1: {g.poni1}\nPoni2: {g.poni2}\n"
        f"Rot1: {g.rot1}\nRot2: {g.rot2}\nRot3: {g.rot3}\nWavelength: {g.wavelength}\n")
    return d, model, f


def test_mask_both_methods_to_hdf5(setup, capsys):
    d, model, f = setup
    out = d / "masks.h5"
    rc = main(["mask", str(d / "frame.npy"), "--out", str(out), "--method", "both", "--poni", str(d / "det.poni"),
               "--model", str(model), "--mask", str(d / "dmask.npy"), "--threads", "1", "--runtime", "onnxruntime"])
    assert rc == 0, capsys.readouterr().err
    with h5py.File(out) as h5:
        unet, classical, first = h5["masks_unet"][()], h5["masks_classical"][()], h5["masks"][()]
        attrs, frames = dict(h5.attrs), [s.decode() for s in h5["frames"][()]]
    want_c = pixel_mask_search(f.image, RingIndex.from_geometry(f.geometry, f.detector_mask))
    np.testing.assert_array_equal(classical[0], want_c)
    want_u = PowderMasker(model, detector_mask=f.detector_mask != 0, threads=1)(f.image)
    np.testing.assert_array_equal(unet[0], want_u)
    np.testing.assert_array_equal(first, unet)
    assert want_c.any() and unet.dtype == bool and frames == [str(d / "frame.npy")]
    settings = json.loads(attrs["settings"])
    assert settings["unet"]["threshold"] == 0.5 and settings["unet"]["runtime"] == "onnxruntime"
    assert settings["classical"]["n_mad"] == 3.0 and list(attrs["methods"]) == ["unet", "classical"]
    assert json.loads(attrs["geometry"])["dist"] == f.geometry.dist


def test_mask_streams_stacks_in_input_order(setup, capsys, tmp_path):
    """Several files and a stack: one mask per frame, in input order, labelled; the frames are read one at a time."""
    d, model, f = setup
    from gixdrt.sim.powder import PowderSimulator

    others = PowderSimulator(seed=5, size=f.image.shape).frames([1, 2])
    np.save(tmp_path / "stack.npy", np.stack([o.image for o in others]))
    out = tmp_path / "m.npy"
    rc = main(["mask", str(d / "frame.npy"), str(tmp_path / "stack.npy"), "--out", str(out), "--method", "classical",
               "--poni", str(d / "det.poni"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    got = np.load(out)
    index = RingIndex.from_geometry(f.geometry)
    want = np.stack([pixel_mask_search(img, index) for img in (f.image, others[0].image, others[1].image)])
    assert got.dtype == bool and got.shape == (3, *f.image.shape)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got[1], got[2])


def test_mask_runtime_auto_is_the_default(setup, capsys, tmp_path):
    """Without --runtime the U-Net runs where auto_runtime says (PyTorch bf16 on CPUs with native bf16, else ONNX
    Runtime fp32); the settings say which, and the masks stay those of fp32 here up to a few pixels."""
    from gixdrt.powder.plan import auto_runtime

    d, model, f = setup
    out = tmp_path / "auto.h5"
    rc = main(["mask", str(d / "frame.npy"), "--out", str(out), "--poni", str(d / "det.poni"), "--model", str(model),
               "--mask", str(d / "dmask.npy"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    with h5py.File(out) as h5:
        got, settings = h5["masks"][0], json.loads(h5.attrs["settings"])["unet"]
    assert (settings["runtime"], settings["precision"]) == auto_runtime()
    want = PowderMasker(model, detector_mask=f.detector_mask != 0, threads=1)(f.image)
    assert np.count_nonzero(got != want) <= max(5, want.sum() // 50)


def test_mask_errors_are_one_line(setup, capsys):
    d, model, _ = setup
    rc = main(["mask", str(d / "frame.npy"), "--out", str(d / "m.npy")])  # the default model has a ring channel
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("gixdrt mask: error: --poni: the U-Net model 'default'") and err.count("\n") == 1
    rc = main(["mask", str(d / "frame.npy"), "--out", str(d / "m.npy"), "--method", "both", "--poni", str(d / "det.poni")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs an HDF5 output" in err and err.count("\n") == 1
    rc = main(["mask", str(d / "frame.npy"), "--out", str(d / "m.npy"), "--method", "classical"])
    assert rc == 2 and "--poni" in capsys.readouterr().err
    assert not (d / "m.npy").exists()


def test_evaluate_powder_writes_its_report(setup, capsys):
    d, model, _ = setup
    out = d / "report.json"
    rc = main(["evaluate-powder", "--model", str(model), "--n", "1", "--size", "128", "--seed", "3", "--out", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"unet", "classical"} and report["frames"] == 1
    assert "pixel recall" in capsys.readouterr().out


def test_train_powder_cli(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"batch_size": 1, "crop": 64, "frame_sizes": [96], "window": 1, "warmup": 1}))
    rc = main(["train-powder", "--run-dir", str(tmp_path / "run"), "--config", str(cfg), "--steps", "1",
               "--threads", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "model" / "unet.onnx").is_file()
    rc = main(["train-powder", "--run-dir", str(tmp_path / "run"), "--config", str(cfg)])
    assert rc == 2 and "a run exists here" in capsys.readouterr().err


def test_mask_overlays_one_png_per_frame(setup, capsys, tmp_path):
    d, model, f = setup
    np.save(tmp_path / "two.npy", np.stack([f.image, f.image[::-1].copy()]))
    rc = main(["mask", str(tmp_path / "two.npy"), "--out", str(tmp_path / "m.npy"), "--method", "classical",
               "--poni", str(d / "det.poni"), "--overlays", str(tmp_path / "png"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    pngs = sorted((tmp_path / "png").iterdir())
    assert [p.name for p in pngs] == ["frame_000000.png", "frame_000001.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)
    (tmp_path / "file").write_text("x")
    rc = main(["mask", str(tmp_path / "two.npy"), "--out", str(tmp_path / "m2.npy"), "--method", "classical",
               "--poni", str(d / "det.poni"), "--overlays", str(tmp_path / "file")])
    err = capsys.readouterr().err
    assert rc == 2 and "--overlays" in err and err.count("\n") == 1 and not (tmp_path / "m2.npy").exists()
