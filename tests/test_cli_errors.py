"""What a user sees for bad input, options and outputs: one line, ``gixdrt <command>: error: <what>: <problem>``,
exit status 2, no traceback, no file written and no input touched.

The cases are grouped by category (usage, input files, configs, outputs, data, environment); each names the
fragment its message must hold. Every case runs the real command (``gixdrt.cli.main``) in a folder of small
inputs, and checks afterwards that the folder holds exactly the same files with the same bytes.
Also here: the exit statuses of an internal error (1, and --debug shows the traceback), of an interruption
(130) and of SIGTERM (143; a child process stopped while writing leaves no temporary file), and the library's
refusal to replace a file it read, whichever writer is asked to.
"""
from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from gixdrt.cli import main
from gixdrt.engine.base import cuda_gpu
from gixdrt.engine.trt import tensorrt_status

H_DET, W_DET = 60, 80  # the small detector of the config below → 32×64 polar images


# -------------------------------------------------------------------------------------------------
# A folder of inputs, good and bad
# -------------------------------------------------------------------------------------------------
def _config(**changes) -> dict:
    cfg = {
        "q_space": {"size_x": W_DET, "size_y": H_DET, "pixel_size": 0.2, "distance": 100, "wavelength": 1.0,
                    "incidence_angle": 0.5, "y0": 10, "z0": 8, "q_xy_max": 2.0, "q_z_max": 2.0, "flip_y": True,
                    "flip_x": False},
        "polar_config": {"algorithm": 1, "angular_size": 32, "q_size": 64},
        "contrast": {"coef": 5000.0, "limit": 2000.0, "log": True, "disable": False},
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if value is None:
            del cfg[section][name]
        else:
            cfg[section][name] = value
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import h5py
    import tifffile

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    frame = (rng.random((H_DET, W_DET)) * 100).astype(np.float32)
    (d / "cfg.yaml").write_text(yaml.safe_dump(_config()))
    np.save(d / "frame.npy", frame)
    np.save(d / "stack.npy", np.stack([frame, frame, frame]))
    tifffile.imwrite(d / "frame.tif", frame)
    with h5py.File(d / "scan.h5", "w") as f:
        f["entry/data/data"] = np.stack([frame, frame]).astype(np.uint16)
    os.symlink("scan.h5", d / "scan-link.h5")
    os.link(d / "scan.h5", d / "scan-hard.h5")
    with h5py.File(d / "big.h5", "w") as f:  # declares 10 × 40000 × 40000 (64 GB), stores nothing
        f.create_dataset("data", shape=(10, 40000, 40000), dtype="u4", chunks=(1, 100, 100))
    os.symlink("frame.npy", d / "link.npy")
    os.link(d / "frame.tif", d / "hard.tif")
    os.mkfifo(d / "fifo.npy")
    os.symlink("loop_b.npy", d / "loop_a.npy")
    os.symlink("loop_a.npy", d / "loop_b.npy")
    os.symlink("gone.npy", d / "dangling.npy")
    (d / "empty.npy").write_bytes(b"")
    (d / "notes.xyz").write_text("a frame? no")
    raw = (d / "frame.npy").read_bytes()
    (d / "truncated.npy").write_bytes(raw[: len(raw) // 2])
    (d / "huge.npy").write_bytes(raw.replace(b"(60, 80)", b"(600000, 80000)"))
    (d / "text.tif").write_text("not a TIFF at all")
    tifffile.imwrite(d / "small.tif", np.zeros((10, 10), np.float32))
    np.save(d / "nan.npy", np.where(rng.random((32, 64)) < 0.01, np.nan, rng.random((32, 64))).astype(np.float32))
    np.save(d / "range.npy", (rng.random((32, 64)) * 3).astype(np.float32))
    (d / "bad.yaml").write_text("q_space: [1, 2")
    (d / "bigpolar.yaml").write_text(yaml.safe_dump(_config(**{"polar_config.angular_size": 10**6,
                                                              "polar_config.q_size": 10**6})))
    (d / "bigdet.yaml").write_text(yaml.safe_dump(_config(**{"q_space.size_x": 10**6, "q_space.size_y": 10**6})))
    (d / "nodist.yaml").write_text(yaml.safe_dump(_config(**{"q_space.distance": None})))
    (d / "negdist.yaml").write_text(yaml.safe_dump(_config(**{"q_space.distance": -5})))
    (d / "beam.yaml").write_text(yaml.safe_dump(_config(**{"q_space.y0": 500})))
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "nomask.yaml").write_text(yaml.safe_dump({**_config(), "mask": "gone.tif"}))
    (d / "badmask.yaml").write_text(yaml.safe_dump({**_config(), "mask": {"saturation_value": "high"}}))
    with h5py.File(d / "mask.h5", "w") as f:
        f["mask"] = np.zeros((H_DET, W_DET), np.uint8)
    (d / "sim.npz").write_text("n_peaks: [1, 3]\n")  # a simulator YAML with an unlucky name
    os.symlink("sim.npz", d / "sim-link.npz")
    os.link(d / "sim.npz", d / "sim-hard.npz")
    (d / "cfg.csv").write_text(yaml.safe_dump(_config()))  # a config named like a peak table
    os.symlink("cfg.csv", d / "cfg-link.csv")
    os.link(d / "cfg.csv", d / "cfg-hard.csv")
    (d / "model.onnx").write_bytes(b"\x08\x07")
    (d / "afile").write_text("x")
    (d / "outdir").mkdir()
    return d


def _snapshot(folder: Path) -> dict[str, str]:
    """name → sha256 of every regular file (links followed), '<kind>' for the others (FIFOs are not opened)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        mode = os.lstat(p).st_mode
        if stat.S_ISLNK(mode):
            out[name] = f"link → {os.readlink(p)}"
        elif stat.S_ISREG(mode):
            out[name] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[name] = "dir" if stat.S_ISDIR(mode) else "special"
    return out


def _run(folder: Path, argv: list[str], capsys) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    return code, capsys.readouterr().err


# -------------------------------------------------------------------------------------------------
# The cases: (command line, fragment of the one-line message)
# -------------------------------------------------------------------------------------------------
DETECT = ["detect", "frame.npy", "--config", "cfg.yaml", "--out", "outdir/p.csv"]
PRE = ["--config", "cfg.yaml", "--out", "outdir/p.npy"]

USAGE = {
    "score-above-1": (DETECT + ["--score-threshold", "2"], "--score-threshold: 2 is outside [-1.0, 1.0]"),
    "score-nan": (DETECT + ["--score-threshold", "nan"], "--score-threshold: nan is outside"),
    "score-word": (DETECT + ["--score-threshold", "high"], "--score-threshold: 'high' is not a number"),
    "nms-negative": (DETECT + ["--nms-iou", "-1"], "--nms-iou: -1 is outside [0.0, 1.0]"),
    "nms-above-1": (DETECT + ["--nms-iou", "1.5"], "--nms-iou: 1.5 is outside [0.0, 1.0]"),
    "max-det-0": (DETECT + ["--max-detections", "0"], "--max-detections: 0 is outside [1, 100000]"),
    "max-det-negative": (DETECT + ["--max-detections", "-1"], "--max-detections: -1 is outside"),
    "threads-negative": (DETECT + ["--threads", "-3"], "--threads: -3 is outside [1, 1024]"),
    "threads-0": (DETECT + ["--threads", "0"], "--threads: 0 is outside [1, 1024]"),
    "batch-0": (DETECT + ["--batch", "0"], "--batch: 0 is outside [1, 4096]"),
    "sum-0": (DETECT + ["--sum", "0"], "--sum: 0 is outside [1, 100000]"),
    "sum-float": (DETECT + ["--sum", "1.5"], "--sum: '1.5' is not an integer"),
    "device-name": (DETECT + ["--device", "gpu7"], "--device: 'gpu7': expected cpu, cuda or cuda:N"),
    "device-index": (DETECT + ["--device", "cuda:x"], "--device: 'cuda:x': expected cpu, cuda or cuda:N"),
    "input-kind": (DETECT + ["--input", "sinogram"], "--input: invalid choice: 'sinogram'"),
    "backend": (DETECT + ["--backend", "magic"], "--backend: invalid choice: 'magic'"),
    "precision": (DETECT + ["--precision", "fp8"], "--precision: invalid choice: 'fp8'"),
    "out-missing": (["detect", "frame.npy", "--config", "cfg.yaml"], "the following arguments are required: --out"),
    "pre-index": (["preprocess", "stack.npy", *PRE, "--index", "-1"], "--index: -1: must be ≥ 0"),
    "pre-sum": (["preprocess", "stack.npy", *PRE, "--sum", "0"], "--sum: 0 is outside"),
    "pre-stage": (["preprocess", "frame.npy", *PRE, "--stage", "raw"], "--stage: invalid choice: 'raw'"),
    "pre-kernels": (["preprocess", "frame.npy", *PRE, "--kernels", "fpga"], "--kernels: invalid choice: 'fpga'"),
    "sim-n-0": (["simulate", "--n", "0", "--out", "outdir/s.npz"], "--n: 0 is outside [1, 10000000]"),
    "sim-n-word": (["simulate", "--n", "many", "--out", "outdir/s.npz"], "--n: 'many' is not an integer"),
    "sim-size-word": (["simulate", "--n", "1", "--size", "512by512", "--out", "outdir/s.npz"],
                      "--size: '512by512': expected HxW"),
    "sim-size-0": (["simulate", "--n", "1", "--size", "0x512", "--out", "outdir/s.npz"],
                   "--size: '0x512': height and width must be in [1, 16384]"),
    "sim-workers": (["simulate", "--n", "1", "--workers", "0", "--out", "outdir/s.npz"], "--workers: 0 is outside"),
    "sim-seed": (["simulate", "--n", "1", "--seed", "-1", "--out", "outdir/s.npz"], "--seed: -1 is outside"),
    "sim-start": (["simulate", "--n", "1", "--start", "-5", "--out", "outdir/s.npz"], "--start: -5: must be ≥ 0"),
    "eval-n-0": (["evaluate", "--n", "0", "--out-dir", "outdir/e"], "--n: 0 is outside"),
    "eval-batch": (["evaluate", "--batch", "0", "--out-dir", "outdir/e"], "--batch: 0 is outside"),
    "eval-size": (["evaluate", "--size", "100000x10", "--out-dir", "outdir/e"], "--size: '100000x10'"),
    "bench-runs": (["bench", "--runs", "0"], "--runs: 0 is outside [1, 1000000]"),
    "bench-warmup": (["bench", "--warmup", "-1"], "--warmup: -1 is outside"),
    "bench-threads": (["bench", "--threads", "-1"], "--threads: -1 is outside"),
    "export-shape": (["export", "--shape", "64by128", "--out", "outdir/m.onnx"], "--shape: '64by128': expected HxW"),
    "export-rois": (["export", "--rois", "0", "--out", "outdir/m.onnx"], "--rois: 0 is outside"),
    "export-batch": (["export", "--batch", "0", "--out", "outdir/m.onnx"], "--batch: 0 is outside"),
    "build-workspace": (["build", "model.onnx", "--out", "outdir/m.engine", "--workspace", "0"],
                        "--workspace: 0 is outside"),
    "build-profile": (["build", "model.onnx", "--out", "outdir/m.engine", "--batch", "1:2"],
                      "--batch: '1:2': expected N or MIN:OPT:MAX"),
    "train-steps": (["train", "--steps", "0"], "--steps: 0: must be ≥ 1"),
    "train-batch": (["train", "--batch-size", "0"], "--batch-size: 0 is outside"),
    "train-device": (["train", "--device", "tpu"], "--device: 'tpu': expected cpu, cuda or cuda:N"),
    "train-workers": (["train", "--num-workers", "-1"], "--num-workers: -1 is outside"),
    "unknown-command": (["detekt", "frame.npy"], "invalid choice: 'detekt'"),
}

INPUTS = {
    "missing": (["preprocess", "nope.npy", *PRE], "nope.npy: file not found"),
    "directory": (["preprocess", "outdir", *PRE], "outdir: is a directory, expected a frame file"),
    "fifo": (["preprocess", "fifo.npy", *PRE], "fifo.npy: not a regular file: a FIFO"),
    "link-loop": (["preprocess", "loop_a.npy", *PRE], "loop_a.npy: symbolic link loop"),
    "dangling-link": (["preprocess", "dangling.npy", *PRE], "dangling.npy: dangling symbolic link"),
    "empty": (["preprocess", "empty.npy", *PRE], "empty.npy: empty file"),
    "unknown-format": (["preprocess", "notes.xyz", *PRE], "notes.xyz: unknown frame format .xyz"),
    "truncated-npy": (["preprocess", "truncated.npy", *PRE], "truncated.npy: truncated .npy"),
    "enormous-npy": (["preprocess", "huge.npy", *PRE], "huge.npy: frame shape (600000, 80000) does not match the "
                                                       "detector size in the config"),
    "enormous-npy-polar": (["detect", "huge.npy", "--input", "polar", "--out", "outdir/p.csv"],
                           "huge.npy: declares frames of 600000×80000"),
    "enormous-h5-polar": (["detect", "big.h5", "--input", "polar", "--out", "outdir/p.csv"],
                          "big.h5::/data: declares frames of 40000×40000"),
    "not-a-tiff": (["preprocess", "text.tif", *PRE], "text.tif: not a readable image"),
    "wrong-shape": (["preprocess", "small.tif", *PRE], "small.tif: frame shape (10, 10) does not match the detector "
                                                       "size in the config, q_space.size_y × q_space.size_x = 60×80"),
    "wrong-shape-detect": (["detect", "small.tif", "--config", "cfg.yaml", "--out", "outdir/p.csv"],
                           "small.tif: frame shape (10, 10) does not match the detector size"),
    "h5-no-dataset": (["preprocess", "scan.h5::/nope", *PRE], "scan.h5::/nope: no dataset '/nope' in the file"),
    "dataset-of-npy": (["preprocess", "frame.npy::/x", *PRE], "'::/x' names an HDF5 dataset but this is not"),
    "index-past-end": (["preprocess", "scan.h5", *PRE, "--index", "5"], "--index 5: outside the stack of 2 frames"),
    "sum-past-end": (["preprocess", "scan.h5", *PRE, "--sum", "3"], "--sum 3: from --index 0 needs 3 frames"),
    "sum-single": (["preprocess", "frame.npy", *PRE, "--sum", "2"], "frame.npy: holds a single frame"),
    "glob-nothing": (["detect", "nomatch_*.tif", "--config", "cfg.yaml", "--out", "outdir/p.csv"],
                     "nomatch_*.tif: no file matches this pattern"),
    "detect-missing": (["detect", "frame.npy", "nope.tif", "--config", "cfg.yaml", "--out", "outdir/p.csv"],
                       "nope.tif: file not found"),
    "mask-missing": (DETECT + ["--mask", "nope.tif"], "nope.tif: file not found"),
    "mask-wrong-shape": (DETECT + ["--mask", "small.tif"], "small.tif: frame shape (10, 10) does not match the "
                                                          "detector, 60×80"),
    "mask-not-an-image": (DETECT + ["--mask", "notes.xyz"], "notes.xyz: unknown frame format .xyz"),
    "mask-with-polar": (["detect", "frame.npy", "--input", "polar", "--out", "outdir/p.csv", "--mask", "frame.npy"],
                        "--mask: masks apply to raw frames"),
    "sum-more-than-frames": (["detect", "scan.h5", "--config", "cfg.yaml", "--sum", "5", "--out", "outdir/p.csv"],
                             "no frames (fewer than --sum 5)"),
}

CONFIGS = {
    "raw-without-config": (["detect", "frame.npy", "--out", "outdir/p.csv"], "--config: raw frames need"),
    "config-missing": (["detect", "frame.npy", "--config", "nocfg.yaml", "--out", "outdir/p.csv"],
                       "nocfg.yaml: file not found"),
    "config-invalid-yaml": (["preprocess", "frame.npy", "--config", "bad.yaml", "--out", "outdir/p.npy"],
                            "bad.yaml: invalid YAML"),
    "config-a-list": (["preprocess", "frame.npy", "--config", "list.yaml", "--out", "outdir/p.npy"], "list.yaml: "),
    "polar-enormous": (["detect", "frame.npy", "--config", "bigpolar.yaml", "--out", "outdir/p.csv"],
                       "bigpolar.yaml: polar_config.angular_size: polar size must be in [2, 16384], got 1000000"),
    "detector-enormous": (["preprocess", "frame.npy", "--config", "bigdet.yaml", "--out", "outdir/p.npy"],
                          "bigdet.yaml: q_space.size_y × q_space.size_x: a detector of 1000000×1000000 pixels"),
    "key-missing": (["preprocess", "frame.npy", "--config", "nodist.yaml", "--out", "outdir/p.npy"],
                    "nodist.yaml: q_space.distance: missing key"),
    "distance-negative": (["preprocess", "frame.npy", "--config", "negdist.yaml", "--out", "outdir/p.npy"],
                          "negdist.yaml: q_space.distance: must be > 0"),
    "beam-outside": (["preprocess", "frame.npy", "--config", "beam.yaml", "--out", "outdir/p.npy"],
                     "beam.yaml: q_space.y0: beam centre column 500"),
    "config-mask-missing": (["detect", "frame.npy", "--config", "nomask.yaml", "--out", "outdir/p.csv"],
                            "mask.file: "),
    "config-mask-value": (["detect", "frame.npy", "--config", "badmask.yaml", "--out", "outdir/p.csv"],
                          "badmask.yaml: mask.saturation_value: expected a number, got 'high'"),
    "config-is-a-directory": (["preprocess", "frame.npy", "--config", "outdir", "--out", "outdir/p.npy"], "outdir: "),
}

OUTPUTS = {
    "pre-out-is-input": (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "frame.npy"],
                         "--out frame.npy: is the input file frame.npy; gixdrt never replaces an input"),
    "pre-out-symlink": (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "link.npy"],
                        "--out link.npy: is the input file frame.npy (through a symbolic link)"),
    "pre-out-hard-link": (["preprocess", "frame.tif", "--config", "cfg.yaml", "--out", "hard.tif"],
                          "--out hard.tif: is the input file frame.tif (a hard link to it)"),
    "pre-out-tiff-input": (["preprocess", "frame.tif", "--config", "cfg.yaml", "--out", "frame.tif"],
                           "--out frame.tif: is the input file frame.tif"),
    "pre-out-directory": (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "outdir"],
                          "--out outdir: unsupported output format (no suffix)"),
    "pre-out-directory-suffix": (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "outdir/"],
                                 "unsupported output format"),
    "pre-out-under-a-file": (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "afile/x.npy"],
                             "--out afile/x.npy: afile is not a directory"),
    "pre-out-format": (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "outdir/x.jpg"],
                       "--out outdir/x.jpg: unsupported output format .jpg; use .npy, .png, .tif, .tiff"),
    "detect-h5-out-is-input": (["detect", "scan.h5", "--config", "cfg.yaml", "--out", "scan.h5"],
                               "--out scan.h5: is the input file scan.h5"),
    "detect-out-dataset-spec": (["detect", "scan.h5::/entry/data/data", "--config", "cfg.yaml", "--out", "scan.h5"],
                                "--out scan.h5: is the input file scan.h5"),
    "detect-gixi-is-input": (["detect", "scan.h5", "--config", "cfg.yaml", "--out", "outdir/p.csv",
                              "--gixi-compat", "scan.h5"], "--gixi-compat scan.h5: is the input file scan.h5"),
    "detect-gixi-is-out": (["detect", "frame.npy", "--config", "cfg.yaml", "--out", "outdir/p.h5",
                            "--gixi-compat", "outdir/p.h5"], "--gixi-compat outdir/p.h5: is the same file as --out"),
    "detect-gixi-format": (["detect", "frame.npy", "--config", "cfg.yaml", "--out", "outdir/p.csv",
                            "--gixi-compat", "x.txt"], "--gixi-compat x.txt: unsupported output format .txt"),
    "detect-gixi-processed": (["detect", "frame.npy", "--input", "processed", "--out", "outdir/p.csv",
                               "--gixi-compat", "outdir/g.h5"], "--gixi-compat: stores the polar image"),
    "detect-out-format": (["detect", "frame.npy", "--config", "cfg.yaml", "--out", "p.npy"],
                          "--out p.npy: unsupported output format .npy; use .csv, .h5, .hdf5"),
    "detect-out-directory": (["detect", "frame.npy", "--config", "cfg.yaml", "--out", "afile/p.csv"],
                             "afile is not a directory"),
    "simulate-out-is-config": (["simulate", "--n", "1", "--sim-config", "sim.npz", "--out", "sim.npz"],
                               "--out sim.npz: is the input file sim.npz"),
    "simulate-out-symlink": (["simulate", "--n", "1", "--sim-config", "sim.npz", "--out", "sim-link.npz"],
                             "--out sim-link.npz: is the input file sim.npz (through a symbolic link)"),
    "simulate-out-hard-link": (["simulate", "--n", "1", "--sim-config", "sim.npz", "--out", "sim-hard.npz"],
                               "--out sim-hard.npz: is the input file sim.npz (a hard link to it)"),
    "csv-out-is-config": (["detect", "frame.npy", "--config", "cfg.csv", "--out", "cfg.csv"],
                          "--out cfg.csv: is the input file cfg.csv"),
    "csv-out-symlink": (["detect", "frame.npy", "--config", "cfg.csv", "--out", "cfg-link.csv"],
                        "--out cfg-link.csv: is the input file cfg.csv (through a symbolic link)"),
    "csv-out-hard-link": (["detect", "frame.npy", "--config", "cfg.csv", "--out", "cfg-hard.csv"],
                          "--out cfg-hard.csv: is the input file cfg.csv (a hard link to it)"),
    "gixi-symlink": (["detect", "scan.h5", "--config", "cfg.yaml", "--out", "outdir/p.csv", "--gixi-compat",
                      "scan-link.h5"], "--gixi-compat scan-link.h5: is the input file scan.h5 (through a symbolic link)"),
    "h5-out-hard-link": (["detect", "scan.h5", "--config", "cfg.yaml", "--out", "scan-hard.h5"],
                         "--out scan-hard.h5: is the input file scan.h5 (a hard link to it)"),
    "out-is-mask": (["detect", "frame.npy", "--config", "cfg.yaml", "--mask", "mask.h5", "--out", "mask.h5"],
                    "--out mask.h5: is the input file mask.h5"),
    "simulate-out-format": (["simulate", "--n", "1", "--out", "outdir/s.h5"], "unsupported output format .h5"),
    "bench-json-is-input": (["bench", "frame.npy", "--config", "cfg.yaml", "--json", "frame.npy"],
                            "--json frame.npy: is the input file frame.npy"),
    "demo-out-dir-file": (["demo", "--out-dir", "afile"], "--out-dir afile: exists and is not a directory"),
    "build-out-is-graph": (["build", "model.onnx", "--out", "model.onnx"], "--out model.onnx: is the input file"),
    "export-out-format": (["export", "--out", "outdir/m.trt"], "--out must name an .onnx file"),
    "convert-out-file": (["convert", "--out", "afile"], "--out afile: exists and is not a directory"),
    "evaluate-out-dir-file": (["evaluate", "--out-dir", "afile"], "--out-dir afile: exists and is not a directory"),
    "train-run-dir-file": (["train", "--run-dir", "afile"], "--run-dir afile: exists and is not a directory"),
}

DATA = {
    "processed-nan": (["detect", "nan.npy", "--input", "processed", "--out", "outdir/p.csv"],
                      "non-finite pixel(s); a processed image must hold values in [0, 1]"),
    "processed-out-of-range": (["detect", "range.npy", "--input", "processed", "--out", "outdir/p.csv"],
                               "range.npy: values from"),
    "device-cuda-absent": (DETECT + ["--device", "cuda"], "--device cuda: device 'cuda' was asked for, but there is "
                                                          "no CUDA GPU here"),
    "torch-fp16": (DETECT + ["--backend", "torch", "--precision", "fp16"],
                   "--backend torch --precision fp16: precision fp16 is for"),
    "tensorrt-absent": (DETECT + ["--backend", "tensorrt"], "--backend tensorrt: backend 'tensorrt' on cuda is not "
                                                            "available here"),
}

CASES = {f"{group}/{name}": case for group, cases in
         [("usage", USAGE), ("input", INPUTS), ("config", CONFIGS), ("output", OUTPUTS), ("data", DATA)]
         for name, case in cases.items()}


def test_there_are_enough_cases():
    assert len(CASES) >= 80


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_status_2(name, data, capsys, monkeypatch):
    argv, fragment = CASES[name]
    if name == "data/device-cuda-absent" and cuda_gpu()[0]:
        pytest.skip("this machine has a CUDA GPU")
    if name == "data/tensorrt-absent" and tensorrt_status() is None:
        pytest.skip("TensorRT can run here")
    monkeypatch.setenv("GIXDRT_OFFLINE", "1")  # nothing here needs the network: fail fast if it would
    before = _snapshot(data)
    code, err = _run(data, argv, capsys)
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 2, err
    assert "Traceback" not in err, err
    prog = "gixdrt" if name == "usage/unknown-command" else f"gixdrt {argv[0]}"
    assert len(errors) == 1 and errors[0].startswith(f"{prog}: error: "), err
    assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    # besides the error, at most the command's own status and warning lines
    assert all(ln.startswith(prog) for ln in err.splitlines() if ln.strip()), err
    assert _snapshot(data) == before  # no input touched, no output or temporary file left


# -------------------------------------------------------------------------------------------------
# Warnings: a valid run that cannot find anything says so
# -------------------------------------------------------------------------------------------------
def test_a_q_range_that_misses_the_detector_is_warned_about(data, tmp_path, capsys):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(_config(**{"q_space.q_xy_max": 1e-6, "q_space.q_z_max": 1e-6})))
    code, err = _run(data, ["preprocess", "frame.npy", "--config", str(tiny), "--out", str(tmp_path / "t.npy")], capsys)
    assert code == 0
    assert "gixdrt preprocess: warning: the 32×64 polar grid samples only 2 distinct detector pixels" in err, err
    far = tmp_path / "far.yaml"
    far.write_text(yaml.safe_dump(_config(**{"q_space.q_xy_max": 60.0, "q_space.q_z_max": 60.0})))
    code, err = _run(data, ["preprocess", "frame.npy", "--config", str(far), "--out", str(tmp_path / "f.npy")], capsys)
    assert code == 0 and "% of the 32×64 polar grid falls on the detector" in err, err


# -------------------------------------------------------------------------------------------------
# Exit statuses other than 2
# -------------------------------------------------------------------------------------------------
def test_an_internal_error_is_one_line_with_status_1_and_debug_shows_the_traceback(data, capsys, monkeypatch):
    import gixdrt.gixd.preprocess as pre

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pre.Preprocessor, "__call__", broken)
    argv = ["preprocess", "frame.npy", *PRE]
    code, err = _run(data, argv, capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == ("gixdrt preprocess: error: internal error (RuntimeError: a bug); run it again with --debug "
                           "for the traceback and report it")
    with pytest.raises(RuntimeError, match="a bug"):
        _run(data, argv + ["--debug"], capsys)


def test_debug_prints_the_traceback_of_a_user_error(data, capsys):
    code, err = _run(data, ["preprocess", "nope.npy", *PRE, "--debug"], capsys)
    assert code == 2 and "Traceback" in err and err.strip().endswith("gixdrt preprocess: error: nope.npy: file not found")


def test_interrupt_is_status_130(data, capsys, monkeypatch):
    import gixdrt.gixd.preprocess as pre

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pre.Preprocessor, "__call__", interrupted)
    before = _snapshot(data)
    code, err = _run(data, ["preprocess", "frame.npy", *PRE], capsys)
    assert code == 130 and err.strip() == "gixdrt preprocess: interrupted; no output was written or replaced"
    assert _snapshot(data) == before


def test_kernels_on_the_gpu_without_one(data, capsys, monkeypatch):
    import gixdrt.kernels.registry as registry

    monkeypatch.setattr(registry, "cuda_unavailable_reason", lambda: "no CUDA GPU or driver was found")
    before = _snapshot(data)
    code, err = _run(data, ["preprocess", "frame.npy", *PRE, "--kernels", "cuda"], capsys)
    assert code == 2 and err.strip() == ("gixdrt preprocess: error: --kernels cuda: the CUDA kernels cannot run here: "
                                         "no CUDA GPU or driver was found")
    assert _snapshot(data) == before


@pytest.mark.cudasim
def test_kernels_on_the_gpu_from_the_command_line(data, tmp_path, capsys):
    """--kernels cuda copies the frame to the GPU (the simulator here), runs there and copies the image back."""
    from gixdrt.kernels.registry import cuda_unavailable_reason

    if cuda_unavailable_reason():
        pytest.skip(cuda_unavailable_reason())
    out = {k: tmp_path / f"{k}.npy" for k in ("cuda", "reference")}
    for impl, path in out.items():
        code, err = _run(data, ["preprocess", "frame.npy", "--config", "cfg.yaml", "--stage", "polar", "--out",
                                str(path), "--kernels", impl], capsys)
        assert code == 0, err
    np.testing.assert_allclose(np.load(out["cuda"]), np.load(out["reference"]), rtol=1e-5, atol=1e-4)


def test_signal_handlers_are_restored(data, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    _run(data, ["preprocess", "nope.npy", *PRE], capsys)
    assert signal.getsignal(signal.SIGTERM) is previous


# A child process runs a command and stops, announcing READY, at the moment its output exists only as a temporary
# file: inside the atomic write of the output (preprocess) or in the middle of the frames, with the --gixi-compat
# file open (detect). The parent sends SIGTERM or SIGHUP there.
CHILD = textwrap.dedent("""
    import os, sys, time
    import gixdrt.io.atomic as atomic
    import gixdrt.gixd.pipeline as pipeline
    from gixdrt.cli import main

    def announce():
        print("READY", flush=True)
        time.sleep(60)

    if sys.argv[1] == "preprocess":
        fsync = os.fsync
        def slow_fsync(fd):
            fsync(fd)
            announce()
        atomic.os.fsync = slow_fsync
    else:
        def stuck(self, frames, progress=None):
            announce()
        pipeline.Pipeline.run = stuck
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("argv, sig", [
    (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "{out}/p.tif"], signal.SIGTERM),
    (["detect", "frame.npy", "--config", "cfg.yaml", "--out", "{out}/p.h5", "--gixi-compat", "{out}/g.h5"],
     signal.SIGTERM),
    (["preprocess", "frame.npy", "--config", "cfg.yaml", "--out", "{out}/p.npy"], signal.SIGHUP),
], ids=["preprocess-SIGTERM", "detect-SIGTERM", "preprocess-SIGHUP"])
def test_a_signal_mid_run_leaves_no_file(data, tmp_path, argv, sig):
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.h5").write_bytes(b"an older result")  # an earlier output stays as it was
    args = [a.format(out=out) for a in argv]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=data, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "GIXDRT_OFFLINE": "1"})
    try:
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.wait(timeout=30)
            pytest.fail(f"the child did not get to its output: {line!r}, {proc.stderr.read()}")
        assert any(p.name.endswith(".part" + Path(args[args.index("--out") + 1]).suffix) or ".part" in p.name
                   for p in out.iterdir())  # the temporary file exists now
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["p.h5"] and (out / "p.h5").read_bytes() == b"an older result"


