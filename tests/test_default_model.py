"""gixdrt's own models shipped in the package (src/gixdrt/model/weights/NAME): small, fp16, with a complete card
whose real-frame claim is re-checked here, with their ONNX graphs (the CPU runtime's artifacts) recorded in the
card and made from exactly these weights; and `gixdrt detect --model default` finds the published 12 rings of the
real frame."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.model import zoo

MODELS = zoo.builtin()


def _rings(table_q, published_assets):
    from gixdrt.geometry import load_config
    from gixdrt.testing import match_rings, published_ring_q

    q_max = load_config(published_assets.config).geometry.q_max
    return match_rings(table_q, published_ring_q(q_max), tol_q=0.01)


@pytest.mark.parametrize("name", MODELS or [pytest.param("none", marks=pytest.mark.skip("no built-in models"))])
def test_builtin_model_is_small_fp16_and_carded(name):
    from gixdrt.model import read_card

    d = zoo.WEIGHTS / name
    assert (d / "model.safetensors").stat().st_size < 16 * 1024 * 1024
    card = read_card(d)
    assert card["storage_dtype"] == "float16"
    prov = card["provenance"]
    assert prov["source"] == "trained" and prov["steps"] > 0 and "config" in prov and "hardware" in prov
    assert "wall_time_s" in prov and "seed" in prov and prov["selection"]["chosen_step"] == prov["steps"]
    ev = card["evaluation"]["default_simulator"]
    assert ev["n_images"] >= 1000 and set(ev["models"]) >= {name, "published"}
    if name == "default":
        assert card["real_frame"]["rings_found"] == 12 and zoo.describe("default") == f"default ({card['name']})"
        # the bar: at least as good as the published checkpoint on the paper's table, on the same set
        ours, theirs = ev["models"]["default"], ev["models"]["published"]
        assert ours["detected_pct"] >= theirs["detected_pct"] and ours["fp_per_target_pct"] <= theirs["fp_per_target_pct"]
        assert ours["dq_p95_px"] <= theirs["dq_p95_px"]
        assert ours["images_with_miss_pct"] <= theirs["images_with_miss_pct"]
        assert ours["images_with_fp_pct"] <= theirs["images_with_fp_pct"]
    model = zoo.load(name)
    assert model.card["name"] == card["name"] and not model.training


@pytest.mark.parametrize("name", MODELS or [pytest.param("none", marks=pytest.mark.skip("no built-in models"))])
def test_builtin_model_ships_its_graphs_made_from_its_weights(name):
    """dense.onnx and head.onnx beside the weights: under 16 MiB each, as the card records them (sha256, sizes),
    exported from these very weights (the state dict's digest), with the current export version."""
    import hashlib

    from gixdrt.export import EXPORT_VERSION, graph_metadata, model_digest
    from gixdrt.model import read_card

    d = zoo.WEIGHTS / name
    graphs = read_card(d)["graphs"]
    assert graphs["export_version"] == EXPORT_VERSION, "re-export the shipped graphs: python tools/ship_graphs.py"
    digest = model_digest(zoo.load(name))
    assert graphs["model_sha256"] == digest
    for kind in ("dense", "head"):
        path = d / graphs[kind]["file"]
        data = path.read_bytes()
        assert len(data) == graphs[kind]["bytes"] < 16 * 1024 * 1024
        assert hashlib.sha256(data).hexdigest() == graphs[kind]["sha256"]
        meta = graph_metadata(path)
        assert meta["gixdrt.model_sha256"] == digest and meta["gixdrt.graph"] == kind
        assert meta["gixdrt.export_version"] == str(EXPORT_VERSION)


def test_package_stays_small():
    """Everything the wheel carries from the package folder: ≤ 30 MB (weights, graphs, code)."""
    from pathlib import Path

    import gixdrt

    root = Path(gixdrt.__file__).parent
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total <= 30e6, f"{total / 1e6:.1f} MB in {root}"


@pytest.mark.published
@pytest.mark.parametrize("name", MODELS or [pytest.param("none", marks=pytest.mark.skip("no built-in models"))])
def test_builtin_model_real_frame_rings_as_carded(name, published_assets):
    """The real-frame rings the card claims (|Q| within 0.01 Å⁻¹ of the published 12 rings) are found."""
    from gixdrt.model import read_card
    from gixdrt.testing import real_frame_rings

    card = read_card(zoo.WEIGHTS / name)
    res = real_frame_rings(name, backend="onnxruntime")
    assert res["found"] == card["real_frame"]["rings_found"], res
    np.testing.assert_allclose([q for _, q in res["pairs"]], [q for _, q in card["real_frame"]["pairs_q"]], atol=1e-3)


@pytest.mark.published
@pytest.mark.skipif(not zoo.has_default_weights(), reason="gixdrt's own default model is not shipped yet")
def test_detect_default_finds_the_twelve_rings(tmp_path, published_assets):
    """`gixdrt detect --model default` on the real frame: every published ring within 0.01 Å⁻¹ in |Q|."""
    from gixdrt.cli import main
    from gixdrt.io import read_peaks

    out = tmp_path / "peaks.csv"
    rc = main(["detect", str(published_assets.frame), "--config", str(published_assets.config), "--model", "default",
               "--backend", "onnxruntime", "--out", str(out), "--no-progress"])
    assert rc == 0
    table = read_peaks(out)[0]
    res = _rings(table.q, published_assets)
    assert res["found"] == 12, f"missing rings at |Q| = {res['missing']} Å⁻¹; detected {np.round(table.q, 4).tolist()}"
    assert res["max_dq"] < 0.01
