"""Model files: the published checkpoints (read only) and gixdrt's own format (safetensors + JSON card).

Published: a ``torch.save`` zip of a plain state dict (149 entries; the ``.h5`` suffix is misleading). It
is read with ``torch.load(map_location="cpu", weights_only=True)`` (no code is unpickled) and checked
strictly: every key present, nothing extra, every shape and dtype kind as the architecture expects.

Ours: a directory with ``model.safetensors`` (the state dict, fp32 or fp16 weights) and ``model.json``
(the model card: architecture, thresholds, preprocessing, provenance, gixdrt version, storage dtype and the
sha256 of the weights file). fp16 storage halves the file; weights are cast back to fp32 on load, and the
buffers (BN statistics, input normalisation, RoI scales) always stay fp32.

Every failure raises :class:`gixdrt.errors.CheckpointError` naming the file and the first problem.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import published
from ..errors import CheckpointError
from ..io.assets import sha256 as _sha256
from .card import CARD_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, model_paths, read_card
from .network import DetectorConfig, GixdDetector

__all__ = [
    "CARD_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "PUBLISHED_PREPROCESSING",
    "WEIGHTS_NAME",
    "check_state_dict",
    "convert_published",
    "load_model",
    "load_published",
    "read_card",
    "read_published_state",
    "save_model",
]


#: the input the published model expects (the contrast chain of the paper's Methods IV A, test_config.yaml)
PUBLISHED_PREPROCESSING: dict[str, Any] = {
    "polar_shape": list(published.POLAR_SHAPE),
    "contrast": {"coef": published.CONTRAST_COEF, "limit": published.CONTRAST_LIMIT, "log": published.CONTRAST_LOG,
                 "disable": False},
    "input_range": [0.0, 1.0],
}
_RESERVED = {"format", "format_version", "gixdrt_version", "architecture", "storage_dtype", "weights", "num_parameters"}


# -------------------------------------------------------------------------------------------------
# Strict state-dict check
# -------------------------------------------------------------------------------------------------
def check_state_dict(state: Mapping[str, Any], model: torch.nn.Module, path: str | os.PathLike | None = None) -> None:
    """Raise :class:`CheckpointError` at the first difference between ``state`` and ``model.state_dict()``.

    Checked in order: the object is a mapping of tensors; missing keys (in the model's order); unexpected
    keys (in the file's order); shapes; dtype kind (floating vs integer); finiteness of floating tensors.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a state dict (mapping of tensors), found {type(state).__name__}", path=path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"missing key {missing[0]!r}{more}", path=path)
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"unexpected key {unexpected[0]!r}{more}", path=path)
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{key!r} is a {type(value).__name__}, expected a tensor", path=path)
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{key!r} has shape {tuple(value.shape)}, the architecture expects {tuple(ref.shape)}", path=path
            )
        if value.is_floating_point() != ref.is_floating_point():
            raise CheckpointError(f"{key!r} has dtype {value.dtype}, expected {ref.dtype}", path=path)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{key!r} contains NaN or infinite values", path=path)


def _load_checked(model: GixdDetector, state: Mapping[str, Tensor], path: str | os.PathLike | None) -> GixdDetector:
    check_state_dict(state, model, path)
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) for k, v in state.items()}  # fp16 storage → fp32
    model.load_state_dict(state, strict=True)
    return model.eval()


# -------------------------------------------------------------------------------------------------
# Published checkpoints
# -------------------------------------------------------------------------------------------------
def read_published_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a published checkpoint file into a state dict (no architecture check). Raises CheckpointError."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError("file not found", path=p)
    if not p.is_file():
        raise CheckpointError("not a regular file", path=p)
    if p.stat().st_size == 0:
        raise CheckpointError("empty file", path=p)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"not a readable PyTorch checkpoint ({type(exc).__name__}: {reason})", path=p) from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a state dict (mapping of tensors), found {type(state).__name__}", path=p)
    return dict(state)


def load_published(path: str | os.PathLike, config: DetectorConfig | None = None) -> GixdDetector:
    """Load a published checkpoint (e.g. ``save_only_largest_2.h5``) strictly → :class:`GixdDetector` (eval, fp32, CPU).

    config: architecture and thresholds (default: the published ones, score 0.6, NMS 0.1, 250 per image).
    Raises :class:`CheckpointError` naming the file: not found, empty, corrupt or not a torch zip, not a
    state dict, missing/unexpected key, wrong shape or dtype kind, non-finite values.
    """
    state = read_published_state(path)
    return _load_checked(GixdDetector(config), state, path)


# -------------------------------------------------------------------------------------------------
# Our format
# -------------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"model card: non-finite number {value}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    raise ValueError(f"model card: cannot store a {type(value).__name__} in JSON")


