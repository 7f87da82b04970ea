"""Model cards of gixdrt's own format, read without PyTorch.

A model directory holds ``model.safetensors`` (the weights, :mod:`gixdrt.model.checkpoint` reads and writes
them with PyTorch) and ``model.json``, the card: format, architecture, thresholds, preprocessing, provenance,
the sha256 of the weights and, for models shipped with their graphs, the ONNX files (``graphs``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["CARD_NAME", "FORMAT", "FORMAT_VERSION", "WEIGHTS_NAME", "card_path", "model_paths", "read_card"]

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
FORMAT = "gixdrt-model"
FORMAT_VERSION = 1


def model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, card file) for a directory, a ``.safetensors`` path or a ``.json`` card path."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    return p / WEIGHTS_NAME, p / CARD_NAME


def card_path(path: str | os.PathLike) -> Path:
    """The card file of a model directory, ``.safetensors`` or ``.json`` path."""
    return model_paths(path)[1]


def check_card(where: Path, *, fmt: str, version: int, required: Sequence[str], what: str) -> dict[str, Any]:
    """Read the JSON model card ``where`` and check its ``format``, ``format_version`` and ``required`` keys
    (``what`` names the kind of card in the messages) → the card; CheckpointError naming the file otherwise."""
    try:
        card = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"model card is not valid JSON ({exc})", path=where) from None
    if not isinstance(card, dict) or card.get("format") != fmt:
        raise CheckpointError(f"not a {what} card (format is not {fmt!r})", path=where)
    if card.get("format_version") != version:
        raise CheckpointError(f"unsupported format_version {card.get('format_version')!r} (this gixdrt reads "
                              f"{version})", path=where)
    for key in required:
        if key not in card:
            raise CheckpointError(f"model card lacks {key!r}", path=where)
    return card


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the model card of a saved model (directory, ``.safetensors`` or ``.json`` path)."""
    where = card_path(path)
    if not where.is_file():
        raise CheckpointError(f"model card {where.name} not found", path=where)
    return check_card(where, fmt=FORMAT, version=FORMAT_VERSION, what="gixdrt model",
                      required=("architecture", "thresholds", "storage_dtype"))
