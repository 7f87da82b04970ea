"""Model names the CLI and the Python API accept, and where their weights come from.

- ``published``: the authors' default checkpoint ``save_only_largest_2`` (downloaded once into the cache);
  ``published:segments_detector_6`` (or any other published name) picks the other one;
- ``default``: gixdrt's own weights, shipped in the package, once they exist; until then the published
  default checkpoint;
- a built-in name: any other model shipped in the package (``gixdrt/model/weights/NAME/``), see :func:`builtin`;
- a path: a directory, ``.json`` or ``.safetensors`` file in gixdrt's format, or a published-format
  ``.h5``/``.pt``/``.pth`` state dict.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

#: gixdrt's own models inside the package: one directory each (model.safetensors + model.json)
WEIGHTS = Path(__file__).resolve().parent / "weights"
#: where gixdrt's own default weights live
DEFAULT_WEIGHTS = WEIGHTS / "default"
PUBLISHED_DEFAULT = "save_only_largest_2"


def has_default_weights() -> bool:
    return (DEFAULT_WEIGHTS / "model.json").is_file()


def builtin() -> list[str]:
    """Names of the models shipped in the package (``default`` among them once it exists)."""
    if not WEIGHTS.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS.iterdir() if (p / "model.json").is_file())


def describe(spec: str) -> str:
    """A one-line description of what ``spec`` resolves to (without loading it)."""
    if spec == "default":
        if not has_default_weights():
            return f"default (gixdrt's own weights are not trained yet: using published {PUBLISHED_DEFAULT})"
        from .card import read_card

        try:
            name = read_card(DEFAULT_WEIGHTS).get("name")
        except CheckpointError:  # loading it will say what is wrong
            name = None
        return f"default ({name})" if name else "default"
    return spec


def load(spec: str | os.PathLike):
    """Load a model by name or path → :class:`gixdrt.model.GixdDetector` (eval, fp32, CPU)."""
    from .checkpoint import load_model, load_published

    text = os.fspath(spec)
    if text == "default":
        return load_model(DEFAULT_WEIGHTS) if has_default_weights() else load(f"published:{PUBLISHED_DEFAULT}")
    if text == "published" or text.startswith("published:"):
        from ..io import fetch_published

        name = text.partition(":")[2] or PUBLISHED_DEFAULT
        checkpoints = fetch_published(quiet=False).checkpoints
        if name not in checkpoints:
            raise CheckpointError(f"no published checkpoint named {name!r}; known: {', '.join(sorted(checkpoints))}")
        model = load_published(checkpoints[name])
        model.card = {"name": name, "provenance": {"source": "published", "package": "gixi 0.0.1 (GPL-3.0)"}}
        return model
    if text in builtin():
        return load_model(WEIGHTS / text)
    path = Path(text)
    if not path.exists():
        names = ", ".join(["published", "default", *(n for n in builtin() if n != "default")])
        raise CheckpointError(f"no such model file or directory (expected one of {names}, or a path)", path=path)
    if path.is_dir() or path.suffix.lower() in (".json", ".safetensors"):
        return load_model(path)
    return load_published(path)