# -------------------------------------------------------------------------------------------------
# The library: no writer replaces a file a reader opened
# -------------------------------------------------------------------------------------------------
@pytest.fixture
def inputs(tmp_path):
    """Copies of inputs read through gixdrt's readers, and links to them."""
    import h5py
    import tifffile

    frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    paths = {"npy": tmp_path / "a.npy", "tif": tmp_path / "a.tif", "h5": tmp_path / "a.h5"}
    np.save(paths["npy"], frame)
    tifffile.imwrite(paths["tif"], frame)
    with h5py.File(paths["h5"], "w") as f:
        f["data"] = frame
    from gixdrt.io import read_frame

    for p in paths.values():
        read_frame(p)
    for kind, p in paths.items():
        os.symlink(p, tmp_path / f"sym.{kind}")
        os.link(p, tmp_path / f"hard.{kind}")
    return paths


def _writers():
    from gixdrt.gixd.peaks import PeakTable
    from gixdrt.io import write_image, write_peaks
    from gixdrt.io.gixi_compat import GixiCompatWriter

    def gixi(path):
        with GixiCompatWriter(path) as w:
            w.add(0, "x", PeakTable.empty(), np.zeros((4, 4), np.float32))

    def simulate(path):
        from gixdrt.sim import simulate_to_file

        simulate_to_file(1, 0, path, size=(64, 64), progress=False)

    image = np.zeros((4, 4), np.float32)
    return {
        "csv": lambda p: write_peaks(p, PeakTable.empty(), n_frames=1),
        "hdf5": lambda p: write_peaks(p, PeakTable.empty(), n_frames=1),
        "gixi": gixi,
        "image": lambda p: write_image(p, image),
        "simulate": simulate,
    }


