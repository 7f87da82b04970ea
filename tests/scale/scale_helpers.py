"""Helpers of the reprocessing tests (inputs, the detect command line, table comparison)."""
from __future__ import annotations

import numpy as np

from gixdrt.gixd.peaks import COLUMNS

DETECT_OPTS = ["--score-threshold", "-1", "--max-detections", "3", "--no-progress"]


def write_inputs(d, seed: int = 0) -> list[str]:
    """A TIFF stack of 3 frames, an HDF5 stack of 7 (chunked, gzip: one frame per chunk), a single-frame .npy and a
    single-frame TIFF, 60×80 float32 (the small config's detector). Returns the input specs in run order."""
    import h5py
    import tifffile

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tifffile.imwrite(d / "stack.tif", (rng.random((3, 60, 80)) * 100).astype(np.float32), photometric="minisblack")
    with h5py.File(d / "scan.h5", "w") as f:
        f.create_dataset("entry/data/data", data=(rng.random((7, 60, 80)) * 100).astype(np.float32),
                         chunks=(1, 60, 80), compression="gzip")
    np.save(d / "single.npy", (rng.random((60, 80)) * 100).astype(np.float32))
    tifffile.imwrite(d / "one.tif", (rng.random((60, 80)) * 100).astype(np.float32), photometric="minisblack")
    return [str(d / "stack.tif"), f"{d / 'scan.h5'}::/entry/data/data", str(d / "single.npy"), str(d / "one.tif")]


def corrupt_chunk(path, frame: int) -> None:
    """Overwrite the middle of one frame's compressed chunk of ``path``'s /entry/data/data (the header stays good:
    the file is found corrupt only when that frame is read)."""
    import h5py

    with h5py.File(path, "r") as f:
        info = f["entry/data/data"].id.get_chunk_info(frame)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff" * min(200, info.size - 16))


def detect_args(inputs, out, config, model, *extra) -> list[str]:
    return ["detect", *map(str, inputs), "--config", str(config), "--model", str(model), "--out", str(out),
            *DETECT_OPTS, *extra]


def assert_same_table(got, want, linked: bool = False) -> None:
    """Column by column equal (source and frame too; track when linked), and the same frames counted."""
    (table, meta), (ref, ref_meta) = got, want
    assert len(table) == len(ref) > 0
    for name in (*COLUMNS, "track") if linked else COLUMNS:
        a, b = getattr(table, name), getattr(ref, name)
        assert (list(a) == list(b)) if name == "source" else np.array_equal(a, b, equal_nan=True), name
    if "frame_counts" in ref_meta:
        assert np.array_equal(meta["frame_counts"], ref_meta["frame_counts"])
