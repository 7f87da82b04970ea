"""The powder plan's CUDA path on a real GPU (skipped without one): the ring channel's device version against the
reference on device tensors, and PowderMasker(device="cuda") against the CPU plan."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.needs_gpu


def test_ring_normalize_on_cuda_tensors():
    torch = pytest.importorskip("torch")
    from gixdrt.kernels.cuda import powder as dev
    from gixdrt.kernels.reference import powder as ref
    from gixdrt.powder.classical import RingIndex
    from gixdrt.sim.powder import PowderSimulator

    f = PowderSimulator(seed=3, size=(300, 340)).frame(0)
    idx = RingIndex.from_geometry(f.geometry, f.detector_mask)
    want = ref.ring_normalize(f.image[None], out=np.zeros((1, 2, 304, 340), np.float32), pixels=idx.pixels,
                              ptr=idx.ptr)
    got = dev.ring_normalize(torch.from_numpy(f.image[None]).cuda(), out=torch.zeros(1, 2, 304, 340, device="cuda"),
                             pixels=torch.from_numpy(idx.pixels).cuda(), ptr=torch.from_numpy(idx.ptr).cuda())
    np.testing.assert_allclose(got.cpu().numpy()[:, 1], want[:, 1], rtol=1e-6, atol=1e-6)


def test_powder_plan_on_cuda_equals_cpu():
    pytest.importorskip("torch")
    from gixdrt.powder.plan import PowderMasker
    from gixdrt.sim.powder import PowderSimulator

    f = PowderSimulator(seed=1, size=(1100, 1300)).frame(0)
    want = PowderMasker("default", runtime="torch", detector_mask=f.detector_mask, geometry=f.geometry).run(f.image)
    got = PowderMasker("default", runtime="torch", device="cuda", detector_mask=f.detector_mask,
                       geometry=f.geometry).run(f.image)
    np.testing.assert_allclose(got["log_odds"], want["log_odds"], rtol=1e-3, atol=2e-3)  # cuDNN vs CPU convolutions
    assert np.count_nonzero(got["spots"] != want["spots"]) <= max(10, want["spots"].sum() // 200)
