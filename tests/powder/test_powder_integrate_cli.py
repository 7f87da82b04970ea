"""gixdrt mask --integrate, evaluate-powder --intensities and demo --powder from the command line: the written
patterns equal direct integrate() calls with the written masks; errors are one line, exit 2, and write nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyFAI")
h5py = pytest.importorskip("h5py")

from gixdrt.cli import main  # noqa: E402
from gixdrt.powder.geometry import PowderGeometry  # noqa: E402
from gixdrt.powder.integrate import METHOD, integrate  # noqa: E402
from gixdrt.sim.powder import PowderSimulator  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("integ")
    sim = PowderSimulator(seed=11, size=(160, 192))
    f0, f1 = sim.frame(1), sim.frame(2)
    g = f0.geometry.replace()  # the detector geometry of frame 0, used for both frames (as one detector would)
    g.write_poni(d / "det.poni")
    np.save(d / "frame.npy", f0.image)
    np.save(d / "stack.npy", np.stack([f0.image, f1.image]))
    np.save(d / "dmask.npy", f0.detector_mask)
    with h5py.File(d / "frame.h5", "w") as h5:
        h5["data"] = f0.image
    return d, g, f0, f1


def _mask(d, *args):
    return main(["mask", *map(str, args), "--method", "classical", "--poni", str(d / "det.poni"),
                 "--mask", str(d / "dmask.npy")])


def test_integrate_stack_to_hdf5(setup, capsys):
    d, g, f0, f1 = setup
    rc = _mask(d, d / "stack.npy", "--out", d / "m.npy", "--integrate", d / "p.h5", "--npt", "300")
    assert rc == 0, capsys.readouterr().err
    assert "patterns (2 frame(s), 300 bins in 2th_deg" in capsys.readouterr().out
    spots = np.load(d / "m.npy")
    want = integrate(np.stack([f0.image, f1.image]), PowderGeometry.from_poni(d / "det.poni", shape=g.shape),
                     spots=spots, detector_mask=f0.detector_mask, npt=300)
    with h5py.File(d / "p.h5") as h5:
        np.testing.assert_array_equal(h5["radial"][()], want.radial)
        np.testing.assert_array_equal(h5["masked"][()], want.masked)
        np.testing.assert_array_equal(h5["unmasked"][()], want.unmasked)
        a = dict(h5.attrs)
        labels = [x.decode() for x in h5["frames"][()]]
    assert a["unit"] == "2th_deg" and a["npt"] == 300 and a["method"] == ",".join(METHOD)
    assert labels == [f"{d / 'stack.npy'}[0]", f"{d / 'stack.npy'}[1]"] and list(a["sources"]) == [str(d / "stack.npy")]
    assert a["poni"] == str(d / "det.poni") and json.loads(a["geometry"])["dist"] == g.dist
    assert spots.any() and not np.array_equal(want.masked, want.unmasked)


def test_integrate_one_frame_to_xy_in_q(setup, capsys):
    d, g, f0, _ = setup
    rc = _mask(d, d / "frame.npy", "--out", d / "m1.npy", "--integrate", d / "one.xy", "--unit", "q_A^-1",
               "--npt", "120")
    assert rc == 0, capsys.readouterr().err
    want = integrate(f0.image, g, spots=np.load(d / "m1.npy")[0], detector_mask=f0.detector_mask, npt=120,
                     unit="q_A^-1")
    masked = np.loadtxt(d / "one.xy")
    unmasked = np.loadtxt(d / "one_unmasked.xy")
    assert masked.shape == (120, 2)
    np.testing.assert_allclose(masked[:, 0], want.radial, rtol=1e-7)
    np.testing.assert_allclose(masked[:, 1], want.masked, rtol=1e-7, atol=1e-30)
    np.testing.assert_allclose(unmasked[:, 1], want.unmasked, rtol=1e-7, atol=1e-30)
    header = [ln for ln in (d / "one.xy").read_text().splitlines() if ln.startswith("#")]
    assert "frame.npy" in header[0] and "masked" in header[0] and header[-1] == "# q_A^-1 intensity"


def test_integrate_stack_to_xy_one_file_per_frame(setup, capsys):
    d, g, f0, f1 = setup
    rc = _mask(d, d / "stack.npy", "--out", d / "m2.npy", "--integrate", d / "s.xy", "--npt", "50")
    assert rc == 0, capsys.readouterr().err
    spots = np.load(d / "m2.npy")
    for k, f in enumerate((f0, f1)):
        want = integrate(f.image, g, spots=spots[k], detector_mask=f0.detector_mask, npt=50)
        np.testing.assert_allclose(np.loadtxt(d / f"s_{k}.xy")[:, 1], want.masked, rtol=1e-7, atol=1e-30)
        np.testing.assert_allclose(np.loadtxt(d / f"s_{k}_unmasked.xy")[:, 1], want.unmasked, rtol=1e-7, atol=1e-30)
    assert not (d / "s.xy").exists()


@pytest.mark.parametrize("extra, text", [
    (["--integrate", "{d}/x.txt"], "unsupported output format .txt"),
    (["--integrate", "{d}/out.h5"], "is the same file as --out"),
    (["--integrate", "{d}/x.h5", "--unit", "chi_deg"], "invalid choice"),
])
def test_integrate_errors_are_one_line(setup, capsys, extra, text):
    d = setup[0]
    rc = _mask(d, d / "frame.npy", "--out", d / "out.h5", *[e.format(d=d) for e in extra])
    err = capsys.readouterr().err
    assert rc == 2 and text in err and err.count("\n") == 1, err
    assert not (d / "out.h5").exists() and not (d / "x.h5").exists() and not (d / "x.txt").exists()


def test_integrate_never_replaces_an_input(setup, capsys):
    d = setup[0]
    before = (d / "frame.h5").read_bytes()
    rc = _mask(d, f"{d / 'frame.h5'}::/data", "--out", d / "o2.npy", "--integrate", d / "frame.h5")
    err = capsys.readouterr().err
    assert rc == 2 and "is the input file" in err and err.count("\n") == 1
    assert (d / "frame.h5").read_bytes() == before and not (d / "o2.npy").exists()


def test_integrate_needs_poni_and_one_method_for_xy(setup, capsys):
    d = setup[0]
    rc = main(["mask", str(d / "frame.npy"), "--out", str(d / "o.npy"), "--integrate", str(d / "p.xy")])
    err = capsys.readouterr().err
    assert rc == 2 and "--integrate" in err and "--poni" in err and err.count("\n") == 1
    rc = main(["mask", str(d / "frame.npy"), "--out", str(d / "o.h5"), "--method", "both", "--poni",
               str(d / "det.poni"), "--integrate", str(d / "p.xy")])
    err = capsys.readouterr().err
    assert rc == 2 and "use .h5 with --method both" in err and err.count("\n") == 1
    assert not (d / "o.npy").exists() and not (d / "o.h5").exists() and not (d / "p.xy").exists()


def test_missing_pyfai_is_a_one_line_error(setup, capsys, monkeypatch):
    import sys

    d = setup[0]
    monkeypatch.setitem(sys.modules, "pyFAI.detectors", None)
    rc = _mask(d, d / "frame.npy", "--out", d / "n.npy", "--integrate", d / "n.h5")
    err = capsys.readouterr().err
    assert rc == 2 and "gixdrt[powder]" in err and err.count("\n") == 1
    assert not (d / "n.npy").exists()


def test_evaluate_powder_intensities(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["evaluate-powder", "--n", "1", "--size", "256", "--seed", "11", "--intensities", "--no-progress",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "integrated peak areas" in text and "true mask" in text and "unet mask" in text
    rep = json.loads(out.read_text())
    s = rep["intensities"]["summary"]
    assert s["rings"] == len(rep["intensities"]["per_ring"])
    assert rep["methods"]["unet"]["intensity_error"]["masked"] == s["unet"]


def test_demo_powder_writes_a_png(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["demo", "--powder", "--size", "256"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    png = tmp_path / "gixdrt-demo" / "powder.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "spots found" in text and "no spot mask" in text and str(png) in text and "replaced" not in text
    rc = main(["demo", "--powder", "--size", "256", "--out-dir", str(tmp_path / "gixdrt-demo")])
    assert rc == 0 and "(replaced the existing file)" in capsys.readouterr().out
    assert [p.name for p in png.parent.iterdir()] == ["powder.png"]  # no temporary file left
    rc = main(["demo", "--powder", "--live"])
    err = capsys.readouterr().err
    assert rc == 2 and "choose one" in err and err.count("\n") == 1