#: the files a writer could be asked to replace: inputs read by the readers, whose suffix the writer takes
WRITER_TARGETS = [("hdf5", t) for t in ("h5", "sym.h5", "hard.h5")] + [("gixi", t) for t in ("h5", "sym.h5", "hard.h5")] \
    + [("image", t) for t in ("npy", "tif", "sym.npy", "hard.tif", "sym.tif", "hard.npy")]


@pytest.mark.parametrize("writer, target", WRITER_TARGETS, ids=[f"{w}-{t}" for w, t in WRITER_TARGETS])
def test_no_writer_replaces_an_input(inputs, tmp_path, writer, target):
    from gixdrt.io.atomic import OutputError

    path = inputs[target] if target in inputs else tmp_path / target
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match="is the input file .*gixdrt never replaces an input"):
        _writers()[writer](path)
    assert _snapshot(tmp_path) == before


def test_writing_elsewhere_still_works_after_reading(inputs, tmp_path):
    for name, write in _writers().items():
        suffix = {"csv": ".csv", "hdf5": ".h5", "gixi": ".h5", "image": ".npy", "simulate": ".npz"}[name]
        out = tmp_path / f"out-{name}{suffix}"
        write(out)
        assert out.is_file() and out.stat().st_size > 0
    assert not list(tmp_path.glob(".*part*"))


