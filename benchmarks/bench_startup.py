"""How long a user waits for the first peaks: ``gixdrt detect`` on the published real frame in a fresh install.

    python benchmarks/bench_startup.py [--warm 3] [--compare REV] [--keep DIR] [--out FILE.json]

For this checkout (and, with ``--compare REV``, for another revision of the repository, built the same way):

1. a wheel is built (``pip wheel --no-deps``; its size is recorded) and installed with its base dependencies
   into a new virtual environment: what ``pip install gixdrt`` gives, without PyTorch (for a revision whose
   base install cannot detect without PyTorch, the ``[torch]`` extra is added and that is said in the result);
2. **cold**: the first ``gixdrt detect FRAME --config CONFIG --out peaks.csv`` in that environment, whole process
   wall time (everything a first run pays: Python byte code already compiled by pip, nothing else cached:
   a fresh ``GIXDRT_CACHE`` and ``NUMBA_CACHE_DIR``, so exported graphs and JIT caches start empty; the
   published frame is read from the shared asset cache, its download is not counted);
3. **warm**: the same command ``--warm`` more times (median), caches as the first run left them;

Writes ``benchmarks/results/startup-cpu.json`` and ``startup-cpu.png`` (bars: cold and warm per revision), and
prints a table. Installing takes minutes (the wheels come from pip's cache after the first time).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, install_checkout, save

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _detect(venv: Path, frame: Path, config: Path, out: Path, env: dict) -> tuple[float, str]:
    gixdrt = venv / "bin" / "gixdrt"
    t0 = time.perf_counter()
    proc = subprocess.run([str(gixdrt), "detect", str(frame), "--config", str(config), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"gixdrt detect failed in {venv}: {proc.stderr.strip().splitlines()[-1:]}")
    return wall, proc.stderr + proc.stdout


def measure(label: str, src: Path, work: Path, frame: Path, config: Path, warm: int) -> dict:
    venv = work / f"venv-{label}"
    try:
        info = install_checkout(src, venv)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"installing {label} failed: {(exc.stderr or b'')[-500:]}") from None
    cache = work / f"cache-{label}"
    env = {**os.environ, "GIXDRT_CACHE": str(cache), "NUMBA_CACHE_DIR": str(work / f"numba-{label}")}
    env.pop("PYTHONPATH", None)
    try:
        cold, log = _detect(venv, frame, config, work / f"peaks-{label}.csv", env)
    except RuntimeError:
        # a revision whose CPU runtime needs more than its base install (PyTorch and onnx to export its graphs):
        # its test extra, as its README installs it
        info.update(install_checkout(src, venv.with_name(venv.name + "-full"), extras="[test]"))
        venv = venv.with_name(venv.name + "-full")
        cold, log = _detect(venv, frame, config, work / f"peaks-{label}.csv", env)
    warm_s = [_detect(venv, frame, config, work / f"peaks-{label}.csv", env)[0] for _ in range(warm)]
    rows = sum(1 for _ in open(work / f"peaks-{label}.csv")) - 1
    info.pop("python", None)
    return {**info, "cold_s": round(cold, 2), "warm_s": [round(v, 2) for v in warm_s],
            "warm_median_s": round(statistics.median(warm_s), 2), "peaks": rows,
            "log_tail": log.strip().splitlines()[-3:]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["runs"])
    cold = [result["runs"][k]["cold_s"] for k in labels]
    warm = [result["runs"][k]["warm_median_s"] for k in labels]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], cold, 0.4, label="first run after install (cold)")
    ax.bar([i + 0.2 for i in x], warm, 0.4, label="later runs (warm, median)")
    for i, (c, w) in enumerate(zip(cold, warm)):
        ax.text(i - 0.2, c, f"{c:.1f} s", ha="center", va="bottom", fontsize=8)
        ax.text(i + 0.2, w, f"{w:.1f} s", ha="center", va="bottom", fontsize=8)
    ax.axhline(10, color="grey", lw=0.8, ls="--")
    ax.axhline(3, color="grey", lw=0.8, ls=":")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("seconds, whole process")
    ax.set_title("gixdrt detect on the real frame, fresh install (goals: 10 s cold, 3 s warm)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warm", type=int, default=3, help="warm runs after the first (default 3)")
    ap.add_argument("--compare", metavar="REV", help="also measure this git revision, built the same way")
    ap.add_argument("--keep", type=Path, help="keep the environments in this folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS / "startup-cpu.json")
    args = ap.parse_args(argv)

    from gixdrt.io import fetch_published

    assets = fetch_published(quiet=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="gixdrt-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict] = {}
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = bool(_run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
    try:
        if args.compare:
            rev = _run(["git", "-C", str(ROOT), "rev-parse", "--short", args.compare]).stdout.strip()
            src = work / f"src-{rev}"
            _run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), rev])
            runs[rev] = measure(rev, src, work, assets.frame, assets.config, args.warm)
        label = f"{head}{'+changes' if dirty else ''}"
        runs[label] = measure(head, ROOT, work, assets.frame, assets.config, args.warm)
    finally:
        if args.compare:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / f"src-{rev}")],
                           capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "startup", "environment": environment(), "frame": str(assets.frame.name),
              "command": "gixdrt detect FRAME --config CONFIG --out peaks.csv --no-progress", "runs": runs}
    path = save("startup-cpu", result, args.out)
    plot(result, path.with_suffix(".png"))
    print(f"{'revision':<18} {'wheel MB':>8} {'cold s':>7} {'warm s':>7} {'peaks':>5}  extras")
    for name, r in runs.items():
        print(f"{name:<18} {r['wheel_bytes'] / 1e6:8.1f} {r['cold_s']:7.2f} {r['warm_median_s']:7.2f} "
              f"{r['peaks']:5d}  {r['extras'] or '-'}")
    print(f"→ {path} and {path.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
