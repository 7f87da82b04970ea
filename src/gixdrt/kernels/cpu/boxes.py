"""Proposal-stage box kernels on the CPU: the C++ kernels ``gixdrt._ext.{decode_topk,nms_fixed,decode_final}_cpu``.

See :mod:`gixdrt.kernels.reference.boxes` for the semantics. decode_topk runs one (image, level) job per
thread (top-k by a partition to the k-th logit and a sort of the k, in the reference's total order: decreasing
logit, ties by lower index, NaN last); nms_fixed is greedy per image (images in parallel) and per group (each
group only scans its own members), stopping at ``max_out``; decode_final runs one image per thread.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_outs, decode_final_specs, decode_topk_specs, nms_fixed_specs
from ..reference.boxes import BBOX_CLIP, check_decode_inputs, check_final_inputs, check_nms_inputs
from ._ext import ext


def decode_topk(logits, deltas, anchors, level_starts, *, k=1000, height, width, bbox_clip=BBOX_CLIP, min_size=1e-3,
                out=None, threads: int = 0):
    """C++ version of :func:`gixdrt.kernels.reference.boxes.decode_topk` (same arguments and outputs).

    out: optional (boxes, scores, levels, valid) NumPy arrays to write and return. threads: ≤ 0: one per CPU.
    """
    logits = np.ascontiguousarray(logits, np.float32)
    deltas = np.ascontiguousarray(deltas, np.float32)
    anchors = np.ascontiguousarray(anchors, np.float32)
    n, _, n_levels, starts = check_decode_inputs(logits, deltas, anchors, level_starts, k)
    k = int(k)
    res = check_outs(out, decode_topk_specs(n, n_levels, k), "decode_topk")
    ext().decode_topk_cpu(
        logits, deltas, anchors, np.ascontiguousarray(starts, np.int64), k, float(np.float32(height)),
        float(np.float32(width)), float(np.float32(bbox_clip)), float(np.float32(min_size)), *res, threads=int(threads),
    )  # fmt: skip
    return res


def nms_fixed(boxes, scores, valid, iou, max_out, groups=None, *, out=None, threads: int = 0):
    """C++ version of :func:`gixdrt.kernels.reference.boxes.nms_fixed` (same arguments and outputs).

    out: optional (keep_idx, count) NumPy arrays to write and return. threads: ≤ 0: one per CPU.
    """
    boxes = np.ascontiguousarray(boxes, np.float32)
    scores = np.ascontiguousarray(scores, np.float32)
    valid = np.ascontiguousarray(valid, np.int64)
    g = None if groups is None else np.ascontiguousarray(groups, np.int64)
    n, _ = check_nms_inputs(boxes, scores, valid, g, max_out)
    res = check_outs(out, nms_fixed_specs(n, int(max_out)), "nms_fixed")
    ext().nms_fixed_cpu(boxes, scores, valid, g, float(iou), int(max_out), *res, threads=int(threads))
    return res


def decode_final(logits, deltas, proposals, valid, *, height, width, score_threshold, bbox_clip=BBOX_CLIP,
                 min_size=1e-3, out=None, threads: int = 0):
    """C++ version of :func:`gixdrt.kernels.reference.boxes.decode_final` (same arguments and outputs).

    out: optional (boxes, scores, count) NumPy arrays to write and return. threads: ≤ 0: one per CPU.
    """
    logits = np.ascontiguousarray(logits, np.float32)
    deltas = np.ascontiguousarray(deltas, np.float32)
    proposals = np.ascontiguousarray(proposals, np.float32)
    valid = np.ascontiguousarray(valid, np.int64)
    n, r = check_final_inputs(logits, deltas, proposals, valid)
    res = check_outs(out, decode_final_specs(n, r), "decode_final")
    ext().decode_final_cpu(
        logits, deltas, proposals, valid, float(np.float32(height)), float(np.float32(width)),
        float(np.float32(score_threshold)), float(np.float32(bbox_clip)), float(np.float32(min_size)), *res,
        threads=int(threads),
    )  # fmt: skip
    return res
