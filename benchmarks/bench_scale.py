"""Scaling of ``gixdrt detect --cluster``: frames/s with 1 and 2 Dask worker processes on this machine, next to
the plain serial run, and the scheduler's overhead per unit.

The published real frame (2048×2048) and config with the default model, written as N single-frame ``.npy`` files
(one unit per file, as ``--unit file``). Each worker process runs one ONNX Runtime thread (``threads=1``) and
builds its engine before the clock starts (the worker plugin), so the numbers are the steady state of a long
reprocessing run. The rows are timed round-robin (serial, 1 worker, 2 workers, again...) so that load from other
processes on a shared machine falls on all of them alike; the load average is recorded. The serial row is ``process_unit`` called in a loop in one process with the default threads
(one per core): what ``gixdrt detect`` without ``--cluster`` does with the same frames.

Overhead: N no-op tasks (a function returning a small dict, as a unit's summary) on the 2-worker cluster, all
submitted at once (throughput) and one after another (round trip).

    python benchmarks/bench_scale.py [--frames 16] [--workers 1 2] [--rounds 2] [--noop 400]

Writes results/scale-cpu.json and results/scale-cpu.png.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save  # noqa: E402


def _noop(i: int) -> dict:
    return {"unit": i, "frames": 0}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_seconds() -> tuple[float, float]:
    """(busy core-seconds of the whole machine since boot from /proc/stat, wall seconds since boot); (nan, nan)
    where /proc/stat is missing."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
        hz = os.sysconf("SC_CLK_TCK")
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return (sum(ticks[:8]) - idle) / hz, time.monotonic()
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes, once their cluster closed)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_frames(folder: Path, n: int) -> tuple[list[str], str]:
    """N copies of the published frame, each with its own Poisson noise, as .npy files → (paths, config path)."""
    from gixdrt.io import fetch_published, read_frame

    assets = fetch_published(quiet=True)
    frame = read_frame(assets.frame)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        noisy = (frame + rng.poisson(1.0, frame.shape)).astype(frame.dtype)
        path = folder / f"frame_{i:04d}.npy"
        np.save(path, noisy)
        paths.append(str(path))
    return paths, str(assets.config)


def _rounds_stats(times: list[float], frames: int) -> dict:
    best = min(times)
    med = float(np.median(times))
    return {"seconds_per_round": [round(t, 3) for t in times], "median_s": round(med, 3),
            "frames_per_s": round(frames / med, 3), "best_frames_per_s": round(frames / best, 3)}


class Serial:
    """``process_unit`` in a loop in this process, default threads (one per core): gixdrt detect without --cluster."""

    def __init__(self, settings):
        from gixdrt.scale.worker import engine

        self.settings = settings
        self.mode, self.workers = "serial (1 process, default threads)", 1
        engine(settings)  # built before the clock, as the workers' plugin does

    def run(self, units) -> dict:
        from gixdrt.scale import process_unit

        t0 = time.perf_counter()
        frames = sum(process_unit(u, self.settings)["frames"] for u in units)
        return {"seconds": time.perf_counter() - t0, "frames": frames}

    def close(self) -> None:
        pass


