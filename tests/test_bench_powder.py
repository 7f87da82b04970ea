"""benchmarks/bench_powder.py --quick on a tiny frame: every method runs in its own process (the three at once, to
keep the test short) and the result file has every stage for every method, end-to-end times that cover the stages,
and peak memory."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pyFAI")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_powder.py"


def test_quick_run(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_powder", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    assert bench.main(["--quick", "--size", "256", "--jobs", "3", "--methods", "unet,unet-bf16,classical,authors",
                       "--out", str(out), "--png", str(png)]) == 0
    data = json.loads(out.read_text())
    assert data["frame"]["size"] == [256, 256] and data["stages"] == list(bench.STAGES)
    assert set(data["results"]) == {"unet", "unet-bf16", "classical", "authors"}
    for method, row in data["results"].items():
        st = row["stages_s"]
        assert set(bench.STAGES) <= set(st), method
        timed = [v for v in st.values() if v is not None]
        assert all(v >= 0 for v in timed)
        for s in ("read", "threshold", "integrate"):  # stages every method has
            assert st[s] > 0, (method, s)
        assert row["end_to_end_s"]["median"] >= 0.99 * sum(timed), method  # stages lie inside the whole
        assert row["peak_rss_mib"] > row["rss_before_method_mib"] * 0.99 > 10
        assert row["integrate_mask_changed_s"] > 0, method
    nulls = {m: [s for s in bench.STAGES if r["stages_s"][s] is None] for m, r in data["results"].items()}
    assert nulls == {"unet": [], "unet-bf16": [], "classical": ["normalise", "network", "stitch"], "authors": []}
    assert data["results"]["unet-bf16"]["settings"]["precision"] == "bf16"
    assert "load_average_1_5_15_start" in data["environment"]
    assert "skipped" in data["gpu"] or data["gpu"]["frames_per_s"] > 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
