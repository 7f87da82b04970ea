"""The powder U-Net: the published study's parameter counts, fully convolutional shapes, the size check, BatchNorm in
eval mode, and an ONNX graph with dynamic H and W that ONNX Runtime runs as PyTorch does."""
from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gixdrt.model.unet import PAPER_PARAMETER_COUNTS, UNet, UNetConfig, pad_to_multiple, spot_probability


@pytest.mark.parametrize("depth, count", [(2, 6_562), (3, 29_650), (4, 121_394), (5, 487_154)])
def test_parameter_counts_match_the_paper(depth, count):
    model = UNet(depth=depth)
    assert model.n_parameters() == count
    assert sum(p.numel() for p in model.parameters()) == count
    assert PAPER_PARAMETER_COUNTS[depth] == count


def test_parameter_count_by_hand_for_depth_2():
    # conv3x3 (cin·cout·9 + cout), BN (2·cout), convT 2x2 (cin·cout·4 + cout), head 1x1 (8·2 + 2)
    def conv(ci, co, k=3):
        return ci * co * k * k + co

    enc = conv(1, 8) + conv(8, 8) + conv(8, 16) + conv(16, 16) + 2 * (8 + 8 + 16 + 16)
    dec = (16 * 8 * 4 + 8) + conv(16, 8) + conv(8, 8) + 2 * (8 + 8)
    assert enc + dec + (8 * 2 + 2) == UNet(depth=2).n_parameters()


def test_channels_and_multiple():
    cfg = UNetConfig(depth=4)
    assert cfg.channels == [8, 16, 32, 64]
    assert cfg.multiple == 8
    assert UNetConfig(depth=3, base_channels=6, growth=1.5).channels == [6, 9, 13]
    with pytest.raises(ValueError, match="depth"):
        UNetConfig(depth=1)


@pytest.mark.parametrize("depth, shape", [(2, (2, 6)), (3, (12, 20)), (4, (16, 40)), (5, (32, 48))])
def test_fully_convolutional_output_shape(depth, shape):
    model = UNet(depth=depth).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 1, *shape))
    assert y.shape == (2, 2, *shape)
    assert torch.isfinite(y).all()


def test_size_error_names_the_sizes():
    model = UNet(depth=4).eval()
    with pytest.raises(ValueError, match=r"multiples of 8, got 20×16"):
        model(torch.zeros(1, 1, 20, 16))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        model(torch.zeros(1, 3, 16, 16))


def test_pad_to_multiple_round_trip():
    x = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    y, (h, w) = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 8, 8) and (h, w) == (5, 7)
    assert torch.equal(y[..., :h, :w], x)
    model = UNet(depth=3).eval()
    with torch.no_grad():
        out = model(y)[..., :h, :w]
    assert out.shape == (1, 2, 5, 7)


def test_batchnorm_eval_uses_running_statistics():
    torch.manual_seed(0)
    model = UNet(depth=2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 1, 32, 32) * 5 + 2)  # update the running statistics
    model.eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        single = model(x)
        batched = model(torch.cat([x, torch.rand(3, 1, 32, 32) * 100]))[:1]
    # in eval mode a sample's output does not depend on the rest of the batch
    torch.testing.assert_close(single, batched, rtol=1e-5, atol=1e-5)
    bn = model.encoders[0][1]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_spot_probability_is_softmax_of_the_spot_class():
    logits = torch.tensor([[[[0.0]], [[np.log(3.0)]]]], dtype=torch.float32)  # P(spot) = 3/4
    assert spot_probability(logits).shape == (1, 1, 1)
    assert float(spot_probability(logits)) == pytest.approx(0.75, abs=1e-6)


def test_onnx_export_dynamic_hw_matches_torch():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(1)
    model = UNet(depth=4)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.rand(4, 1, 64, 64) * 3)
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 64, 64),), buf, dynamo=False, opset_version=17, input_names=["image"],
        output_names=["logits"], dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
    )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((1, 1, 256, 320), dtype=np.float32)
    (got,) = sess.run(None, {"image": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 2, 256, 320)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
