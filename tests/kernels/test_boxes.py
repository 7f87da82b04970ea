"""decode_topk / nms_fixed: every backend against the NumPy reference and against gixdrt.model.ops (torch).

Tolerances: box coordinates rtol 1e-6 / atol 1e-4 px and scores 2 ulp, because fp32 exp differs in the last
bit between NumPy, libm/Numba and torch; kept indices are compared exactly (the scores that order them are
the same fp32 sigmoid everywhere, so ties resolve identically).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gixdrt.kernels as K
from gixdrt.kernels.reference.boxes import BBOX_CLIP
from gixdrt.model import ops

BACKENDS = ["reference", "cpu", pytest.param("cuda", marks=pytest.mark.cudasim)]
RTOL, ATOL = 1e-6, 1e-4


def _dev(x):
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(x))


def _host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


def run_decode(backend, logits, deltas, anchors, starts, **kw):
    if backend == "cuda":
        out = K.decode_topk(_dev(logits), _dev(deltas), _dev(anchors), starts, impl="cuda", **kw)
        return tuple(_host(o) for o in out)
    return K.decode_topk(logits, deltas, anchors, starts, impl=backend, **kw)


def run_nms(backend, boxes, scores, valid, iou, max_out, groups=None):
    if backend == "cuda":
        g = None if groups is None else _dev(groups)
        out = K.nms_fixed(_dev(boxes), _dev(scores), _dev(valid), iou, max_out, g, impl="cuda")
        return tuple(_host(o) for o in out)
    return K.nms_fixed(boxes, scores, valid, iou, max_out, groups, impl=backend)


def torch_nms(boxes, scores, valid, iou, max_out, groups=None):
    """Per image: gixdrt.model.ops.nms / batched_nms on the valid entries → list of int arrays."""
    res = []
    for i in range(len(valid)):
        v = int(valid[i])
        b, s = torch.from_numpy(boxes[i, :v]), torch.from_numpy(scores[i, :v])
        if groups is None:
            k = ops.nms(b, s, iou)
        else:
            k = ops.batched_nms(b, s, torch.from_numpy(groups[i, :v].astype(np.int64)), iou)
        res.append(k[:max_out].numpy())
    return res


def random_boxes(rng, n, m, size=64.0, tie_levels=None):
    xy = rng.uniform(0, size, (n, m, 2))
    wh = rng.uniform(1, size / 3, (n, m, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    if tie_levels:
        scores = rng.integers(0, tie_levels, (n, m)).astype(np.float32) / tie_levels
    else:
        scores = rng.random((n, m)).astype(np.float32)
    return boxes, scores


def check_nms(backend, boxes, scores, valid, iou, max_out, groups=None):
    keep, count = run_nms(backend, boxes, scores, valid, iou, max_out, groups)
    assert keep.shape == (len(valid), max_out) and keep.dtype == np.int32 and count.dtype == np.int32
    expect = torch_nms(boxes, scores, valid, iou, max_out, groups)
    for i, e in enumerate(expect):
        assert count[i] == len(e)
        np.testing.assert_array_equal(keep[i, : count[i]], e)
        assert (keep[i, count[i] :] == -1).all()
    return keep, count


# --- nms_fixed --------------------------------------------------------------------------------------
# The CUDA simulator runs every thread in Python: two representative cases, smaller, for cuda.
NMS_CASES = [(b, iou, ties) for b in ("reference", "cpu") for iou in (0.1, 0.5, 0.9) for ties in (None, 4)] + [
    pytest.param("cuda", 0.5, 4, marks=pytest.mark.cudasim),
    pytest.param("cuda", 0.9, None, marks=pytest.mark.cudasim),
]


@pytest.mark.parametrize("backend, iou, ties", NMS_CASES)
def test_nms_random_vs_torch(backend, iou, ties):
    rng = np.random.default_rng(int(iou * 10) + (ties or 0))
    m = 80 if backend == "cuda" else 400
    boxes, scores = random_boxes(rng, 2, m, tie_levels=ties)
    valid = np.array([m, m - 37], np.int32)
    check_nms(backend, boxes, scores, valid, iou, 1000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_groups_and_truncation(backend):
    rng = np.random.default_rng(3)
    m = 140
    boxes, scores = random_boxes(rng, 2, m, tie_levels=8)
    groups = rng.integers(0, 3, (2, m)).astype(np.int32)
    valid = np.array([m, 90], np.int32)
    for max_out in (0, 5, 1000):
        check_nms(backend, boxes, scores, valid, 0.3, max_out, groups)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou", [0.1, 0.9])
def test_nms_iou_exactly_at_threshold(backend, iou):
    """Pairs whose fp32 IoU is float32(iou) exactly: 0.1 → 0.10000000149 > 0.1 suppresses; 0.9 → 0.899999976
    is not > 0.9 and keeps both; the next fp32 value up always suppresses."""
    # two boxes of height 1: [0, a] and [s, s + a]: IoU = (a − s) / (a + s); for a = 11, s = 9 → 0.1
    if iou == 0.1:
        a, s = 11.0, 9.0
    else:  # a = 19, s = 1 → 18/20 = 0.9
        a, s = 19.0, 1.0
    pair = np.array([[0, 0, a, 1], [s, 0, s + a, 1]], np.float32)
    ours = float(np.float32(a - s) / np.float32(2 * a - (a - s)))
    assert ours == float(np.float32(iou))
    boxes = np.tile(pair, (1, 1, 1))
    scores = np.array([[0.9, 0.8]], np.float32)
    keep, count = check_nms(backend, boxes, scores, np.array([2], np.int32), iou, 10)
    assert count[0] == (1 if float(np.float32(iou)) > iou else 2)
    # just below the fp32 IoU as threshold: always suppressed
    below = float(np.nextafter(np.float32(iou), np.float32(0)))
    keep, count = check_nms(backend, boxes, scores, np.array([2], np.int32), below, 10)
    assert count[0] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_empty_and_all_invalid(backend):
    boxes = np.zeros((2, 8, 4), np.float32)
    scores = np.zeros((2, 8), np.float32)
    keep, count = run_nms(backend, boxes, scores, np.zeros(2, np.int32), 0.5, 4)
    assert (count == 0).all() and (keep == -1).all()
    keep, count = run_nms(backend, np.zeros((1, 0, 4), np.float32), np.zeros((1, 0), np.float32), np.zeros(1, np.int32), 0.5, 3)
    assert count.tolist() == [0] and (keep == -1).all()


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def test_nms_matches_reference_many_ties(backend):
    rng = np.random.default_rng(9)
    boxes, scores = random_boxes(rng, 3, 100, size=20.0, tie_levels=2)
    valid = np.array([100, 50, 3], np.int32)
    groups = rng.integers(0, 2, (3, 100)).astype(np.int32)
    exp = K.nms_fixed(boxes, scores, valid, 0.2, 60, groups, impl="reference")
    got = run_nms(backend, boxes, scores, valid, 0.2, 60, groups)
    np.testing.assert_array_equal(got[0], exp[0])
    np.testing.assert_array_equal(got[1], exp[1])


# --- decode_topk ------------------------------------------------------------------------------------
def make_rpn(rng, n, sizes, height=64, width=128, ties=False):
    a = sum(sizes)
    ctr = rng.uniform(0, [width, height], (a, 2))
    wh = rng.uniform(2, 40, (a, 2))
    anchors = np.concatenate([ctr - wh / 2, ctr + wh / 2], -1).astype(np.float32)
    logits = rng.normal(0, 4, (n, a)).astype(np.float32)
    if ties:
        logits = np.round(logits).astype(np.float32)
    deltas = rng.normal(0, 0.5, (n, a, 4)).astype(np.float32)
    deltas[:, ::7, 2] = 6.0  # above the clamp
    deltas[:, ::11, 3] = -30.0  # tiny height → dropped
    return logits, deltas, anchors, np.cumsum([0] + list(sizes))


def torch_decode(logits, deltas, anchors, starts, k, height, width, min_size=1e-3):
    """The decode of GixdDetector.proposals with a stable top-k (torch.topk does not order ties)."""
    out = []
    for i in range(len(logits)):
        bs, ss, ls = [], [], []
        for lvl in range(len(starts) - 1):
            lo, hi = starts[lvl], starts[lvl + 1]
            lg = torch.from_numpy(logits[i, lo:hi])
            top = torch.sort(lg, descending=True, stable=True).indices[: min(k, hi - lo)] + lo
            b = ops.clip_boxes(ops.decode_boxes(torch.from_numpy(deltas[i, top]), torch.from_numpy(anchors[top]), BBOX_CLIP), height, width)
            bs.append(b)
            ss.append(torch.sigmoid(torch.from_numpy(logits[i, top])))
            ls.append(torch.full((len(top),), lvl))
        b, s, lv = torch.cat(bs), torch.cat(ss), torch.cat(ls)
        keep = ops.small_boxes_mask(b, min_size)
        out.append((b[keep].numpy(), s[keep].numpy(), lv[keep].numpy()))
    return out


def check_decode(got, expect, k, n_levels):
    boxes, scores, levels, valid = got
    n = len(expect)
    assert boxes.shape == (n, n_levels * k, 4) and scores.shape == (n, n_levels * k) and levels.dtype == np.int32
    for i, (b, s, lv) in enumerate(expect):
        v = valid[i]
        assert v == len(b)
        np.testing.assert_allclose(boxes[i, :v], b, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(scores[i, :v], s, rtol=2.4e-7, atol=0)
        np.testing.assert_array_equal(levels[i, :v], lv)
        assert (levels[i, v:] == -1).all() and (boxes[i, v:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ties", [False, True])
def test_decode_topk_vs_torch(backend, ties):
    rng = np.random.default_rng(5 + ties)
    sizes = (120, 60, 20) if backend == "cuda" else (300, 120, 20)  # the simulator is slow
    logits, deltas, anchors, starts = make_rpn(rng, 2, sizes, ties=ties)
    k = 30 if backend == "cuda" else 50
    got = run_decode(backend, logits, deltas, anchors, starts, k=k, height=64, width=128)
    check_decode(got, torch_decode(logits, deltas, anchors, starts, k, 64, 128), k, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_topk_all_invalid_and_nan(backend):
    rng = np.random.default_rng(2)
    logits, deltas, anchors, starts = make_rpn(rng, 1, (40, 10))
    deltas[..., 3] = -40.0  # every box collapses
    boxes, scores, levels, valid = run_decode(backend, logits, deltas, anchors, starts, k=16, height=64, width=128)
    assert valid.tolist() == [0] and (levels == -1).all()
    logits[0, 3] = np.nan  # NaN logits rank last
    deltas[..., 3] = 0.0
    _, _, _, valid2 = run_decode(backend, logits, deltas, anchors, starts, k=100, height=64, width=128)
    ref = K.decode_topk(logits, deltas, anchors, starts, k=100, height=64, width=128, impl="reference")
    assert valid2.tolist() == ref[3].tolist() and ref[3][0] > 0


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def test_decode_topk_matches_reference(backend):
    rng = np.random.default_rng(11)
    logits, deltas, anchors, starts = make_rpn(rng, 2, (200, 0, 64), ties=True)
    got = run_decode(backend, logits, deltas, anchors, starts, k=70, height=64, width=128)
    exp = K.decode_topk(logits, deltas, anchors, starts, k=70, height=64, width=128, impl="reference")
    np.testing.assert_array_equal(got[3], exp[3])
    np.testing.assert_array_equal(got[2], exp[2])
    np.testing.assert_allclose(got[0], exp[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[1], exp[1], rtol=2.4e-7, atol=0)


# --- the published proposal stage ---------------------------------------------------------------------
@pytest.mark.published
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_real_frame_proposals(backend, published_frame, published_config, published_assets):
    from gixdrt.gixd.preprocess import Preprocessor
    from gixdrt.model import load_published
    from gixdrt.model.network import flatten_rpn

    pre = Preprocessor(published_config)
    img = torch.from_numpy(np.asarray(pre.contrast(pre.polar(published_frame)), np.float32))[None, None]
    model = load_published(published_assets.default_checkpoint)
    with torch.no_grad():
        dense = model.dense(img)
        props = model.proposals(dense)
    anchors = model.anchors(dense.image_shape, [f.shape[-2:] for f in dense.features], dense.features[0].device)
    flat = [flatten_rpn(lg.float(), dl.float()) for lg, dl in zip(dense.logits, dense.deltas)]
    logits = torch.cat([f[0] for f in flat], 1).numpy()
    deltas = torch.cat([f[1] for f in flat], 1).numpy()
    starts = np.cumsum([0] + [len(a) for a in anchors])
    height, width = dense.image_shape
    b, s, lv, v = K.decode_topk(logits, deltas, torch.cat(anchors).numpy(), starts, k=1000, height=height, width=width, impl=backend)
    keep, count = K.nms_fixed(b, s, v, 0.9, 1000, lv, impl=backend)
    assert count[0] == 1000 == len(props.boxes[0])
    np.testing.assert_allclose(b[0, keep[0]], props.boxes[0].numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(s[0, keep[0]], props.scores[0].numpy(), rtol=2.4e-7, atol=0)


# --- decode_final (second stage) -----------------------------------------------------------------------
def run_final(backend, logits, deltas, props, valid, **kw):
    if backend == "cuda":
        out = K.decode_final(_dev(logits), _dev(deltas), _dev(props), _dev(valid), impl="cuda", **kw)
        return tuple(_host(o) for o in out)
    return K.decode_final(logits, deltas, props, valid, impl=backend, **kw)


def make_head(rng, n, r, valid, size=(64, 128), ties=False):
    h, w = size
    xy = rng.uniform(-4, [w, h], (n, r, 2))
    wh = rng.uniform(0.5, 30, (n, r, 2))
    props = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    logits = rng.normal(0, 2.5, (n, r)).astype(np.float32)
    if ties:  # saturated and repeated logits: equal scores that the NMS must order by index
        logits[:, ::3] = 20.0
        logits[:, 1::7] = 0.5
    deltas = rng.normal(0, 0.4, (n, r, 4)).astype(np.float32)
    deltas[:, ::11, 2] = 9.0  # above the clip
    deltas[:, 5::13, 3] = -12.0  # collapses to a tiny box
    return logits, deltas, props, np.asarray(valid, np.int32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ties", [False, True])
def test_decode_final_vs_torch_postprocess(backend, ties):
    """decode_final + nms_fixed(0.1) give what GixdDetector.postprocess gives, image by image."""
    from gixdrt.model.network import DetectorConfig, GixdDetector, Proposals

    rng = np.random.default_rng(5 + ties)
    r = 300 if backend != "cuda" else 150
    valid = [r, r - 37, 0]
    logits, deltas, props, v = make_head(rng, 3, r, valid, ties=ties)
    model = GixdDetector(DetectorConfig())
    thr, iou, cap = 0.3, 0.1, 40
    b, s, c = run_final(backend, logits, deltas, props, v, height=64, width=128, score_threshold=thr)
    assert b.shape == (3, r, 4) and s.shape == (3, r) and c.dtype == np.int32
    keep, count = run_nms(backend, b, s, c, iou, cap)
    proposals = Proposals([torch.from_numpy(props[i, : valid[i]]) for i in range(3)], [None] * 3, (64, 128))
    lg = torch.cat([torch.from_numpy(logits[i, : valid[i]]) for i in range(3)])
    dl = torch.cat([torch.from_numpy(deltas[i, : valid[i]]) for i in range(3)])
    expect = model.postprocess(lg, dl, proposals, score_threshold=thr, nms_iou=iou, max_detections=cap)
    for i in range(3):
        e = expect[i]
        assert count[i] == len(e["scores"])
        np.testing.assert_allclose(b[i, keep[i, : count[i]]], e["boxes"].numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(s[i, keep[i, : count[i]]], e["scores"].numpy(), rtol=0, atol=2.4e-7)
        assert (b[i, c[i] :] == 0).all() and (s[i, c[i] :] == 0).all()
    assert c[2] == 0 and count[2] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_final_matches_reference_and_threshold_edge(backend):
    """A score exactly at the threshold survives (≥); one float above the score, it is dropped."""
    rng = np.random.default_rng(9)
    logits, deltas, props, v = make_head(rng, 2, 64, [64, 10])
    logits[0, :2] = 0.0  # score 2·sigmoid(0) − 1 = 0 exactly in every exp implementation
    deltas[0, :2] = 0.0
    props[0, :2] = [[10, 10, 20, 30], [40, 5, 44, 60]]
    f = np.float32
    s_at = f(0.0)
    for thr, present in ((s_at, True), (np.nextafter(s_at, f(np.inf)), False)):
        ref = K.decode_final(logits, deltas, props, v, height=64, width=128, score_threshold=float(thr), impl="reference")
        got = run_final(backend, logits, deltas, props, v, height=64, width=128, score_threshold=float(thr))
        np.testing.assert_array_equal(got[2], ref[2])
        np.testing.assert_allclose(got[0], ref[0], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=2.4e-7)
        at = [np.allclose(ref[0][0, j], props[0, k]) for k in range(2) for j in range(ref[2][0])]
        assert sum(at) == (2 if present else 0)


def test_decode_final_shape_errors():
    z = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="decode_final"):
        K.decode_final(z, np.zeros((1, 4, 3), np.float32), np.zeros((1, 4, 4), np.float32), np.ones(1, np.int32),
                       height=8, width=8, score_threshold=0.5, impl="reference")
    with pytest.raises(ValueError, match="valid"):
        K.decode_final(z, np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32), np.ones(2, np.int32),
                       height=8, width=8, score_threshold=0.5, impl="cpu")


# --- out=: preallocated outputs on every backend ----------------------------------------------------------
def _garbage_like(specs, backend):
    """Arrays of the given (shape, dtype) filled with values no kernel writes (on the device for cuda)."""
    arrs = []
    for shape, dtype in specs:
        fill = np.nan if np.dtype(dtype).kind == "f" else 77
        a = np.full(shape, fill, dtype)
        arrs.append(_dev(a) if backend == "cuda" else a)
    return tuple(arrs)


def _call(backend, fn, args, kw):
    """fn through ``backend`` with args (host arrays, copied to the device for cuda) → (result, host copies)."""
    if backend == "cuda":
        args = tuple(_dev(a) if isinstance(a, np.ndarray) else a for a in args)
    res = fn(*args, impl=backend, **kw)
    return res, tuple(_host(r) for r in res)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_parity_decode_topk(backend):
    rng = np.random.default_rng(21)
    sizes = (60, 30, 10)
    logits, deltas, anchors, starts = make_rpn(rng, 2, sizes, ties=True)
    logits[1, 5] = np.nan
    k = 25
    kw = dict(k=k, height=64, width=128)
    _, want = _call(backend, K.decode_topk, (logits, deltas, anchors), dict(level_starts=starts, **kw))
    m = 3 * k
    out = _garbage_like([((2, m, 4), np.float32), ((2, m), np.float32), ((2, m), np.int32), ((2,), np.int32)], backend)
    res, got = _call(backend, K.decode_topk, (logits, deltas, anchors), dict(level_starts=starts, out=out, **kw))
    assert all(r is o for r, o in zip(res, out))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    ref = K.decode_topk(logits, deltas, anchors, starts, impl="reference", **kw)
    np.testing.assert_array_equal(got[3], ref[3])
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_allclose(got[0], ref[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_parity_nms_fixed(backend):
    rng = np.random.default_rng(22)
    boxes, scores = random_boxes(rng, 2, 70, tie_levels=5)
    valid = np.array([70, 33], np.int32)
    groups = rng.integers(0, 3, (2, 70)).astype(np.int32)
    _, want = _call(backend, K.nms_fixed, (boxes, scores, valid, 0.4, 40, groups), {})
    out = _garbage_like([((2, 40), np.int32), ((2,), np.int32)], backend)
    res, got = _call(backend, K.nms_fixed, (boxes, scores, valid, 0.4, 40, groups), dict(out=out))
    assert all(r is o for r, o in zip(res, out))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    ref = K.nms_fixed(boxes, scores, valid, 0.4, 40, groups, impl="reference")
    for g, w in zip(got, ref):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_parity_decode_final(backend):
    rng = np.random.default_rng(23)
    logits, deltas, props, valid = make_head(rng, 3, 90, [90, 40, 0], ties=True)
    kw = dict(height=64, width=128, score_threshold=0.3)
    _, want = _call(backend, K.decode_final, (logits, deltas, props, valid), kw)
    out = _garbage_like([((3, 90, 4), np.float32), ((3, 90), np.float32), ((3,), np.int32)], backend)
    res, got = _call(backend, K.decode_final, (logits, deltas, props, valid), dict(out=out, **kw))
    assert all(r is o for r, o in zip(res, out))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    ref = K.decode_final(logits, deltas, props, valid, impl="reference", **kw)
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_allclose(got[0], ref[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=2.4e-7)


def _bad_outs(backend, good):
    """(out, exception, message) cases built from a list of good (shape, dtype) specs."""
    cases = [
        (list(_garbage_like(good, backend))[:-1], ValueError, r"out must be a tuple of \d+"),
        (np.zeros(3), TypeError, "out must be a tuple"),
    ]
    wrong_dtype = list(good)
    wrong_dtype[0] = (good[0][0], np.float64 if np.dtype(good[0][1]).kind == "f" else np.int64)
    cases.append((_garbage_like(wrong_dtype, backend), TypeError, r"out\[0\] \(\w+\) must have dtype"))
    wrong_shape = list(good)
    wrong_shape[-1] = ((good[-1][0][0] + 1,), good[-1][1])
    cases.append((_garbage_like(wrong_shape, backend), ValueError, rf"out\[{len(good) - 1}\] \(\w+\) must have shape"))
    if backend == "cuda":
        cases.append((_garbage_like(good, "reference"), TypeError, r"out\[0\] \(\w+\) must be a device array"))
    else:
        strided = list(_garbage_like(good, backend))
        shape, dtype = good[0]
        strided[0] = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)[..., ::2]
        cases.append((tuple(strided), ValueError, r"out\[0\] \(\w+\) must be C-contiguous"))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_errors_name_the_argument(backend):
    rng = np.random.default_rng(24)
    logits, deltas, anchors, starts = make_rpn(rng, 1, (20, 10))
    topk_specs = [((1, 8, 4), np.float32), ((1, 8), np.float32), ((1, 8), np.int32), ((1,), np.int32)]
    for out, exc, msg in _bad_outs(backend, topk_specs):
        with pytest.raises(exc, match="decode_topk: " + msg):
            _call(backend, K.decode_topk, (logits, deltas, anchors), dict(level_starts=starts, k=4, height=64, width=128, out=out))
    boxes, scores = random_boxes(rng, 1, 10)
    valid = np.array([10], np.int32)
    for out, exc, msg in _bad_outs(backend, [((1, 5), np.int32), ((1,), np.int32)]):
        with pytest.raises(exc, match="nms_fixed: " + msg):
            _call(backend, K.nms_fixed, (boxes, scores, valid, 0.5, 5), dict(out=out))
    hl, hd, hp, hv = make_head(rng, 1, 12, [12])
    for out, exc, msg in _bad_outs(backend, [((1, 12, 4), np.float32), ((1, 12), np.float32), ((1,), np.int32)]):
        with pytest.raises(exc, match="decode_final: " + msg):
            _call(backend, K.decode_final, (hl, hd, hp, hv), dict(height=64, width=128, score_threshold=0.1, out=out))


def test_nms_nan_and_inf_boxes_and_scores_cpu_matches_reference():
    """NaN coordinates never suppress (their fp32 IoU is NaN), infinite boxes give inf/inf = NaN or 0, NaN scores
    rank last: the cpu kernel decides as the reference does (the cuda kernel does not support NaN scores)."""
    rng = np.random.default_rng(31)
    boxes, scores = random_boxes(rng, 2, 120, size=30.0, tie_levels=6)
    boxes[0, ::9, rng.integers(0, 4)] = np.nan
    boxes[1, 3::11, 2] = np.inf
    boxes[1, 5::13] = [[np.nan, 0, np.nan, 1]]
    scores[0, ::17] = np.nan
    valid = np.array([120, 120], np.int32)
    groups = rng.integers(0, 2, (2, 120)).astype(np.int32)
    for g in (None, groups):
        for iou in (0.0, 0.3, 0.9):
            want = K.nms_fixed(boxes, scores, valid, iou, 80, g, impl="reference")
            got = K.nms_fixed(boxes, scores, valid, iou, 80, g, impl="cpu")
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
