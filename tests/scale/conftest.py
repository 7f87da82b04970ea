"""Fixtures of the reprocessing tests: a random model, a mixed set of inputs (a TIFF stack, an HDF5 stack, single
frames), and the serial ``gixdrt detect`` run they are compared with."""
from __future__ import annotations

import pytest
from scale_helpers import detect_args, write_inputs

from gixdrt.cli import main
from gixdrt.io.writers import read_peaks


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A randomly initialised detector saved in gixdrt's format (no assets needed)."""
    torch = pytest.importorskip("torch")
    from gixdrt.model import GixdDetector, save_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model") / "random-model"
    save_model(GixdDetector(), d)
    return d


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def serial(tmp_path_factory, inputs, small_config, model_dir):
    """The serial run's linked table and metadata on ``inputs`` (--link)."""
    out = tmp_path_factory.mktemp("serial") / "serial.h5"
    assert main(detect_args(inputs, out, small_config, model_dir, "--link")) == 0
    return read_peaks(out)
