"""gixdrt's own models shipped in the package (src/gixdrt/model/weights/NAME): small, fp16, with a complete card
whose real-frame claim is re-checked here; and `gixdrt detect --model default`, once gixdrt's own default exists,
finds the published 12 rings of the real frame."""
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
