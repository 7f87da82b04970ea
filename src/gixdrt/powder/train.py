"""Training of the powder U-Net on generated frames (CPU-trainable: about 30k parameters at depth 3).

>>> from gixdrt.powder.train import PowderTrainConfig, train_powder
>>> result = train_powder(PowderTrainConfig(steps=2000), "runs/powder")
>>> result = train_powder(None, "runs/powder", resume=True)     # continue from the newest checkpoint

Recipe: class-weighted cross-entropy (background 1, spot ``class_weight``), Adam with a short warm-up and a cosine
decay to ``lr_final``, batches of ``batch_size`` random ``crop`` × ``crop`` crops with random 90° rotations and
flips, cut from whole generated frames normalised as at inference (the ``powder_normalize`` kernel over the whole
frame, detector mask included), so training sees exactly what the plan feeds the network. ``amp="bf16"`` runs the
forward pass under CPU autocast in bfloat16 (the weights and the loss stay float32): about 2.4× faster per step on
CPUs with AMX or AVX512-BF16.

Data, deterministic in (seed, step): frame g of the run has a size drawn from ``frame_sizes`` and the default
generator settings or, with probability ``p_varied``, the ``varied`` ones (wider spot, flux, noise and ring-width
ranges; same calibrants: :meth:`PowderSimConfig.shifted` is kept for evaluation). At step s the frames
g ∈ [s // new_frame_every, … + window) are in play, and crop b of step s comes from a generator seeded with
(seed, s, b): which frame, where (with ``p_spot_crop`` centred near a random spot pixel, else anywhere), which
rotation and flip. A resumed run therefore repeats an uninterrupted one exactly.

Run directory: ``config.json``; ``losses.csv`` (step, loss, lr, seconds); ``checkpoints/step_XXXXXXX.pt`` (model,
optimizer, step, wall time); ``model/`` (:func:`gixdrt.powder.model.save_unet`) at the end.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..kernels.reference.powder import BINS_PER_UNIT, MAX_LOG, MIN_MAD

__all__ = ["VARIED", "PowderTrainConfig", "PowderTrainResult", "TrainingFrames", "train_powder"]

#: the generator's "varied" settings for training (wider than the default, narrower than the shifted evaluation set)
VARIED: dict[str, Any] = {
    "spot_size": [1.5, 20.0],
    "spot_aspect": [1.0, 5.0],
    "spot_amp": [1.2, 5000.0],
    "exposure": [3.0, 8000.0],
    "gain": [0.2, 6.0],
    "offset": [0.0, 1000.0],
    "read_noise": [0.3, 25.0],
    "ring_fwhm_px": [0.8, 8.0],
    "tilt_deg": [0.0, 4.0],
    "texture_orders": [1, 4],
    "p_saturate": 0.15,
}


@dataclass
class PowderTrainConfig:
    """Everything that defines a training run."""

    name: str | None = None
    seed: int = 0
    steps: int = 2000
    batch_size: int = 12
    crop: int = 256  # px, a multiple of the network's 2^(depth − 1)
    lr: float = 3e-3
    lr_final: float = 1e-4
    warmup: int = 50
    class_weight: float = 10.0  # weight of the spot class in the cross-entropy (background: 1)
    depth: int = 3
    base_channels: int = 8
    in_channels: int = 1  # 2: the ring channel (each pixel against its powder ring) beside the frame's scaling
    frame_sizes: tuple[int, ...] = (512, 768, 1024, 1024, 1536)
    p_varied: float = 0.35
    window: int = 16  # frames in play at once
    new_frame_every: int = 2  # steps between two new frames
    p_spot_crop: float = 0.6
    threads: int | None = None  # torch CPU threads (None: leave as is)
    amp: str = "none"  # "bf16": forward pass under CPU autocast in bfloat16
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    sim: dict[str, Any] = field(default_factory=dict)  # overrides of the default generator settings
    varied: dict[str, Any] = field(default_factory=lambda: dict(VARIED))
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"bins_per_unit": BINS_PER_UNIT, "max_log": MAX_LOG, "min_mad": MIN_MAD})
    ring: dict[str, Any] = field(default_factory=lambda: {"width_px": 2.0, "min_pixels": 10, "min_scale": 1.0})

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 2):
            raise ValueError(f"in_channels must be 1 or 2, got {self.in_channels}")
        self.frame_sizes = tuple(int(s) for s in self.frame_sizes)  # type: ignore[assignment]
        if self.steps < 0 or self.batch_size < 1 or self.window < 1 or self.new_frame_every < 1:
            raise ValueError("steps ≥ 0, batch_size, window and new_frame_every ≥ 1")
        m = 2 ** (int(self.depth) - 1)
        if self.crop < m or self.crop % m:
            raise ValueError(f"crop must be a positive multiple of {m} for depth {self.depth}, got {self.crop}")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        if min(self.frame_sizes, default=0) < self.crop:
            raise ValueError(f"frame_sizes must all be ≥ crop ({self.crop})")
        self.sim_configs()  # unknown generator keys fail here

    def sim_configs(self):
        from ..sim.powder import PowderSimConfig

        base = PowderSimConfig.from_dict(self.sim)
        return base, base.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.varied.items()})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frame_sizes"] = list(self.frame_sizes)
        if self.in_channels == 1:  # one-channel runs read and resume as before the ring channel existed
            del d["in_channels"], d["ring"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PowderTrainConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown powder training parameter(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass
class PowderTrainResult:
    run_dir: Path
    steps: int
    model_dir: Path | None
    wall_s: float
    last_loss: float


class TrainingFrames:
    """The run's frames, normalised, with their spot masks: frame g (cached, a few at a time) and the crops of a
    step."""

    def __init__(self, cfg: PowderTrainConfig, cache: int | None = None):
        self.cfg = cfg
        self.configs = cfg.sim_configs()
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_size = cache or cfg.window + 2

    def frame(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(network input float32[C, H, W], spots uint8[H, W], flat indices of the spot pixels) of frame g."""
        hit = self.cache.get(g)
        if hit is not None:
            self.cache.move_to_end(g)
            return hit
        from ..kernels.cpu.powder import powder_normalize
        from ..sim.powder import PowderSimulator

        rng = np.random.default_rng([self.cfg.seed, 7, g])
        size = int(self.cfg.frame_sizes[int(rng.integers(len(self.cfg.frame_sizes)))])
        config = self.configs[1] if rng.random() < self.cfg.p_varied else self.configs[0]
        f = PowderSimulator(config, seed=self.cfg.seed, size=(size, size)).frame(g)
        c = self.cfg.in_channels
        norm = np.zeros((1, c, size, size), np.float32)
        powder_normalize(f.image[None], f.detector_mask, out=norm, **self.cfg.normalization)
        if c == 2:
            from ..kernels.cpu.powder import ring_normalize
            from .plan import ring_index

            ring = dict(self.cfg.ring)
            idx = ring_index(f.geometry, (size, size), f.detector_mask, width_px=float(ring.pop("width_px", 2.0)))
            ring_normalize(f.image[None], out=norm, pixels=idx.pixels, ptr=idx.ptr, channel=1, **ring)
        item = (norm[0], f.spots.astype(np.uint8), np.flatnonzero(f.spots))
        self.cache[g] = item
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return item

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs float32[B, 1, C, C] and targets int64[B, C, C] of ``step``."""
        cfg = self.cfg
        c = cfg.crop
        w0 = step // cfg.new_frame_every
        xs = np.empty((cfg.batch_size, cfg.in_channels, c, c), np.float32)
        ys = np.empty((cfg.batch_size, c, c), np.int64)
        for b in range(cfg.batch_size):
            rng = np.random.default_rng([cfg.seed, 11, step, b])
            norm, spots, where = self.frame(w0 + int(rng.integers(cfg.window)))
            h, w = norm.shape[1:]
            if where.size and rng.random() < cfg.p_spot_crop:
                p = int(where[rng.integers(where.size)])
                py, px = divmod(p, w)
                y0 = int(np.clip(py - rng.integers(c // 8, c - c // 8), 0, h - c))
                x0 = int(np.clip(px - rng.integers(c // 8, c - c // 8), 0, w - c))
            else:
                y0, x0 = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            x = np.rot90(norm[:, y0:y0 + c, x0:x0 + c], k, axes=(1, 2))
            y = np.rot90(spots[y0:y0 + c, x0:x0 + c], k)
            if flip:
                x, y = x[:, :, ::-1], y[:, ::-1]
            xs[b] = x
            ys[b] = y
        return xs, ys


def _lr(cfg: PowderTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * min(t, 1.0)))


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.pt"))


def train_powder(cfg: PowderTrainConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
                 progress: bool = False, stop_after: int | None = None) -> PowderTrainResult:
    """Train (or with ``resume`` continue) the run in ``run_dir``. ``stop_after``: stop after that many steps of
    this call (a checkpoint is written), as an interrupted run would; the model is saved only at the last step."""
    import torch
    import torch.nn.functional as F

    from ..model.unet import UNet, UNetConfig
    from .model import save_unet

    run = Path(run_dir)
    start, wall, state = 0, 0.0, None
    if resume:
        saved = run / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"{run}: no config.json to resume from")
        saved_cfg = PowderTrainConfig.from_dict(json.loads(saved.read_text(encoding="utf-8")))
        if cfg is not None:
            free = {"threads", "checkpoint_every", "keep_checkpoints", "name"}
            diff = {k for k, v in cfg.to_dict().items() if saved_cfg.to_dict()[k] != v} - free - {"steps"}
            if diff:
                raise ValueError(f"{run}: resuming with a different config ({', '.join(sorted(diff))})")
            saved_cfg = cfg
        cfg = saved_cfg
        ckpts = _checkpoints(run)
        if ckpts:
            state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
            start, wall = int(state["step"]), float(state["wall_s"])
    else:
        cfg = cfg or PowderTrainConfig()
        if (run / "config.json").exists():
            raise FileExistsError(f"{run}: a run exists here (use resume=True / --resume, or another directory)")
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    model = UNet(UNetConfig(depth=cfg.depth, base_channels=cfg.base_channels, in_channels=cfg.in_channels))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    weight = torch.tensor([1.0, float(cfg.class_weight)])
    data = TrainingFrames(cfg)
    log_path = run / "losses.csv"
    rows = []
    if log_path.is_file():
        with log_path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) < start]
    with log_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "lr", "seconds"])
        for r in rows:
            writer.writerow([r["step"], r["loss"], r["lr"], r["seconds"]])

    def save(step: int) -> None:
        folder = run / "checkpoints"
        folder.mkdir(exist_ok=True)
        path = folder / f"step_{step:07d}.pt"
        tmp = path.with_name(f".{path.name}.part")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "wall_s": wall,
                    "config": cfg.to_dict()}, tmp)
        os.replace(tmp, path)
        if cfg.keep_checkpoints > 0:
            for old in _checkpoints(run)[:-cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)

    model.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + int(stop_after))
    losses: list[float] = [float(r["loss"]) for r in rows[-50:]]
    step = start
    with log_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        for step in range(start, end):
            t0 = time.perf_counter()
            xs, ys = data.batch(step)
            lr = _lr(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                logits = model(torch.from_numpy(xs))
            loss = F.cross_entropy(logits.float(), torch.from_numpy(ys), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            wall += dt
            value = float(loss.detach())
            losses = (losses + [value])[-50:]
            writer.writerow([step, f"{value:.6g}", f"{lr:.6g}", f"{dt:.4f}"])
            fh.flush()
            if progress and (step % 10 == 0 or step == end - 1):
                print(f"step {step + 1}/{cfg.steps} loss {np.mean(losses):.4f} lr {lr:.2e} {dt:.2f} s/step",
                      flush=True)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
                save(step + 1)
        else:
            step = end - 1
    done = end if end > start else start
    model_dir = None
    if done >= cfg.steps:
        model.eval()
        model_dir = save_unet(model, run / "model", normalization=cfg.normalization,
                              mask={"threshold": 0.5, "min_size": 0, "connectivity": 8},
                              extra={"name": cfg.name or run.name,
                                     **({"ring": dict(cfg.ring)} if cfg.in_channels == 2 else {}),
                                     "training": {"config": cfg.to_dict(), "steps": done, "wall_s": round(wall, 1)}})
    return PowderTrainResult(run, done, model_dir, wall, float(np.mean(losses)) if losses else float("nan"))
