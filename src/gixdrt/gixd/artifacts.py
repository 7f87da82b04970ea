"""A detection model's description and graphs, for every runtime: :class:`ModelGraphs`.

What a model is to the runtimes:

- its card (architecture, thresholds, preprocessing, provenance) and the RoIAlign scale of its weights, read
  without PyTorch;
- its graphs: the ONNX files (dense and head, batch and image size dynamic) for ONNX Runtime, static ONNX files
  for TensorRT builds (and the head with gixdrt's RoIAlign plugin), and ``torch.nn.Module`` s for the torch
  backends.

Where the ONNX files come from:

- the ``default`` model ships them in the package beside its weights and card
  (``gixdrt/model/weights/default/{dense,head}.onnx``, fp32 graphs storing the fp16 weights losslessly): the CPU
  runtime never exports and needs no PyTorch;
- every other model (``published``, a checkpoint path, a model in memory) is exported once with PyTorch and
  onnx (``pip install gixdrt[torch]``) into ``$GIXDRT_CACHE/graphs/<key>-v<EXPORT_VERSION>/``, keyed by the
  weights (the file's sha256, or the state dict's for a model in memory); later runs, in any process, use the
  cached files without PyTorch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.base import EngineUnavailableError
from ..errors import CheckpointError
from ..io.assets import sha256
from ..model.config import DetectorConfig, Thresholds

log = logging.getLogger(__name__)

__all__ = ["GRAPHS", "ModelGraphs", "graph_cache_dir"]

#: the ONNX files a model directory ships (gixdrt's own format), by graph
GRAPHS = {"dense": "dense.onnx", "head": "head.onnx"}
#: the int8 dense graph a model directory may ship too (recorded in its card as ``graphs.dense_int8``)
INT8_DENSE = "dense-int8.onnx"
#: the manifest written beside exported graphs (card fields the runtime needs)
MANIFEST = "graphs.json"


def graph_cache_dir() -> Path:
    """Where exported graphs are kept: ``gixdrt.io.cache_dir() / "graphs"``."""
    from ..io import cache_dir

    return cache_dir() / "graphs"


def _export_version() -> int:
    from ..export.graphs import EXPORT_VERSION

    return EXPORT_VERSION


@dataclass
class ModelGraphs:
    """One model: its card, config, thresholds and RoIAlign scale, and its graphs for every runtime (see the
    module docstring). Make it with :meth:`open`."""

    name: str
    card: dict[str, Any] | None
    config: DetectorConfig
    thresholds: Thresholds
    key: str
    shipped: Path | None = None  # a folder with the shipped ONNX files (the default model)
    loader: Callable[[], Any] | None = field(default=None, repr=False)  # → GixdDetector (needs PyTorch)
    cache: Path | None = None
    roi_scale: tuple[float, float] | None = None
    calibration: Any = None  # gixdrt.export.quantize.Calibration of the int8 graph (None: the default settings)
    _model: Any = field(default=None, repr=False)

    # --- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, spec: Any = "default", *, cache: bool | str | os.PathLike = True) -> ModelGraphs:
        """A model by name (``default``, ``published``, ``published:NAME``, a built-in name), path (a directory,
        ``.json`` or ``.safetensors`` of gixdrt's format, or a published ``.h5``/``.pt`` checkpoint) or as a
        :class:`gixdrt.model.GixdDetector`. cache: True (:func:`graph_cache_dir`), a directory, or False (a
        temporary directory removed at exit). Reads no weights and needs no PyTorch until a graph has to be
        exported or a torch backend runs."""
        from ..model import zoo

        folder = _cache_root(cache)
        if not isinstance(spec, (str, os.PathLike)):
            return cls._in_memory(spec, folder)
        text = os.fspath(spec)
        if text == "default" or text in zoo.builtin():
            path = zoo.WEIGHTS / text
            if text == "default" and not zoo.has_default_weights():
                return cls.open(f"published:{zoo.PUBLISHED_DEFAULT}", cache=cache)
            return cls._ours(path, folder, name=text, shipped=True)
        if text == "published" or text.startswith("published:"):
            from ..io import fetch_published

            name = text.partition(":")[2] or zoo.PUBLISHED_DEFAULT
            checkpoints = fetch_published(quiet=False).checkpoints
            if name not in checkpoints:
                raise CheckpointError(f"no published checkpoint named {name!r}; known: {', '.join(sorted(checkpoints))}")
            card = {"name": name, "provenance": {"source": "published", "package": "gixi 0.0.1 (GPL-3.0)"}}
            return cls._published(checkpoints[name], folder, name=text, card=card)
        path = Path(text)
        if not path.exists():
            names = ", ".join(["published", "default", *(n for n in zoo.builtin() if n != "default")])
            raise CheckpointError(f"no such model file or directory (expected one of {names}, or a path)", path=path)
        if path.is_dir() or path.suffix.lower() in (".json", ".safetensors"):
            return cls._ours(path, folder, name=text, shipped=False)
        return cls._published(path, folder, name=text, card=None)

    @classmethod
    def _ours(cls, path: Path, cache: Path, *, name: str, shipped: bool) -> ModelGraphs:
        from ..model.card import card_path, read_card

        card = read_card(path)
        try:
            config = DetectorConfig.from_dict(card["architecture"])
            thresholds = Thresholds(**{k: card["thresholds"][k] for k in ("score_threshold", "nms_iou", "max_detections")})
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"invalid model card ({type(exc).__name__}: {exc})", path=card_path(path)) from None
        weights = (card.get("weights") or {}).get("sha256") or ""
        key = hashlib.sha256((json.dumps(card["architecture"], sort_keys=True) + weights).encode()).hexdigest()
        graphs = card.get("graphs") or {}
        folder = card_path(path).parent
        has_graphs = shipped and all((folder / GRAPHS[g]).is_file() for g in GRAPHS) and graphs.get("roi_scale")
        roi_scale = tuple(float(v) for v in graphs["roi_scale"]) if has_graphs else None

        def load():
            from ..model.checkpoint import load_model

            return load_model(path)

        return cls(name=card.get("name") or name, card=card, config=config, thresholds=thresholds, key=key,
                   shipped=folder if has_graphs else None, loader=load, cache=cache, roi_scale=roi_scale)

    @classmethod
    def _published(cls, path: Path, cache: Path, *, name: str, card: dict | None) -> ModelGraphs:
        if not path.is_file():
            raise CheckpointError("not a regular file", path=path)
        key = sha256(path)

        def load():
            from ..model.checkpoint import load_published

            model = load_published(path)
            model.card = card
            return model

        config = DetectorConfig()
        return cls(name=name, card=card, config=config, thresholds=config.thresholds, key=key, loader=load, cache=cache)

    @classmethod
    def _in_memory(cls, model: Any, cache: Path) -> ModelGraphs:
        from ..export.graphs import model_digest

        if not hasattr(model, "config") or not hasattr(model, "state_dict"):
            raise TypeError(f"expected a model name, a path or a GixdDetector, got {type(model).__name__}")
        thresholds = Thresholds(float(model.score_threshold), float(model.nms_iou), int(model.max_detections))
        card = getattr(model, "card", None)
        name = (card or {}).get("name") or "in-memory model"
        out = cls(name=name, card=card, config=model.config, thresholds=thresholds, key=model_digest(model),
                  loader=lambda: model, cache=cache)
        out._model = model
        return out

    # --- what the runtimes ask for ------------------------------------------------------------------
    def model(self):
        """The PyTorch model (:class:`gixdrt.model.GixdDetector`, eval, CPU), loaded once."""
        if self._model is None:
            self._require_torch("load the PyTorch model")
            self._model = self.loader()
        return self._model

    def _require_torch(self, what: str) -> None:
        import importlib.util

        missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
        if "torch" in missing or (what.startswith("export") and missing):
            raise EngineUnavailableError(
                f"model {self.name!r}: to {what}, gixdrt needs {' and '.join(missing)} (pip install 'gixdrt[torch]'); "
                "exported graphs are cached, so this is needed once per model"
            )

    def folder(self, *, create: bool = True) -> Path:
        """The cache folder of this model's exported graphs (created unless ``create`` is False)."""
        base = self.cache if self.cache is not None else graph_cache_dir()
        d = base / f"{self.key[:20]}-v{_export_version()}"
        if create:
            d.mkdir(parents=True, exist_ok=True)
        return d

    def scale(self) -> tuple[float, float]:
        """RoIAlign's (s_y, s_x) on P2: from the shipped card or the cache manifest, else from the weights."""
        if self.roi_scale is None:
            manifest = self._manifest()
            if manifest.get("roi_scale"):
                self.roi_scale = tuple(float(v) for v in manifest["roi_scale"])
            elif self.loader is not None and (self._model is not None or _importable("torch")):
                self.roi_scale = tuple(float(v) for v in self.model().roi_align.scales[0])
                self._write_manifest()
            else:
                self.roi_scale = tuple(float(v) for v in self.config.roi_scale)
        return self.roi_scale

    def _manifest(self) -> dict[str, Any]:
        if self.shipped is not None:
            return {}
        path = self.folder(create=False) / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write_manifest(self) -> None:
        from ..io.atomic import atomic_path

        doc = {"key": self.key, "name": self.name, "export_version": _export_version(),
               "roi_scale": list(self.scale()), "architecture": self.config.to_dict()}
        with atomic_path(self.folder() / MANIFEST) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    def can_provide(self, artifact: str) -> str | None:
        """None when ``artifact`` can be had here (shipped, cached, or exportable), else why not."""
        if self.loader is None or (self._model is None and not (_importable("torch") and _importable("onnx"))):
            return "exporting graphs needs PyTorch and onnx (pip install 'gixdrt[torch]')"
        return None

    def needs_export(self, backend: str, precision: str) -> bool:
        """Whether opening ``backend`` at ``precision`` exports ONNX graphs first (they are neither shipped nor
        cached): what a benchmark's first call includes."""
        if backend in ("torch", "torch-cuda"):
            return False
        if backend == "onnxruntime" and precision == "fp32" and self.shipped is not None:
            return False
        folder = self.folder(create=False)
        if precision == "int8" and backend == "onnxruntime":
            return self._shipped_int8() is None and not (folder / self._int8_name()).is_file()
        if backend == "tensorrt":
            return not any(folder.glob(f"*-{precision}.onnx"))
        return not all((folder / f"{g}-{precision}.onnx").is_file() for g in GRAPHS)

    def dims(self, artifact: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Values of the dynamic dimensions (:data:`gixdrt.export.graphs.DYNAMIC_DIMS`) of a graph fed ``shapes``."""
        from ..export.graphs import DYNAMIC_DIMS

        if artifact == "dense":
            n, _, h, w = shapes["images"]
            (p2h, p2w), *_ = self.config.level_shapes(h, w)
            anchors = sum(sh * sw for sh, sw in self.config.level_shapes(h, w)) * self.config.anchors_per_cell
            values = {"batch": n, "height": h, "width": w, "p2_height": p2h, "p2_width": p2w, "anchors": anchors}
        elif artifact == "head":
            values = {"rois": shapes["roi_features"][0]}
        else:
            raise ValueError(f"{artifact!r} has no dynamic dimensions")
        names = {d for axes in DYNAMIC_DIMS[artifact].values() for d in axes.values()}
        return {k: int(v) for k, v in values.items() if k in names}

    def onnx(self, artifact: str, *, precision: str = "fp32", shapes: Mapping[str, tuple[int, ...]] | None = None,
             static: bool = False) -> tuple[Path, dict[str, int]]:
        """The ONNX file of ``artifact`` (``dense``, ``head``, ``head_pooled``) and the values of its dynamic
        dimensions for the input ``shapes``: the shipped file, a cached export, or a new export (PyTorch)."""
        if artifact not in ("dense", "head", "head_pooled"):
            raise ValueError(f"unknown graph {artifact!r}")
        if artifact == "head_pooled":
            static = True
        if precision == "int8":
            if artifact != "dense":  # only the dense graph is quantised (the head is 1 GFLOP of the 88)
                return self.onnx(artifact, precision="fp32", shapes=shapes, static=static)
            return self._int8_dense(shapes, static)
        if not static and precision == "fp32" and self.shipped is not None:
            return self.shipped / GRAPHS[artifact], self.dims(artifact, shapes or {})
        if static:
            if shapes is None:
                raise ValueError("a static graph needs the input shapes")
            if artifact == "dense":
                n, _, h, w = shapes["images"]
                tag = f"{h}x{w}-b{n}"
            elif artifact == "head":
                tag = f"r{shapes['roi_features'][0]}"
            else:
                n, _, ph, pw = shapes["p2"]
                tag = f"{ph}x{pw}-b{n}"
            path = self.folder() / f"{artifact}-{tag}-{precision}.onnx"
        else:
            path = self.folder() / f"{artifact}-{precision}.onnx"
        if not path.is_file():
            self._export(artifact, path, precision=precision, shapes=shapes if static else None)
        return path, ({} if static else self.dims(artifact, shapes or {}))

    # --- int8 -----------------------------------------------------------------------------------------
    def _calibration(self):
        from ..export.quantize import Calibration

        return self.calibration if self.calibration is not None else Calibration()

    def _int8_name(self) -> str:
        return f"dense-int8-{self._calibration().key()}.onnx"

    def _shipped_int8(self) -> Path | None:
        """The shipped int8 dense graph when the card records one calibrated with the settings asked for."""
        if self.shipped is None or not (self.shipped / INT8_DENSE).is_file():
            return None
        entry = ((self.card or {}).get("graphs") or {}).get("dense_int8") or {}
        return self.shipped / INT8_DENSE if entry.get("calibration_key") == self._calibration().key() else None

    def _int8_dense(self, shapes, static: bool) -> tuple[Path, dict[str, int]]:
        """The int8 dense graph: shipped, cached, or quantised now from the fp32 graph (calibration: a minute)."""
        path = self._shipped_int8()
        if path is None:
            path = self.folder() / self._int8_name()
            if not path.is_file():
                self._quantize(path)
        if not static:
            return path, self.dims("dense", shapes or {})
        if shapes is None:
            raise ValueError("a static graph needs the input shapes")
        from ..export.quantize import static_int8

        n, _, h, w = shapes["images"]
        fixed = self.folder() / f"dense-{h}x{w}-b{n}-int8-{self._calibration().key()}.onnx"
        if not fixed.is_file():
            static_int8(path, fixed, self.dims("dense", shapes))
        return fixed, {}

    def _quantize(self, path: Path) -> None:
        import sys

        from ..export.quantize import quantize_dense

        cal = self._calibration()
        if self.shipped is not None:
            src = self.shipped / GRAPHS["dense"]
        else:
            src = self.folder() / "dense-fp32.onnx"
            if not src.is_file():
                self._export("dense", src, precision="fp32", shapes=None)
        n = cal.sim_images + int(cal.real_frame)
        print(f"gixdrt: quantising the dense graph of {self.name} to int8 (calibrating on {n} images, "
              f"{cal.method}); once, cached in {path.parent}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        quantize_dense(src, path, calibration=cal)
        log.info("quantised %s in %.1f s", path.name, time.perf_counter() - t0)

    def _export(self, artifact: str, path: Path, *, precision: str, shapes) -> None:
        self._require_torch(f"export its {artifact} graph")
        from ..export import export_dense, export_head, export_head_pooled

        model = self.model()
        fp16 = precision == "fp16"
        t0 = time.perf_counter()
        if artifact == "dense":
            shape = None if shapes is None else tuple(shapes["images"][2:])
            batch = None if shapes is None else shapes["images"][0]
            export_dense(model, path, shape=shape, batch=batch, fp16=fp16)
        elif artifact == "head":
            export_head(model, path, rois=None if shapes is None else shapes["roi_features"][0], fp16=fp16)
        else:
            n, _, ph, pw = shapes["p2"]
            export_head_pooled(model, path, batch=n, p2_shape=(ph, pw), fp16=fp16)
        self._write_manifest()
        log.info("exported %s in %.1f s", path.name, time.perf_counter() - t0)

    def torch_module(self, graph: str, *, precision: str = "fp32", fold: bool = False, channels_last: bool = False):
        """Graph ``graph`` as a ``torch.nn.Module`` (:mod:`gixdrt.model.graphs`): on a BN-folded copy with
        ``fold``, in float16 with ``precision="fp16"``. The model itself is never modified."""
        import torch

        from ..export.fold import fold_batchnorm
        from ..model.graphs import DenseGraph, HeadGraph

        model = self.model()
        dtype = torch.float16 if precision == "fp16" else torch.float32
        if fold:
            model = fold_batchnorm(model)
        elif dtype != torch.float32 or channels_last:
            import copy

            model = copy.deepcopy(model)
        if graph == "dense":
            return DenseGraph(model, dtype, channels_last)
        if graph == "head":
            return HeadGraph(model, dtype)
        raise ValueError(f"no torch module for graph {graph!r}")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _cache_root(cache: bool | str | os.PathLike) -> Path | None:
    """None for the user cache (resolved when first needed), a directory, or a temporary one removed at exit."""
    if cache is True:
        return None
    if cache is False:
        import atexit
        import shutil
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="gixdrt-graphs-"))
        atexit.register(shutil.rmtree, d, True)
        return d
    return Path(cache)