def test_check_output_refuses_unwritable_locations(tmp_path):
    from gixdrt.io.atomic import OutputError, check_output

    with pytest.raises(OutputError, match="is a directory; name a file"):
        check_output(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is not a directory"):
        check_output(tmp_path / "f" / "x.csv")
    with pytest.raises(OutputError, match="dangling symbolic link"):
        os.symlink(tmp_path / "nowhere", tmp_path / "d")
        check_output(tmp_path / "d" / "x.csv")
    assert check_output(tmp_path / "new" / "deeper" / "x.csv") == tmp_path / "new" / "deeper" / "x.csv"
    assert not (tmp_path / "new").exists()  # checked, nothing created
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(OutputError, match="is not writable"):
                check_output(ro / "x.csv")
        finally:
            ro.chmod(0o700)


def test_a_late_failure_of_the_output_cannot_happen(data, tmp_path, capsys, monkeypatch):
    """The output location is checked before the first frame: nothing is computed for a run that cannot write."""
    import gixdrt.gixd.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline.Pipeline, "run", lambda *a, **k: calls.append(1))
    code, err = _run(data, ["detect", "frame.npy", "--config", "cfg.yaml", "--out", "afile/p.csv"], capsys)
    assert code == 2 and calls == [] and "afile is not a directory" in err
