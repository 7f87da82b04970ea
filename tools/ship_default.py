#!/usr/bin/env python3
"""Ship a trained model in the package (as ``default``, or ``--as NAME``): fp16 weights and a complete card.

    python tools/ship_default.py MODEL_DIR --selection RUN/selection/selection.json \\
        --eval runs/eval-default/comparison.json [--eval-shifted runs/eval-shifted/comparison.json] \\
        [--eval-extra faint_labels=runs/eval-faint/comparison.json]

Reads the model (a directory written by :func:`gixdrt.train.export_checkpoint`), re-saves it as fp16 into
``src/gixdrt/model/weights/default/`` (or ``weights/NAME``; refusing weights of 16 MB or more, and refusing
to make a model that misses any of the 12 real-frame rings the default), and writes the card with: the
training config, seed, steps, time and hardware (from the run), the checkpoint selection on the held-out seed,
the evaluation next to the published checkpoint's on the same simulated set(s), and the 12-ring check on the
published real frame. Prints the card's evaluation section.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "gixdrt" / "model" / "weights"
LIMIT = 16 * 1024 * 1024


def _models(comparison: Path, model_dir: Path, name: str) -> dict:
    """The comparison's numbers, with the evaluated model directory's entry renamed ``name``."""
    doc = json.loads(comparison.read_text())
    ours = {str(model_dir), str(model_dir.resolve()), model_dir.name}

    def renamed(per_model: dict) -> dict:
        return {(name if k in ours or Path(k).resolve() == model_dir.resolve() else k): v for k, v in per_model.items()}

    models = renamed(doc["models"])
    if name not in models:
        raise SystemExit(f"{comparison}: no results for {model_dir} (models: {', '.join(doc['models'])})")
    out = {"n_images": doc["n_images"], "seed": doc["seed"], "size": doc["size"],
           "sim_overrides": doc.get("sim_overrides", {}), "models": models}
    if "common_targets" in doc:  # the paired |ΔQ| over the targets every model matched
        common = doc["common_targets"]
        out["common_targets"] = {"n_targets": common["n_targets"], "models": renamed(common["models"])}
    return out


def _this_cpu() -> str:
    import os

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (shared VM)"


def _in_repo(spec: str) -> Path:
    """A config's path (init_weights): relative paths are relative to the repository root."""
    return Path(spec) if Path(spec).is_absolute() else ROOT / spec


