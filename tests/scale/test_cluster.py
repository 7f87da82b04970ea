"""``gixdrt detect --cluster`` on a LocalCluster of 2 worker processes (one per core here), shared by the module:
the serial run's table (linked too, --sum and hits too), a corrupt file reported while the other units finish, a
killed worker's unit done again elsewhere, an interrupted run resumed with only the missing units processed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from scale_helpers import assert_same_table, corrupt_chunk, detect_args, write_inputs

from gixdrt.cli import main
from gixdrt.io.writers import read_peaks

distributed = pytest.importorskip("distributed")

DELAY = "GIXDRT_TEST_UNIT_DELAY"  # the per-unit test hook of gixdrt.scale.worker


@pytest.fixture(scope="module")
def cluster():
    """(client, scheduler address) of a LocalCluster: 2 worker processes, 1 thread each, no dashboard."""
    import logging

    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                     silence_logs=logging.CRITICAL)
    client = distributed.Client(local)
    yield client, local.scheduler_address
    client.close()
    local.close()


def _set_delay(client, seconds):
    """Set (or with None remove) the per-unit delay in every worker process."""
    if seconds is None:
        client.run(lambda: os.environ.pop("GIXDRT_TEST_UNIT_DELAY", None))
    else:
        client.run(lambda: os.environ.__setitem__("GIXDRT_TEST_UNIT_DELAY", str(seconds)))


def test_same_table_as_serial(tmp_path, cluster, inputs, small_config, model_dir, serial, capsys):
    out = tmp_path / "run.h5"
    code = main(detect_args(inputs, out, small_config, model_dir, "--link", "--cluster", cluster[1],
                            "--unit", "frames:3"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    got = read_peaks(out)
    assert_same_table(got, serial, linked=True)  # tracks linked across unit boundaries: the same ids
    assert np.array_equal(got[1]["tracks"], serial[1]["tracks"])
    assert got[1]["cluster_units"] == 1 + 3 + 1 + 1  # stack.tif, scan.h5 in 3 ranges, single.npy, one.tif
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]  # parts folder and manifest removed
    assert "cluster: 6 unit(s), 12 frame(s)" in captured.out
    assert len([line for line in captured.out.splitlines() if "frames/s while busy" in line]) == 2  # per worker


def test_local_cluster_started_by_the_command(tmp_path, inputs, small_config, model_dir, serial, capsys):
    """--cluster local:2 starts (and stops) its own 2 worker processes."""
    out = tmp_path / "run.h5"
    assert main(detect_args(inputs, out, small_config, model_dir, "--link", "--cluster", "local:2",
                            "--unit", "files:2")) == 0
    assert_same_table(read_peaks(out), serial, linked=True)
    assert "cluster: 2 unit(s), 12 frame(s)" in capsys.readouterr().out


def test_sum_and_hits_as_serial(tmp_path, cluster, inputs, small_config, model_dir, capsys):
    """--sum 5 groups cross the first file's end; hits and the CXI file come from the merged table."""
    outs = {}
    for name, extra in (("serial", []), ("cluster", ["--cluster", cluster[1], "--unit", "frames:1"])):
        d = tmp_path / name
        assert main(detect_args(inputs, d / "run.h5", small_config, model_dir, "--sum", "5", "--min-peaks", "3",
                                "--hits", str(d / "hits.lst"), "--cxi", str(d / "run.cxi"), *extra)) == 0
        assert "warning: 2 frame(s) left over" in capsys.readouterr().err
        outs[name] = d
    want, got = read_peaks(outs["serial"] / "run.h5"), read_peaks(outs["cluster"] / "run.h5")
    assert_same_table(got, want)
    assert list(got[0].source[::3]) == [f"{inputs[0]}[0:3]+{inputs[1]}[0:2]", f"{inputs[1]}[2:7]"]
    assert (outs["cluster"] / "hits.lst").read_text() == (outs["serial"] / "hits.lst").read_text()
    assert np.array_equal(got[1]["frames"]["n_new"], want[1]["frames"]["n_new"])
    import h5py

    with h5py.File(outs["serial"] / "run.cxi") as a, h5py.File(outs["cluster"] / "run.cxi") as b:
        assert np.array_equal(a["entry_1/result_1/nPeaks"][()], b["entry_1/result_1/nPeaks"][()])