def save_model(
    model: GixdDetector, path: str | os.PathLike, card: Mapping[str, Any] | None = None, *, fp16: bool = False
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into directory ``path`` (created), or to ``X.safetensors``
    and ``X.json`` when ``path`` ends in ``.safetensors``. Returns the card's path.

    card: extra card entries (``provenance``, ``preprocessing``, ``thresholds``, notes, ...) merged over the
    defaults; the computed entries (format, architecture, storage dtype, weights, version) cannot be set.
    fp16: store floating weights as float16 (buffers stay float32); they are cast back to fp32 on load.
    """
    from safetensors.torch import save_file

    from .. import __version__

    card = dict(card or {})
    clash = sorted(_RESERVED & set(card))
    if clash:
        raise ValueError(f"model card: {', '.join(clash)} are written by save_model and cannot be given")
    weights_path, card_path = model_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)

    params = {name for name, _ in model.named_parameters()}
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu")
        if fp16 and name in params and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[name] = t.contiguous().clone()
    storage = "float16" if fp16 else "float32"
    tmp = weights_path.with_name(f".{weights_path.name}.part")
    save_file(tensors, os.fspath(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION), "storage_dtype": storage})
    os.replace(tmp, weights_path)

    cfg: DetectorConfig = model.config
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gixdrt_version": __version__,
        "architecture": cfg.to_dict(),
        "storage_dtype": storage,
        "weights": {"file": weights_path.name, "sha256": _sha256(weights_path), "tensors": len(tensors)},
        "num_parameters": model.num_parameters(),
        "thresholds": {
            "score_threshold": float(model.score_threshold),
            "nms_iou": float(model.nms_iou),
            "max_detections": int(model.max_detections),
        },
        "input": {
            "layout": "NCHW",
            "channels": cfg.in_channels,
            "height_multiple": cfg.height_multiple,
            "width_multiple": cfg.width_multiple,
            "normalization": {"mean": float(model.transform_img.img_mean), "std": float(model.transform_img.img_std)},
            "boxes": "x0, y0, x1, y1 in polar-image pixels (x: |Q| column, y: φ row)",
        },
        "preprocessing": PUBLISHED_PREPROCESSING,
        "provenance": {},
    }
    for key, value in card.items():
        if isinstance(value, Mapping) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    text = json.dumps(_jsonable(doc), indent=2, ensure_ascii=False) + "\n"
    tmp = card_path.with_name(f".{card_path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, card_path)
    return card_path


def load_model(path: str | os.PathLike, *, verify: bool = True) -> GixdDetector:
    """Load a model saved by :func:`save_model` strictly → :class:`GixdDetector` (eval, fp32, CPU).

    The card gives the architecture and thresholds (set as the model's attributes; the card is kept as
    ``model.card``). verify: check the weights' sha256 against the card. Raises :class:`CheckpointError`.
    """
    from safetensors.torch import load_file

    weights_path, card_path = model_paths(path)
    card = read_card(path)
    try:
        cfg = DetectorConfig.from_dict(card["architecture"])
        thresholds = card["thresholds"]
        score, iou, cap = float(thresholds["score_threshold"]), float(thresholds["nms_iou"]), int(thresholds["max_detections"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"invalid model card ({type(exc).__name__}: {exc})", path=card_path) from None
    if not weights_path.is_file():
        raise CheckpointError("weights file not found", path=weights_path)
    if verify:
        want = (card.get("weights") or {}).get("sha256")
        if want and _sha256(weights_path) != want:
            raise CheckpointError(f"sha256 does not match the card {card_path.name} (file changed or corrupt)", path=weights_path)
    try:
        state = load_file(os.fspath(weights_path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in the Rust reader in various ways
        raise CheckpointError(f"not a readable safetensors file ({exc})", path=weights_path) from None
    try:
        model = GixdDetector(cfg)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"invalid architecture in the card ({exc})", path=card_path) from None
    _load_checked(model, state, weights_path)
    model.score_threshold, model.nms_iou, model.max_detections = score, iou, cap
    model.card = card
    return model


def convert_published(
    src: str | os.PathLike, dst: str | os.PathLike, *, fp16: bool = False, card: Mapping[str, Any] | None = None
) -> Path:
    """Published checkpoint ``src`` (``.h5`` torch zip) → our format in directory ``dst``; returns the card path.

    The card records where the weights came from (file name, sha256, the gixi 0.0.1 package, GPL-3.0).
    """
    src = Path(src)
    model = load_published(src)
    provenance = {
        "source": "published",
        "package": "gixi 0.0.1 (PyPI source archive, GPL-3.0)",
        "file": src.name,
        "sha256": _sha256(src),
        "converted_by": "gixdrt.model.convert_published",
    }
    extra = dict(card or {})
    extra["provenance"] = {**provenance, **dict(extra.get("provenance") or {})}
    extra.setdefault("name", src.stem)
    return save_model(model, dst, extra, fp16=fp16)
