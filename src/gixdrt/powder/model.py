"""Powder U-Net models on disk and by name: a directory with ``model.safetensors`` (weights, float16 or float32),
``model.json`` (the card) and ``unet.onnx`` (the graph, float32, dynamic N/H/W, for ONNX Runtime without PyTorch).

- ``default``: the model shipped in the package (``gixdrt/powder/weights/default``), when there is one;
- any other name under ``gixdrt/powder/weights/``; or a path to such a directory (or its ``model.json``).

The card (JSON): ``format`` (``gixdrt-powder-unet``), ``format_version``, ``architecture`` (the
:class:`~gixdrt.model.unet.UNetConfig`), ``normalization`` (the parameters of the ``powder_normalize`` kernel),
``mask`` (threshold on P(spot), minimum component size, connectivity), ``storage_dtype``, ``sha256`` of the weights
and of the graph, and free ``training`` / ``evaluation`` sections.

>>> from gixdrt.powder.model import load_card, load_unet, onnx_graph
>>> card = load_card("default"); model = load_unet("default")     # torch module, eval mode, float32
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io.assets import sha256

__all__ = ["FORMAT", "WEIGHTS", "builtin", "export_onnx", "load_card", "load_unet", "model_dir", "onnx_graph",
           "save_unet", "static_graph"]

FORMAT = "gixdrt-powder-unet"
FORMAT_VERSION = 1
WEIGHTS = Path(__file__).resolve().parent / "weights"
WEIGHTS_NAME, CARD_NAME, ONNX_NAME = "model.safetensors", "model.json", "unet.onnx"


def builtin() -> list[str]:
    """Names of the powder models shipped in the package."""
    if not WEIGHTS.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS.iterdir() if (p / CARD_NAME).is_file())


def model_dir(spec: str | os.PathLike) -> Path:
    """The directory of a model name (``default`` or another shipped name) or path."""
    text = os.fspath(spec)
    if text in builtin():
        return WEIGHTS / text
    path = Path(text)
    if path.suffix == ".json":
        path = path.parent
    if not (path / CARD_NAME).is_file():
        names = ", ".join(builtin()) or "none shipped yet"
        raise CheckpointError(f"no powder model here (expected a directory with {CARD_NAME}, or a shipped name: "
                              f"{names})", path=path)
    return path


def load_card(spec: str | os.PathLike) -> dict[str, Any]:
    """Read and check a powder model's card."""
    from ..model.card import check_card

    return check_card(model_dir(spec) / CARD_NAME, fmt=FORMAT, version=FORMAT_VERSION, what="powder U-Net",
                      required=("architecture", "normalization", "mask", "sha256"))


def load_unet(spec: str | os.PathLike, *, verify: bool = True):
    """The model's :class:`~gixdrt.model.unet.UNet` (float32, eval mode, CPU); ``verify`` checks the sha256."""
    from safetensors.torch import load_file

    from ..model.unet import UNet, UNetConfig

    d = model_dir(spec)
    card = load_card(d)
    weights = d / WEIGHTS_NAME
    if verify and sha256(weights) != card["sha256"].get("weights"):
        raise CheckpointError("weights do not match the card's sha256", path=weights)
    model = UNet(UNetConfig(**card["architecture"]))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit the architecture (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]})", path=weights)
    model.card = card
    return model.eval()


def onnx_graph(spec: str | os.PathLike) -> Path:
    """The path of the model's ONNX graph (float32, dynamic N, H and W: input ``x``, output ``logits``)."""
    d = model_dir(spec)
    path = d / ONNX_NAME
    if not path.is_file():
        raise CheckpointError(f"the model has no {ONNX_NAME}", path=d)
    return path


def static_graph(spec: str | os.PathLike, shape: tuple[int, int, int, int], folder: str | os.PathLike) -> Path:
    """The model's ONNX graph with its input fixed to ``shape`` (N, C, H, W) and every shape inferred: what a
    TensorRT build takes (the same weights and operators). Written once into ``folder`` as
    ``unet-<weights sha256[:16]>-NxCxHxW.onnx`` (atomically) and reused."""
    import onnx
    from onnx import shape_inference

    from ..io.atomic import atomic_path

    src = onnx_graph(spec)
    key = sha256(src)[:16]
    n, c, h, w = (int(v) for v in shape)
    dst = Path(folder) / f"unet-{key}-{n}x{c}x{h}x{w}.onnx"
    if dst.is_file():
        return dst
    model = onnx.load(os.fspath(src))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != c):
        raise CheckpointError(f"the graph's input is not [N, {c}, H, W]", path=src)
    for d, v in zip(dims, (n, c, h, w)):
        d.ClearField("dim_param")
        d.dim_value = v
    for out in model.graph.output:  # re-inferred below
        for d in out.type.tensor_type.shape.dim:
            d.ClearField("dim_param")
            d.ClearField("dim_value")
    del model.graph.value_info[:]
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred)
    Path(folder).mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        onnx.save(inferred, os.fspath(tmp))
    return dst


def export_onnx(model, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Export a :class:`~gixdrt.model.unet.UNet` (float32, eval) with dynamic N, H, W → ``path``."""
    import warnings

    import torch

    m = model.float().eval()
    probe = torch.zeros(1, m.config.in_channels, 4 * m.config.multiple, 4 * m.config.multiple)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (probe,), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                          opset_version=opset,
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}})
    return path


def save_unet(model, directory: str | os.PathLike, *, normalization: dict[str, Any], mask: dict[str, Any],
              fp16: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write ``directory`` (created; files replaced atomically one by one): weights (float16 with ``fp16``), the
    ONNX graph (float32 weights as stored, i.e. rounded through float16 when ``fp16``) and the card."""
    import copy

    from safetensors.torch import save_file

    from .. import __version__

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).float().eval()
    state = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
    stored = {k: (v.half() if fp16 and v.is_floating_point() else v) for k, v in state.items()}
    tmp = d / (WEIGHTS_NAME + ".part")
    save_file(stored, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as any other file written here (the writer may make it private)
    os.replace(tmp, d / WEIGHTS_NAME)
    m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in stored.items()})
    tmp = d / (ONNX_NAME + ".part")
    export_onnx(m, tmp)
    os.replace(tmp, d / ONNX_NAME)
    card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gixdrt_version": __version__,
        "architecture": m.config.to_dict(),
        "parameters": m.n_parameters(),
        "normalization": dict(normalization),
        "mask": dict(mask),
        "storage_dtype": "float16" if fp16 else "float32",
        "sha256": {"weights": sha256(d / WEIGHTS_NAME), "onnx": sha256(d / ONNX_NAME)},
        **(extra or {}),
    }
    tmp = d / (CARD_NAME + ".part")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, d / CARD_NAME)
    return d
