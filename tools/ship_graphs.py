#!/usr/bin/env python3
"""Export a shipped model's ONNX graphs next to its weights and record them in its card.

    python tools/ship_graphs.py [src/gixdrt/model/weights/default]

Writes ``dense.onnx`` and ``head.onnx`` (batch and image size dynamic, the fp16 weights stored losslessly; see
:func:`gixdrt.export.ship_graphs`) into the model directory and the card's ``graphs`` section, so that the CPU
runtime runs the model without PyTorch and without exporting. ``tools/ship_default.py`` calls it when it ships
a model; run it alone after a change of the export (``EXPORT_VERSION``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "src" / "gixdrt" / "model" / "weights" / "default"
LIMIT = 16 * 1024 * 1024


def ship(model_dir: Path) -> dict:
    from gixdrt.export import ship_graphs
    from gixdrt.io.atomic import atomic_path
    from gixdrt.model import load_model, read_card

    model = load_model(model_dir)
    section = ship_graphs(model, model_dir)
    for name in ("dense", "head"):
        if section[name]["bytes"] >= LIMIT:
            raise SystemExit(f"{model_dir / section[name]['file']}: {section[name]['bytes'] / 1e6:.1f} MB, over the 16 MiB limit")
    card = read_card(model_dir)
    card["graphs"] = section
    with atomic_path(model_dir / "model.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return section


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else DEFAULT
    section = ship(folder)
    print(json.dumps(section, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
