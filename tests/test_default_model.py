"""gixdrt's own default model (src/gixdrt/model/weights/default): shipped, small, fp16, with a complete card,
and on the published real frame `gixdrt detect --model default` finds the published 12 rings."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.model import zoo

pytestmark = pytest.mark.skipif(not zoo.has_default_weights(), reason="no default weights in this checkout")


def test_default_weights_are_ours_small_fp16_and_carded():
    from gixdrt.model import read_card

    weights = zoo.DEFAULT_WEIGHTS / "model.safetensors"
    assert weights.stat().st_size < 16 * 1024 * 1024
    card = read_card(zoo.DEFAULT_WEIGHTS)
    assert card["storage_dtype"] == "float16"
    prov = card["provenance"]
    assert prov["source"] == "trained" and prov["steps"] > 0 and "config" in prov and "hardware" in prov
    assert "wall_time_s" in prov and "seed" in prov and prov["selection"]["chosen_step"] == prov["steps"]
    ev = card["evaluation"]["default_simulator"]
    assert ev["n_images"] >= 1000 and set(ev["models"]) >= {"default", "published"}
    assert card["real_frame"]["rings_found"] == 12
    assert zoo.describe("default") == "default"
    model = zoo.load("default")
    assert model.card["name"] == card["name"] and not model.training


@pytest.mark.published
def test_detect_default_finds_the_twelve_rings(tmp_path, published_assets):
    """`gixdrt detect --model default` on the real frame: every published ring within 0.01 Å⁻¹ in |Q|."""
    from gixdrt.cli import main
    from gixdrt.geometry import load_config
    from gixdrt.io import read_peaks
    from gixdrt.testing import match_rings, published_ring_q

    out = tmp_path / "peaks.csv"
    rc = main(["detect", str(published_assets.frame), "--config", str(published_assets.config), "--model", "default",
               "--backend", "onnxruntime", "--out", str(out), "--no-progress"])
    assert rc == 0
    table = read_peaks(out)[0]
    q_max = load_config(published_assets.config).geometry.q_max
    res = match_rings(table.q, published_ring_q(q_max), tol_q=0.01)
    assert res["found"] == 12, f"missing rings at |Q| = {res['missing']} Å⁻¹; detected {np.round(table.q, 4).tolist()}"
    assert res["max_dq"] < 0.01