class Cluster:
    """A LocalCluster of N worker processes (1 thread each) with the engine built by the worker plugin."""

    def __init__(self, settings, n_workers: int):
        from distributed import Client, LocalCluster

        from gixdrt.scale.runner import EnginePlugin

        self.settings, self.workers, self.mode = settings, n_workers, f"cluster, {n_workers} worker(s)"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            self.cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.CRITICAL)
        self.client = Client(self.cluster)
        t0 = time.perf_counter()
        self.client.register_plugin(EnginePlugin(settings), name=EnginePlugin.name)
        self.build_s = time.perf_counter() - t0

    def run(self, units) -> dict:
        from gixdrt.scale.runner import run_units

        report = run_units(self.client, units, self.settings, plugin=False)
        assert not report.failures, report.failures
        busy = sum(s["seconds"] for s in report.done.values())
        return {"seconds": report.seconds, "frames": sum(s["frames"] for s in report.done.values()),
                "busy": busy, "per_worker": report.per_worker()}

    def noop(self, n: int) -> dict:
        from distributed import wait

        wait([self.client.submit(_noop, i, pure=False) for i in range(20)])  # warm-up
        t0 = time.perf_counter()
        wait([self.client.submit(_noop, i, pure=False) for i in range(n)])
        bulk = time.perf_counter() - t0
        n_seq = min(n, 100)
        t0 = time.perf_counter()
        for i in range(n_seq):
            self.client.submit(_noop, i, pure=False).result()
        seq = time.perf_counter() - t0
        return {"tasks": n, "bulk_ms_per_task": round(1e3 * bulk / n, 3), "tasks_per_s": round(n / bulk, 1),
                "round_trip_ms": round(1e3 * seq / n_seq, 3), "round_trips": n_seq}

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def plot(rows: list[dict], path: Path, note: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["mode"].replace(" (1 process, default threads)", "\n(1 process, 2 threads)") for r in rows]
    rates = [r["frames_per_s"] for r in rows]
    ax.bar(names, rates, color=["0.6"] + ["C0"] * (len(rows) - 1))
    one = next((r["frames_per_s"] for r in rows if r["workers"] == 1 and r["mode"].startswith("cluster")), None)
    if one:
        for i, r in enumerate(rows):
            if r["mode"].startswith("cluster"):
                ax.plot([i - 0.4, i + 0.4], [one * r["workers"]] * 2, "k--", lw=1)
    for i, v in enumerate(rates):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("frames/s (2048×2048, default model)")
    ax.set_title(f"gixdrt detect --cluster on {os.cpu_count()} cores (dashed: N × 1 worker){note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    logging.getLogger("distributed").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16, help="frames (one .npy file and one unit each; default 16)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes (default 1 2)")
    ap.add_argument("--noop", type=int, default=400, help="no-op tasks for the overhead (default 400; 0: skip)")
    ap.add_argument("--model", default="default", help="model (default: default)")
    ap.add_argument("--no-serial", action="store_true", help="skip the serial row")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin passes over the frames (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    from gixdrt.io.sources import resolve_inputs, stack_sizes
    from gixdrt.scale import make_settings, plan_units

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        paths, config = make_frames(tmp, args.frames)
        files = resolve_inputs(paths)
        units, _ = plan_units(files, stack_sizes(files))
        load_before = _load()
        machine0, wall0 = _cpu_seconds()
        own0 = _own_cpu_seconds()
        runners = []
        if not args.no_serial:
            runners.append(Serial(make_settings(model=args.model, config=config, parts=tmp / "parts-serial")))
        for n in args.workers:
            runners.append(Cluster(make_settings(model=args.model, config=config, threads=1,
                                                 parts=tmp / f"parts-{n}"), n))
        times: dict[int, list] = {i: [] for i in range(len(runners))}
        try:
            for r in range(args.rounds):  # round-robin: load from other processes falls on all alike
                for i, runner in enumerate(runners):
                    times[i].append(runner.run(units))
                    print(f"round {r}: {runner.mode}: {args.frames / times[i][-1]['seconds']:.3f} frames/s "
                          f"(load {_load()})", flush=True)
            rows = []
            for i, runner in enumerate(runners):
                row = {"mode": runner.mode, "workers": runner.workers, "frames": args.frames,
                       **_rounds_stats([t["seconds"] for t in times[i]], args.frames)}
                if isinstance(runner, Cluster):
                    last = times[i][-1]
                    busy = float(np.median([t["busy"] for t in times[i]]))
                    row.update(engine_build_s=round(runner.build_s, 2), unit_busy_s=round(busy, 3),
                               busy_frames_per_s_per_worker=round(args.frames / busy, 3),
                               scheduling_overhead_s=round(row["median_s"] - busy / runner.workers, 3),
                               per_worker={k: {"units": v["units"], "frames": v["frames"],
                                               "frames_per_s_busy": round(v["rate"], 3)}
                                           for k, v in last["per_worker"].items()})
                    if args.noop and runner.workers == max(args.workers):
                        row["noop"] = runner.noop(args.noop)
                rows.append(row)
        finally:
            for runner in runners:
                runner.close()
        load_after = _load()
        machine1, wall1 = _cpu_seconds()
        time.sleep(0.5)  # the worker processes reaped
        own = _own_cpu_seconds() - own0
        machine = machine1 - machine0
        cpu = {"wall_s": round(wall1 - wall0, 1), "cores": os.cpu_count(), "machine_busy_core_s": round(machine, 1),
               "this_benchmark_core_s": round(own, 1), "other_processes_core_s": round(machine - own, 1),
               "other_processes_mean_cores": round((machine - own) / (wall1 - wall0), 2)}
        print(cpu)
    cl = {r["workers"]: r["frames_per_s"] for r in rows if r["mode"].startswith("cluster")}
    summary = {}
    if 1 in cl:
        for n, rate in cl.items():
            summary[f"speedup_{n}_workers"] = round(rate / cl[1], 3)
            summary[f"efficiency_{n}_workers"] = round(rate / cl[1] / n, 3)
    serial = next((r["frames_per_s"] for r in rows if r["mode"].startswith("serial")), None)
    if serial:
        for n, rate in cl.items():
            summary[f"cluster_{n}_over_serial"] = round(rate / serial, 3)
    payload = {"benchmark": "scale", "settings": {"frames": args.frames, "unit": "file (1 frame)",
                                                  "model": args.model, "worker_threads": 1, "rounds": args.rounds,
                                                  "frame": "published real frame + Poisson(1) noise, 2048×2048",
                                                  "timing": "round-robin passes (serial, 1 worker, 2 workers), "
                                                            "median per row; engines built before the clock"},
               "environment": {**environment(), "load_before": load_before, "load_after": load_after, "cpu": cpu},
               "results": rows, "summary": summary}
    path = save("scale-cpu", payload, args.out)
    plot(rows, (args.out or path).with_suffix(".png"),
         f"\nother processes took {cpu['other_processes_mean_cores']} cores on average")
    print(summary)
    print(f"→ {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
