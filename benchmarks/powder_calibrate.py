"""Choose a trained powder model's mask setting on a validation seed and write it into the model's card.

    python benchmarks/powder_calibrate.py MODEL_DIR [--n 12] [--seed 4242] [--size 1024] [--fp-fraction 0.5]

Sweeps P(spot) thresholds and minimum component sizes (:func:`gixdrt.powder.evaluate.threshold_sweep`) on frames of
a validation seed that neither training (seed 0) nor the evaluation sets (777, 778) use, keeps the setting of highest
pixel recall whose false positives per frame stay ≤ fp-fraction × the classical mask's on the same frames, and writes
it to the card's ``mask`` section with the sweep under ``calibration`` (the weights and their sha256 are unchanged).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--fp-fraction", type=float, default=0.5)
    args = ap.parse_args(argv)

    from gixdrt.powder.evaluate import choose_setting, threshold_sweep

    sweep = threshold_sweep(args.model, n=args.n, seed=args.seed, size=args.size,
                            thresholds=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98),
                            min_sizes=(0, 2, 3, 5, 8))
    best = choose_setting(sweep, args.fp_fraction)
    print(f"classical: recall {sweep['classical']['recall']:.4f}, FP/frame {sweep['classical']['fp_per_frame']:.0f}")
    for r in sweep["unet"]:
        print(f"t {r['threshold']:.2f} k {r['min_size']}: recall {r['recall']:.4f} FP/frame {r['fp_per_frame']:.0f}")
    print(f"chosen: {best}")
    card_path = args.model / "model.json"
    card = json.loads(card_path.read_text())
    card["mask"] = {"threshold": best["threshold"], "min_size": best["min_size"], "connectivity": 8}
    card["calibration"] = {"seed": args.seed, "frames": args.n, "size": args.size, "fp_fraction": args.fp_fraction,
                           "chosen": best, "classical": sweep["classical"], "sweep": sweep["unet"]}
    tmp = card_path.with_name(".model.json.part")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