def _pretraining(path: Path, spec: str) -> tuple[dict, int, float]:
    """What a fine-tuning run started from: a training checkpoint (.pt) or a model directory with a card (whose
    own pretraining, if any, is kept) → (record, images seen before, wall time before)."""
    if path.is_dir():
        from gixdrt.model import read_card

        card = read_card(path)
        prov = card.get("provenance", {})
        images = int(prov.get("total_images_seen", prov.get("images_seen", 0)))
        wall = float(prov.get("total_wall_time_s", prov.get("wall_time_s", 0.0)))
        record = {"model": spec, "name": card.get("name"), "steps": prov.get("steps"),
                  "images_seen": images, "wall_time_s": round(wall, 1), "config": prov.get("config"),
                  "pretraining": prov.get("pretraining")}
        return record, images, wall
    import torch

    pre = torch.load(path, map_location="cpu", weights_only=False)
    images = int(pre["step"]) * int(pre["config"]["batch_size"])
    wall = float(pre["wall_s"])
    record = {"checkpoint": spec, "steps": int(pre["step"]), "images_seen": images, "wall_time_s": round(wall, 1),
              "config": pre["config"]}
    earlier = pre["config"].get("init_weights")
    if earlier:  # that run was a fine-tuning too: follow the chain
        record["pretraining"], before_images, before_wall = _pretraining(_in_repo(earlier), earlier)
        images, wall = images + before_images, wall + before_wall
    return record, images, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--selection", type=Path, required=True, help="selection.json of tools/select_checkpoint.py")
    ap.add_argument("--eval", type=Path, required=True, help="comparison.json of gixdrt evaluate (default simulator)")
    ap.add_argument("--eval-shifted", type=Path, help="comparison.json on configs/sim-shifted.yaml")
    ap.add_argument("--eval-extra", action="append", default=[], metavar="KEY=PATH",
                    help="another comparison.json to record under evaluation.KEY (e.g. faint_labels=...); repeatable")
    ap.add_argument("--name", default="gixdrt-default-v1")
    ap.add_argument("--as", dest="install_as", default="default",
                    help="install as this built-in model name (default: default; another name ships it as --model NAME)")
    ap.add_argument("--hardware", default=None,
                    help="where it was trained (default: this machine's CPU, for a run trained on this machine)")
    args = ap.parse_args(argv)

    from gixdrt.model import load_model, read_card, save_model
    from gixdrt.testing import real_frame_rings

    model = load_model(args.model_dir)
    card = read_card(args.model_dir)
    selection = json.loads(args.selection.read_text())
    rings = real_frame_rings(model, backend="onnxruntime")
    if rings["found"] != 12 and args.install_as == "default":
        print(f"refusing to make it the default: it finds {rings['found']} of the 12 real-frame rings (missing "
              f"{rings['missing']}); ship it under another name with --as NAME", file=sys.stderr)
        return 1
    evaluation = {"default_simulator": _models(args.eval, args.model_dir, args.install_as)}
    if args.eval_shifted:
        evaluation["shifted_simulator"] = _models(args.eval_shifted, args.model_dir, args.install_as)
    for item in args.eval_extra:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise SystemExit(f"--eval-extra wants KEY=PATH, got {item!r}")
        evaluation[key] = _models(Path(path), args.model_dir, args.install_as)
    prov = dict(card.get("provenance", {}))
    prov["selection"] = {"heldout_seed": selection["heldout_seed"], "heldout_n": selection["heldout_n"],
                         "chosen_step": selection["best"],
                         "candidates": [{"step": r["step"], **r["heldout"], "real_frame_rings": r["real_frame"]["found"]}
                                        for r in selection["rows"]]}
    prov["hardware"] = {"description": args.hardware or _this_cpu(), "device": prov.get("config", {}).get("device"),
                        "amp": prov.get("amp"), "torch_threads": prov.get("config", {}).get("threads")}
    init = prov.get("config", {}).get("init_weights")
    if init:  # a fine-tuning run: record the run its weights came from, and the totals
        prov["pretraining"], pre_images, pre_wall = _pretraining(_in_repo(init), init)
        prov["total_images_seen"] = prov["images_seen"] + pre_images
        prov["total_wall_time_s"] = round(prov["wall_time_s"] + pre_wall, 1)
    new_card = {
        "name": args.name,
        "provenance": prov,
        "evaluation": evaluation,
        "real_frame": {"rings_found": rings["found"], "max_dq_inv_angstrom": rings["max_dq"],
                       "extra_peaks": rings["extra"], "pairs_q": rings["pairs"],
                       "scores": rings["score"], "thresholds": "score 0.6, NMS 0.1 (the published config)"},
        "licence": "BSD-3-Clause (trained by gixdrt on its own simulator; no third-party weights)",
    }
    DEST = WEIGHTS / args.install_as
    DEST.mkdir(parents=True, exist_ok=True)
    card_path = save_model(model, DEST, new_card, fp16=True)
    size = (DEST / "model.safetensors").stat().st_size
    if size >= LIMIT:
        print(f"refusing: {DEST / 'model.safetensors'} is {size / 1e6:.1f} MB (limit 16 MiB)", file=sys.stderr)
        return 1
    from ship_graphs import ship  # the ONNX graphs of the saved (fp16) weights, recorded in the card

    ship(DEST)
    print(json.dumps({"evaluation": evaluation, "real_frame": new_card["real_frame"]}, indent=1))
    print(f"wrote {card_path} and model.safetensors ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