def test_bad_unit_reported_others_finish_then_rerun_does_the_rest(tmp_path, cluster, small_config, model_dir,
                                                                   capsys):
    d = tmp_path / "in"
    inputs = write_inputs(d, seed=3)
    good = tmp_path / "good.h5"
    shutil.copy(d / "scan.h5", good)
    corrupt_chunk(d / "scan.h5", 4)  # frame 4: the unit of frames 3…5 fails, the others are good
    out = tmp_path / "out" / "run.h5"
    args = detect_args(inputs, out, small_config, model_dir, "--cluster", cluster[1], "--unit", "frames:3",
                       "--retries", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 1
    assert "unit 2 (" in failed[0] and "scan.h5" in failed[0] and "at frame 4" in failed[0]
    assert "1 of 6 unit(s) failed; 5 unit(s), 9 of 12 frame(s) finished" in err
    assert not out.exists()  # a table with missing frames is never written
    manifest = json.loads((tmp_path / "out" / "run.h5.manifest.json").read_text())
    assert sorted(manifest["done"]) == ["0", "1", "3", "4", "5"]
    # another setting is refused, naming it, and nothing is lost
    assert main([*args, "--max-detections", "4"]) == 2
    assert "setting max_detections was 3, now 4" in capsys.readouterr().err
    # the file repaired (a new modification time): the same command keeps the units of the other files and does
    # the units of the replaced file again (3 ranges, 7 frames); the table is the serial one
    shutil.copy(good, d / "scan.h5")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "3 unit(s), 5 frame(s) done before" in captured.err
    assert "cluster: 3 unit(s), 7 frame(s)" in captured.out
    ref = tmp_path / "ref.h5"
    assert main(detect_args(inputs, ref, small_config, model_dir)) == 0
    assert_same_table(read_peaks(out), read_peaks(ref))
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5"]


def test_interrupted_run_resumes_only_the_missing_units(tmp_path, cluster, inputs, small_config, model_dir, serial):
    client, address = cluster
    out = tmp_path / "run.h5"
    manifest = tmp_path / "run.h5.manifest.json"
    args = detect_args(inputs, out, small_config, model_dir, "--cluster", address, "--unit", "frames:2")
    _set_delay(client, 0.5)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gixdrt.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        done = {}
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists():
                done = json.loads(manifest.read_text())["done"]
                if done:
                    break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        _set_delay(client, None)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "unit(s) finished are kept in" in err and "the same command resumes" in err
    assert not out.exists()
    before = json.loads(manifest.read_text())["done"]
    assert 1 <= len(before) < 8  # 3 + 7 frames in units of 2 (2, 1, 2, 2, 2, 1) + 2 single frames = 8 units
    code = main(args)
    assert code == 0
    assert_same_table(read_peaks(out), serial)
    assert not manifest.exists()


def test_killed_worker_unit_done_elsewhere(tmp_path, cluster, inputs, small_config, model_dir, serial):
    """A worker SIGKILLed while it runs a unit: the scheduler gives the unit to another worker; nothing fails."""
    from gixdrt.io.sources import resolve_inputs, stack_sizes
    from gixdrt.scale import make_settings, plan_units
    from gixdrt.scale.detect import merge_parts
    from gixdrt.scale.runner import run_units

    client, _ = cluster
    files = resolve_inputs(inputs)
    units, _ = plan_units(files, stack_sizes(files), frames_per_unit=4)  # 5 units
    settings = make_settings(model=model_dir, config=small_config, score_threshold=-1.0, max_detections=3,
                             parts=tmp_path / "parts")
    pids = client.run(os.getpid)
    result = {}
    _set_delay(client, 1.0)
    try:
        runner = threading.Thread(target=lambda: result.update(report=run_units(client, units, settings)))
        runner.start()
        deadline = time.monotonic() + 30
        victim = None
        while victim is None and time.monotonic() < deadline:
            for address, keys in client.processing().items():
                if keys and address in pids:
                    victim = address, [k for k in keys]
                    break
            time.sleep(0.05)
        assert victim is not None
        time.sleep(0.3)  # inside the unit (its delay)
        os.kill(pids[victim[0]], signal.SIGKILL)
        runner.join(timeout=60)
        assert not runner.is_alive()
    finally:
        _set_delay(client, None)
    report = result["report"]
    assert report.failures == []
    assert sorted(report.done) == [u.index for u in units]
    killed_units = [int(str(k).split("-")[2]) for k in victim[1]]
    for index in killed_units:  # done again by a live worker
        assert report.done[index]["worker"].rsplit(":", 1)[1] != str(pids[victim[0]])
    table, *_ = merge_parts(units, tmp_path / "parts")
    assert list(table.source) == list(serial[0].source)
    assert np.array_equal(table.score, serial[0].score)
    client.wait_for_workers(2, timeout=30)


def test_cluster_options_refused_in_one_line(tmp_path, small_config, model_dir, inputs, capsys):
    cases = [(["--cluster", "somewhere"], "--cluster somewhere: expected local:N or a scheduler address"),
             (["--unit", "frames:2"], "--unit: needs --cluster"),
             (["--fresh"], "--fresh: needs --cluster"),
             (["--cluster", "local:2", "--unit", "lines:2"], "--unit lines:2: expected file, files:K or frames:K"),
             (["--cluster", "local:2", "--gixi-compat", str(tmp_path / "g.h5")], "--gixi-compat: not available")]
    for extra, message in cases:
        assert main(detect_args(inputs, tmp_path / "o.h5", small_config, model_dir, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
