"""The detector as exported graphs plus the between-graph steps: dense graph → proposals → RoIAlign →
head graph → final filter, on ONNX Runtime.

The two graphs run in ONNX Runtime. On the CPU the steps between them are gixdrt's own kernels on the
runtime's NumPy outputs, with fixed-size buffers throughout (no PyTorch op runs per frame):
:func:`gixdrt.kernels.decode_topk` (per level top-k, decode, clip) → :func:`gixdrt.kernels.nms_fixed`
(IoU 0.9 per level, ≤ 1000 proposals per image) → the C++ RoIAlign of :mod:`gixdrt._ext`, written straight
into the head graph's input buffer at rows ``i·R … i·R + count_i`` of image i (R = proposals per image) →
head graph → :func:`gixdrt.kernels.decode_final` (2·sigmoid − 1, decode, threshold) →
:func:`gixdrt.kernels.nms_fixed` (IoU 0.1, ≤ 250). With the ONNX Runtime CUDA provider, or where the kernels
cannot run (``kernels=False``), the PyTorch reference ops of :mod:`gixdrt.model` run between the graphs on
tensors that view the runtime's outputs. Graphs are exported once per (model weights, image shape, batch,
precision) and cached as files.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .onnxrt import OnnxRuntimeRunner

log = logging.getLogger(__name__)

__all__ = ["OrtStages", "graph_cache_dir"]

PRECISIONS = ("fp32", "fp16")


def graph_cache_dir() -> Path:
    """Where exported graphs are cached: ``gixdrt.io.cache_dir() / "onnx"``."""
    from ..io import cache_dir

    return cache_dir() / "onnx"


class OrtStages:
    """Runs ``model`` (a :class:`gixdrt.model.GixdDetector` on the CPU) as exported graphs on ONNX Runtime.

    device: ``"cpu"`` or ``"cuda[:N]"`` (the ONNX Runtime provider; the between-graph ops run on the same
    device in PyTorch). precision: ``"fp32"`` or ``"fp16"`` (graph weights and activations; inputs, outputs
    and box arithmetic stay fp32). threads: ONNX Runtime's CPU threads (None: one per core).
    cache: True (the user cache, :func:`graph_cache_dir`), a directory, or False (a temporary directory
    removed with this object). kernels: on the CPU, run gixdrt's kernels between the graphs (default; False:
    the PyTorch reference ops, for comparison). ``kernel_backend``: their registry backend ("cpu" or
    "reference").
    """

    def __init__(self, model, *, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cache: bool | str | os.PathLike = True, kernels: bool = True, kernel_backend: str | None = None):
        from ..export.graphs import model_digest

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        self.model = model
        self.device = device
        self.precision = precision
        self.threads = threads
        if cache is True:
            self.cache = graph_cache_dir()
        elif cache is False:
            self.cache = Path(tempfile.mkdtemp(prefix="gixdrt-onnx-"))
            weakref.finalize(self, shutil.rmtree, self.cache, True)
        else:
            self.cache = Path(cache)
        self.digest = model_digest(model)
        self.kernels = bool(kernels) and not device.startswith("cuda")
        self.kernel_backend = kernel_backend
        self._anchors: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._dense: dict[tuple[int, int, int], OnnxRuntimeRunner] = {}
        self._head: dict[int, tuple[OnnxRuntimeRunner, Any]] = {}
        self.timings: dict[str, float] = {}

    # --- graphs ---------------------------------------------------------------------------------
    def graph_path(self, kind: str, tag: str) -> Path:
        from ..export.graphs import EXPORT_VERSION

        return self.cache / f"{kind}-{self.digest[:16]}-{tag}-{self.precision}-v{EXPORT_VERSION}.onnx"

    def _runner(self, path: Path, export) -> OnnxRuntimeRunner:
        """A runner for the cached graph at ``path``, exporting it first when absent or stale."""
        from ..export.graphs import EXPORT_VERSION

        fresh = not path.is_file()
        if fresh:
            t0 = time.perf_counter()
            export(path)
            log.info("exported %s in %.1f s", path.name, time.perf_counter() - t0)
        # no spinning: PyTorch ops run between the graphs and need the cores the idle pool would spin on
        runner = OnnxRuntimeRunner(path, device=self.device, threads=self.threads, spin=False).activate()
        meta = runner.metadata()
        if meta.get("gixdrt.model_sha256") != self.digest or meta.get("gixdrt.export_version") != str(EXPORT_VERSION):
            if fresh:
                raise RuntimeError(f"{path}: the exported graph does not carry this model's digest")
            runner.deactivate()
            log.warning("%s: cached graph is stale or foreign; exporting again", path)
            path.unlink(missing_ok=True)
            return self._runner(path, export)
        return runner

    def dense_runner(self, height: int, width: int, batch: int) -> OnnxRuntimeRunner:
        key = (height, width, batch)
        if key not in self._dense:
            from ..export import export_dense

            path = self.graph_path("dense", f"{height}x{width}-b{batch}")
            fp16 = self.precision == "fp16"
            self._dense[key] = self._runner(
                path, lambda p: export_dense(self.model, p, shape=(height, width), batch=batch, fp16=fp16)
            )
        return self._dense[key]

    def head_runner(self, rois: int) -> tuple[OnnxRuntimeRunner, Any]:
        """The head graph for ``rois`` RoIs and its padded input buffer (float32[R, C, P, P], reused)."""
        if rois not in self._head:
            from ..export import export_head

            path = self.graph_path("head", f"r{rois}")
            fp16 = self.precision == "fp16"
            runner = self._runner(path, lambda p: export_head(self.model, p, rois=rois, fp16=fp16))
            meta = runner.input_metadata()["roi_features"]
            self._head[rois] = (runner, self._buffer(meta.shape))
        return self._head[rois]

    def _buffer(self, shape: tuple[int, ...]):
        import torch

        if self.device.startswith("cuda"):
            return torch.zeros(shape, dtype=torch.float32, device=self.device)
        return torch.from_numpy(np.zeros(shape, np.float32))

    def close(self) -> None:
        for runner in self._dense.values():
            runner.deactivate()
        for runner, _ in self._head.values():
            runner.deactivate()
        self._dense.clear()
        self._head.clear()

    # --- running --------------------------------------------------------------------------------
    def _as_torch(self, arrays: dict[str, Any]) -> dict[str, Any]:
        import torch

        return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in arrays.items()}

    def _roi_features(self, p2, props, buf):
        """RoIAlign of the proposals on P2 → float32[K, C, S, S]. On the CPU the C++ kernel of gixdrt._ext
        (multi-threaded) writes straight into the head graph's input buffer when the RoIs fit in it; the
        PyTorch op is the fallback (GPU here, or an install without the compiled extension)."""
        import torch

        from ..model import ops

        model, cfg = self.model, self.model.config
        if not self.device.startswith("cuda"):
            try:
                from ..kernels.roi_align import ExtensionUnavailableError, roi_align
            except ImportError:  # pragma: no cover - the module always exists
                roi_align = None
            if roi_align is not None:
                rois = ops.rois_from_list(props.boxes).numpy()
                sy, sx = (float(v) for v in model.roi_align.scales[0])
                k = rois.shape[0]
                target = buf[:k].numpy() if k <= buf.shape[0] else None
                try:
                    res = roi_align(p2.contiguous().numpy(), np.ascontiguousarray(rois, np.float32), cfg.roi_output_size,
                                    (sy, sx), cfg.roi_sampling_ratio, cfg.roi_aligned, out=target)
                    return torch.from_numpy(res)
                except ExtensionUnavailableError:
                    pass
        return model.roi_features(p2, props)

    def __call__(self, images) -> list[dict[str, Any]]:
        """images: float32[N, 1, H, W] torch tensor (on this device) → per image {"boxes", "scores"} tensors,
        as :meth:`gixdrt.model.GixdDetector.forward` returns them. Seconds per stage go to ``timings``."""
        if self.kernels:
            return self._run_kernels(images)
        return self._run_torch(images)

    def anchors(self, height: int, width: int, shapes: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """(anchors float32[A_total, 4], level_starts int64[L+1]) for this image size (cached)."""
        key = (height, width)
        if key not in self._anchors:
            import torch

            per_level = self.model.anchors((height, width), shapes, "cpu")
            flat = torch.cat(per_level).numpy().astype(np.float32)
            starts = np.cumsum([0] + [len(a) for a in per_level]).astype(np.int64)
            self._anchors[key] = (np.ascontiguousarray(flat), starts)
        return self._anchors[key]

    def _run_kernels(self, images) -> list[dict[str, Any]]:
        """The CPU path: graphs on ONNX Runtime, gixdrt's kernels between them (see the module docstring)."""
        import torch

        from .. import kernels as K
        from ..kernels.roi_align import roi_align

        model, cfg = self.model, self.model.config
        backend = self.kernel_backend
        n = int(images.shape[0])
        height, width = model.check_input(images)
        clock = time.perf_counter
        timings: dict[str, float] = {}
        t = clock()
        dense_runner = self.dense_runner(height, width, n)
        x = images.detach().contiguous().numpy() if isinstance(images, torch.Tensor) else np.ascontiguousarray(images)
        out = dense_runner.infer({"images": x})
        levels = len(cfg.anchor_sizes)
        shapes = [tuple(out[f"logits_{i}"].shape[-2:]) for i in range(levels)]
        # (N, A, h, w) / (N, 4A, h, w) → (N, h·w·A) / (N, h·w·A, 4), the order of gixdrt.model.detector.flatten_rpn
        flat_logits, flat_deltas = [], []
        for i in range(levels):
            lg, dl = out[f"logits_{i}"], out[f"deltas_{i}"]
            a, hh, ww = lg.shape[1:]
            flat_logits.append(lg.transpose(0, 2, 3, 1).reshape(n, hh * ww * a))
            flat_deltas.append(dl.reshape(n, a, 4, hh, ww).transpose(0, 3, 4, 1, 2).reshape(n, hh * ww * a, 4))
        logits = np.concatenate(flat_logits, 1)
        deltas = np.concatenate(flat_deltas, 1)
        anchors, starts = self.anchors(height, width, shapes)
        t1 = clock()
        timings["dense"] = t1 - t
        boxes, scores, lv, valid = K.decode_topk(
            logits, deltas, anchors, starts, k=cfg.rpn_pre_nms_top_n, height=height, width=width,
            bbox_clip=cfg.bbox_clip, min_size=cfg.rpn_min_size, backend=backend,
        )  # fmt: skip
        r = cfg.rpn_post_nms_top_n
        keep, count = K.nms_fixed(boxes, scores, valid, cfg.rpn_nms_iou, r, lv, backend=backend)
        props = np.zeros((n, r, 4), np.float32)  # fixed layout: image i's proposals at [i, :count[i]]
        for i in range(n):
            props[i, : count[i]] = boxes[i, keep[i, : count[i]]]
        t2 = clock()
        timings["proposals"] = t2 - t1
        runner, buf = self.head_runner(r * max(n, 1))
        feats = buf.numpy()
        p2 = np.ascontiguousarray(out["p2"])
        sy, sx = (float(v) for v in model.roi_align.scales[0])
        for i in range(n):
            c = int(count[i])
            if c == 0:
                continue
            rois = np.zeros((c, 5), np.float32)  # batch index 0 of the single-image view below
            rois[:, 1:] = props[i, :c]
            roi_align(p2[i : i + 1], rois, cfg.roi_output_size, (sy, sx), cfg.roi_sampling_ratio, cfg.roi_aligned,
                      out=feats[i * r : i * r + c])
        t3 = clock()
        timings["roi_align"] = t3 - t2
        res = runner.infer({"roi_features": feats})
        head_logits = np.asarray(res["logits"], np.float32).reshape(n, r)
        head_deltas = np.asarray(res["deltas"], np.float32).reshape(n, r, 4)
        t4 = clock()
        timings["head"] = t4 - t3
        fb, fs, fc = K.decode_final(
            head_logits, head_deltas, props, count, height=height, width=width,
            score_threshold=model.score_threshold, bbox_clip=cfg.bbox_clip, min_size=cfg.min_size, backend=backend,
        )  # fmt: skip
        cap = max(int(model.max_detections), 0)
        keep, kc = K.nms_fixed(fb, fs, fc, model.nms_iou, cap, backend=backend)
        dets = []
        for i in range(n):
            sel = keep[i, : kc[i]]
            dets.append({"boxes": torch.from_numpy(fb[i, sel]), "scores": torch.from_numpy(fs[i, sel])})
        timings["postprocess"] = clock() - t4
        self.timings = timings
        return dets

    def _run_torch(self, images) -> list[dict[str, Any]]:
        """Graphs on ONNX Runtime, the PyTorch reference ops between them (the CUDA provider's path)."""
        import torch

        from ..model.detector import Dense

        model, cfg = self.model, self.model.config
        n = int(images.shape[0])
        height, width = model.check_input(images)
        clock = time.perf_counter
        timings: dict[str, float] = {}
        with torch.inference_mode():
            t = clock()
            dense_runner = self.dense_runner(height, width, n)
            feed = images if self.device.startswith("cuda") else images.contiguous().numpy()
            out = self._as_torch(dense_runner.infer({"images": feed}))
            levels = len(cfg.anchor_sizes)
            logits = [out[f"logits_{i}"] for i in range(levels)]
            deltas = [out[f"deltas_{i}"] for i in range(levels)]
            # proposals() reads only the level shapes of P3.. (for the anchors): empty tensors carry them
            carriers = [lg.new_empty((n, 0, *lg.shape[-2:])) for lg in logits[1:]]
            dense = Dense([out["p2"], *carriers], logits, deltas, (height, width))
            t1 = clock()
            timings["dense"] = t1 - t
            props = model.proposals(dense)
            t2 = clock()
            timings["proposals"] = t2 - t1
            runner, buf = self.head_runner(cfg.rpn_post_nms_top_n * max(n, 1))
            feats = self._roi_features(out["p2"], props, buf)
            t3 = clock()
            timings["roi_align"] = t3 - t2
            k = int(feats.shape[0])
            r = int(buf.shape[0])
            head_logits, head_deltas = [], []
            for start in range(0, k, r):  # one pass unless more RoIs than the graph takes
                m = min(r, k - start)
                if not (start == 0 and feats.data_ptr() == buf.data_ptr()):  # RoIAlign wrote in place
                    buf[:m].copy_(feats[start : start + m])
                res = self._as_torch(runner.infer({"roi_features": buf if self.device.startswith("cuda") else buf.numpy()}))
                head_logits.append(res["logits"][:m].clone())
                head_deltas.append(res["deltas"][:m].clone())
            lg = torch.cat(head_logits) if head_logits else feats.new_zeros((0,))
            dl = torch.cat(head_deltas) if head_deltas else feats.new_zeros((0, 4))
            t4 = clock()
            timings["head"] = t4 - t3
            dets = model.postprocess(lg, dl, props)
            timings["postprocess"] = clock() - t4
        self.timings = timings
        return dets
