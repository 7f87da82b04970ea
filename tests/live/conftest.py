"""Fixtures of the live tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A randomly initialised detector saved in gixdrt's format (no assets needed)."""
    import torch

    from gixdrt.model import GixdDetector, save_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model") / "random-model"
    save_model(GixdDetector(), d)
    return d
