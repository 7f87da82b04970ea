"""Training loop of the detector on on-the-fly simulated images (the paper's recipe, reference §7).

>>> from gixdrt.train import TrainConfig, train, main_train
>>> result = train(TrainConfig.from_yaml("configs/train-paper.yaml"), "runs/paper")
>>> result = train(None, "runs/paper", resume=True)      # continue from the last checkpoint (config from the run)
>>> result = main_train("configs/train-tiny.yaml", "runs/tiny", overrides={"steps": 5})

Data: step s (0-based) trains on simulator images s·B … s·B + B − 1 of ``seed`` (or, with ``pool_size`` > 0,
those indices modulo ``pool_size``: a fixed set, for overfitting tests), made in DataLoader worker processes;
with ``mixture`` (e.g. ``{"ours": 0.5, "paper": 0.3, "shifted": 0.2}``) each image's simulator mode is drawn
from its own stream keyed by (seed, index) (:func:`gixdrt.sim.mixture_mode`);
the images depend only on (seed, index), never on the number of workers. The random target sampling of step s
uses a ``torch.Generator`` seeded from (seed, s), so a resumed run repeats an uninterrupted one exactly.

Run directory: ``config.yaml``; ``losses.csv`` (step, the four terms, total, lr, seconds of the step);
``checkpoints/step_XXXXXX.pt`` (model, optimizer, scheduler, scaler, step, RNG states, wall time);
``model/`` (``model.safetensors`` + ``model.json`` card, via :func:`gixdrt.model.save_model`) at the end.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import platform
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..model.network import DetectorConfig, GixdDetector
from .losses import LOSS_TERMS, LossWeights, detector_losses
from .targets import TargetConfig

__all__ = ["TrainConfig", "TrainResult", "export_checkpoint", "main_train", "train"]

CSV_COLUMNS = ("step", *LOSS_TERMS, "total", "lr", "seconds")
#: fields that may differ between the run's saved config and the one given on resume
_RESUME_FREE = {"num_workers", "worker_start", "threads", "checkpoint_every", "keep_checkpoints", "name", "save_fp16"}


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: the paper's recipe (3000 steps × 16 images)."""

    name: str | None = None
    seed: int = 0
    steps: int = 3000
    batch_size: int = 16
    image_size: tuple[int, int] = (512, 512)  # (H, W): H a multiple of 32, W of 4
    lr: float = 2e-3
    weight_decay: float = 0.01
    lr_step: int = 500  # lr × lr_gamma every lr_step steps
    lr_gamma: float = 0.5
    grad_clip: float | None = None  # max gradient norm (None: no clipping, as the paper)
    pool_size: int = 0  # 0: fresh images every step; N > 0: cycle over the first N images of the stream
    init_weights: str | None = None  # start from these weights (a training checkpoint .pt or a model directory)
    num_workers: int = 2  # DataLoader worker processes simulating images (0: in the main process)
    worker_start: str = "spawn"  # how workers start: "spawn" / "forkserver" are safe after Numba's OpenMP ran; "fork"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    amp: str = "none"  # "none", "bf16" (CPU or CUDA autocast), "fp16" (CUDA autocast + GradScaler)
    threads: int | None = None  # torch CPU threads of the main process (None: leave as is)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # the newest N checkpoints are kept (≤ 0: all)
    save_fp16: bool = False  # final model weights stored as float16
    rpn_pre_nms_top_n: int | None = None  # proposals while training (None: the detector's own setting)
    rpn_post_nms_top_n: int | None = None
    detector: dict[str, Any] = field(default_factory=dict)  # DetectorConfig overrides (architecture)
    sim: dict[str, Any] = field(default_factory=dict)  # SimConfig overrides (of the "ours" simulator)
    mixture: dict[str, float] = field(default_factory=dict)  # {} (ours only) or simulator mode → weight, e.g.
    # {"ours": 0.5, "paper": 0.3, "shifted": 0.2}: each image's mode is drawn per (seed, index) (gixdrt.sim.modes)
    targets: dict[str, Any] = field(default_factory=dict)  # TargetConfig overrides
    loss_weights: dict[str, Any] = field(default_factory=dict)  # LossWeights overrides

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {self.image_size}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("steps must be ≥ 0 and batch_size ≥ 1")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        for name in ("detector", "sim", "targets", "loss_weights", "mixture"):
            if getattr(self, name) is None:
                setattr(self, name, {})
        if self.mixture:
            from ..sim import check_mixture

            weights = check_mixture(self.mixture, "mixture")
            if weights.get("paper", 0) > 0 and tuple(self.image_size) != (512, 512):
                raise ValueError(f"mixture: the paper simulator makes 512x512 images only, image_size is "
                                 f"{self.image_size[0]}x{self.image_size[1]}")
        # fail early on unknown keys
        self.detector_config()
        self.target_config()
        self.weights()
        h, w = self.image_size
        cfg = self.detector_config()
        if h % cfg.height_multiple or w % cfg.width_multiple:
            raise ValueError(f"image_size {h}×{w}: H must be a multiple of {cfg.height_multiple}, W of {cfg.width_multiple}")

    # --- derived configs ---------------------------------------------------------------------
    def detector_config(self) -> DetectorConfig:
        return DetectorConfig.from_dict(dict(self.detector))

    def target_config(self) -> TargetConfig:
        return _from_dict(TargetConfig, self.targets, "targets")

    def weights(self) -> LossWeights:
        return _from_dict(LossWeights, self.loss_weights, "loss_weights")

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        if not d["mixture"]:  # absent = ours only: configs and checkpoints from before the field stay identical
            del d["mixture"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training parameter(s): {', '.join(unknown)}")
        return cls(**dict(d))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise TypeError(f"{path}: a training config must be a YAML mapping")
        return cls.from_dict(data)

    def to_yaml(self, path: str | os.PathLike) -> Path:
        import yaml

        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _from_dict(cls, d: Mapping[str, Any], what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} parameter(s): {', '.join(unknown)}")
    return cls(**dict(d))


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # steps completed
    model_path: Path | None  # the final model's card (None when stopped before the last step)
    wall_s: float  # training wall time over all sessions of the run
    last_losses: dict[str, float]  # mean of the last (up to) 50 logged steps


# -------------------------------------------------------------------------------------------------
# data
# -------------------------------------------------------------------------------------------------
class _SimImages(Dataset):
    """Simulator image ``index`` → (float32[1, H, W], float32[K, 4]). Picklable for worker processes.

    mixture: {} (the "ours" simulator with ``sim`` overrides) or {mode: weight}: image ``index`` comes from the
    mode drawn for (seed, index) by :func:`gixdrt.sim.mixture_mode`, and is that mode's image ``index`` of
    ``seed`` (``sim`` overrides apply to "ours" only)."""

    def __init__(self, seed: int, size: tuple[int, int], sim: Mapping[str, Any],
                 mixture: Mapping[str, float] | None = None):
        self.seed, self.size, self.sim_cfg = int(seed), tuple(size), dict(sim)
        self.mixture = dict(mixture or {})
        if self.mixture:
            from ..sim import check_mixture

            self._weights = check_mixture(self.mixture)
        self._sims: dict[str, Any] = {}

    def __len__(self) -> int:  # not used by the batch sampler; large
        return 2**62

    def mode(self, index: int) -> str:
        """The simulator mode of image ``index``."""
        if not self.mixture:
            return "ours"
        from ..sim import mixture_mode

        return mixture_mode(self._weights, self.seed, int(index))

    def _simulator(self, mode: str):
        if mode not in self._sims:
            from ..sim import Simulator, mode_config

            cfg = (self.sim_cfg or None) if mode == "ours" and not self.mixture else mode_config(
                mode, self.sim_cfg if mode == "ours" else None)
            self._sims[mode] = Simulator(cfg, self.seed, size=self.size)
        return self._sims[mode]

    def __getitem__(self, index: int):
        s = self._simulator(self.mode(int(index))).sample(int(index))
        return torch.from_numpy(s.image)[None], torch.from_numpy(np.ascontiguousarray(s.boxes, np.float32)).reshape(-1, 4)


class _StepBatches(Sampler):
    """Batches of image indices for steps start … stop − 1."""

    def __init__(self, start: int, stop: int, batch: int, pool: int):
        self.start, self.stop, self.batch, self.pool = start, stop, batch, pool

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.stop):
            idx = range(s * self.batch, (s + 1) * self.batch)
            yield [i % self.pool for i in idx] if self.pool > 0 else list(idx)


def _collate(items):
    return torch.stack([i for i, _ in items]), [b for _, b in items]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _step_generator(seed: int, step: int) -> torch.Generator:
    value = np.random.SeedSequence(int(seed), spawn_key=(0x7124, int(step))).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(value[0] >> np.uint64(1)))


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    if device.type == "cpu" and amp == "fp16":
        raise ValueError("amp 'fp16' needs a CUDA device (use 'bf16' on the CPU)")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def _training_proposals(model: GixdDetector, pre: int | None, post: int | None):
    """Temporarily use other proposal counts in ``model.proposals`` (the saved config is untouched)."""
    changes = {k: v for k, v in (("rpn_pre_nms_top_n", pre), ("rpn_post_nms_top_n", post)) if v is not None}
    if not changes:
        yield
        return
    old = model.config
    model.config = dataclasses.replace(old, **changes)
    try:
        yield
    finally:
        model.config = old


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _initial_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a training checkpoint (``.pt``) or of a model directory in gixdrt's format."""
    from ..errors import CheckpointError
    from ..model.checkpoint import load_model

    p = Path(path)
    if p.suffix == ".pt":
        try:
            return torch.load(p, map_location="cpu", weights_only=False)["model"]
        except FileNotFoundError:
            raise CheckpointError("no such training checkpoint (init_weights)", path=p) from None
        except (KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"not a gixdrt training checkpoint (init_weights): {exc}", path=p) from None
    return load_model(p).state_dict()


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.pt"))


def _save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.pt"
    tmp = path.with_name(f".{path.name}.part")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    if keep > 0:
        for old in _checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def _hardware(device: torch.device) -> dict[str, Any]:
    hw: dict[str, Any] = {
        "device": str(device),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def _read_csv(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


# -------------------------------------------------------------------------------------------------
# the loop
# -------------------------------------------------------------------------------------------------
def train(
    config: TrainConfig | Mapping[str, Any] | None,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    *,
    stop_at: int | None = None,
) -> TrainResult:
    """Train a :class:`GixdDetector` from scratch (or resume) → :class:`TrainResult`.

    config: TrainConfig or a dict of its fields; None with ``resume`` reads ``run_dir/config.yaml``.
    resume: continue from the newest checkpoint in ``run_dir`` (a run without one starts afresh); the
    config must match the run's, except for num_workers, threads, checkpoint cadence, name, save_fp16.
    Without resume, an existing run directory with checkpoints is an error (no silent overwrite).
    stop_at: stop (with a checkpoint) once this many steps are done, as if interrupted; no final model.
    """
    run_dir = Path(run_dir)
    saved_cfg_path = run_dir / "config.yaml"
    if config is None:
        if not (resume and saved_cfg_path.is_file()):
            raise ValueError("config is required (or resume=True with a run directory holding config.yaml)")
        config = TrainConfig.from_yaml(saved_cfg_path)
    elif not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    cfg: TrainConfig = config

    ckpts = _checkpoints(run_dir)
    if ckpts and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass resume=True or use another run directory")
    checkpoint = torch.load(ckpts[-1], map_location="cpu", weights_only=False) if (resume and ckpts) else None
    if checkpoint is not None:
        old = checkpoint["config"]
        new = cfg.to_dict()
        differ = sorted(k for k in set(old) | set(new) if k not in _RESUME_FREE and old.get(k) != new.get(k))
        if differ:
            raise ValueError(f"resume: the config differs from the run's in {', '.join(differ)}")

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = _device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(saved_cfg_path)

    torch.manual_seed(cfg.seed)
    model = GixdDetector(cfg.detector_config()).to(device)
    if cfg.init_weights and checkpoint is None:
        model.load_state_dict(_initial_weights(cfg.init_weights))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(cfg.lr_step, 1), gamma=cfg.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=(cfg.amp == "fp16" and device.type == "cuda"))
    start, wall_before = 0, 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        start, wall_before = int(checkpoint["step"]), float(checkpoint["wall_s"])

    end = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    csv_path = run_dir / "losses.csv"
    rows = _read_csv(csv_path, start)
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)

    targets, weights = cfg.target_config(), cfg.weights()
    loader = DataLoader(
        _SimImages(cfg.seed, cfg.image_size, cfg.sim, cfg.mixture),
        batch_sampler=_StepBatches(start, end, cfg.batch_size, cfg.pool_size),
        num_workers=cfg.num_workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.num_workers > 0 else None,
        multiprocessing_context=cfg.worker_start if cfg.num_workers > 0 else None,
        persistent_workers=False,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.name or "train", unit="step", dynamic_ncols=True)

    def payload(step: int, wall: float) -> dict[str, Any]:
        return {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "config": cfg.to_dict(),
            "wall_s": wall,
        }

    t_session = time.perf_counter()
    step = start
    last_ckpt = start
    try:
        with csv_path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            t_prev = time.perf_counter()
            for images, boxes in loader:
                images = images.to(device, non_blocking=True)
                boxes = [b.to(device) for b in boxes]
                gen = _step_generator(cfg.seed, step)
                with _autocast(device, cfg.amp), _training_proposals(model, cfg.rpn_pre_nms_top_n, cfg.rpn_post_nms_top_n):
                    terms = detector_losses(model, images, boxes, targets, weights, gen)
                total = terms["total"]
                if not torch.isfinite(total) and not scaler.is_enabled():
                    raise FloatingPointError(f"step {step + 1}: non-finite loss {({k: float(v) for k, v in terms.items()})}")
                lr = optimizer.param_groups[0]["lr"]
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1

                now = time.perf_counter()
                dt, t_prev = now - t_prev, now
                values = {k: float(v.detach()) for k, v in terms.items()}
                writer.writerow([step, *(f"{values[k]:.6g}" for k in (*LOSS_TERMS, "total")), f"{lr:.6g}", f"{dt:.4f}"])
                f.flush()
                if bar is not None:
                    bar.set_postfix(
                        {**{k: f"{values[k]:.3f}" for k in LOSS_TERMS}, "lr": f"{lr:.2e}", "img/s": f"{cfg.batch_size / dt:.1f}"},
                        refresh=False,
                    )
                    bar.update(1)
                if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                    _save_checkpoint(run_dir, step, payload(step, wall_before + time.perf_counter() - t_session), cfg.keep_checkpoints)
                    last_ckpt = step
    finally:
        if bar is not None:
            bar.close()
    wall = wall_before + time.perf_counter() - t_session
    if step != last_ckpt:
        _save_checkpoint(run_dir, step, payload(step, wall), cfg.keep_checkpoints)

    recent = _read_csv(csv_path, step)[-50:]
    last = {k: float(np.mean([float(r[k]) for r in recent])) for k in (*LOSS_TERMS, "total")} if recent else {}
    model_path = None
    if step >= cfg.steps:
        model_path = _save_final(model, run_dir, cfg, step, wall, device, last)
    return TrainResult(run_dir, step, model_path, wall, last)


def _save_final(model: GixdDetector, run_dir: Path, cfg: TrainConfig, step: int, wall: float, device: torch.device, last: dict[str, float]) -> Path:
    from ..model.checkpoint import save_model

    model.eval()
    card = _card(cfg, cfg.name or run_dir.name, step, wall, _hardware(device), last)
    return save_model(model, run_dir / "model", card, fp16=cfg.save_fp16)


def _card(cfg: TrainConfig, name: str, step: int, wall: float, hardware: dict[str, Any], last: dict[str, float]) -> dict[str, Any]:
    from .. import __version__

    return {
        "name": name,
        "provenance": {
            "source": "trained",
            "trainer": "gixdrt.train.loop",
            "gixdrt_version": __version__,
            "torch_version": torch.__version__,
            "seed": cfg.seed,
            "steps": step,
            "batch_size": cfg.batch_size,
            "images_seen": step * cfg.batch_size,
            "image_size": list(cfg.image_size),
            "wall_time_s": round(wall, 3),
            "hardware": hardware,
            "amp": cfg.amp,
            "final_losses": {k: round(v, 6) for k, v in last.items()},
            "config": cfg.to_dict(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }


def export_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, fp16: bool = True, name: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A training checkpoint (``run/checkpoints/step_XXXXXXX.pt``) → a model directory in gixdrt's format
    (safetensors + model card), loadable as ``--model out_dir``. The card records the checkpoint's step, the
    run's config and its mean losses over the 50 steps before the checkpoint; ``extra`` is merged into the
    card's provenance (e.g. evaluation results). Only read gixdrt's own checkpoints: they are unpickled.
    """
    from ..errors import CheckpointError
    from ..model.checkpoint import save_model

    path = Path(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        cfg = TrainConfig.from_dict(state["config"])
        step, wall = int(state["step"]), float(state["wall_s"])
    except FileNotFoundError:
        raise CheckpointError("no such training checkpoint", path=path) from None
    except Exception as exc:  # noqa: BLE001 - a foreign or damaged file: say so, whatever the unpickler raised
        raise CheckpointError(f"not a gixdrt training checkpoint ({type(exc).__name__}: {exc})", path=path) from None
    model = GixdDetector(cfg.detector_config())
    model.load_state_dict(state["model"])
    model.eval()
    run_dir = path.parent.parent
    recent = _read_csv(run_dir / "losses.csv", step)[-50:]
    last = {k: float(np.mean([float(r[k]) for r in recent])) for k in (*LOSS_TERMS, "total")} if recent else {}
    hardware = {"device": cfg.device, "note": "the run's training hardware is in its checkpoints' run directory"}
    card = _card(cfg, name or f"{cfg.name or run_dir.name}-step{step}", step, wall, hardware, last)
    card["provenance"]["checkpoint"] = path.name
    card["provenance"].update(dict(extra or {}))
    return save_model(model, out_dir, card, fp16=fp16)


def main_train(
    config_path: str | os.PathLike | None,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """CLI entry: YAML config (+ top-level field overrides, e.g. {"steps": 10, "device": "cpu"}) → train.

    run_dir defaults to ``runs/<config file stem>``. config_path None with resume: the run's own config.
    """
    if config_path is None:
        if run_dir is None:
            raise ValueError("give a config file or the run directory to resume")
        cfg = TrainConfig.from_yaml(Path(run_dir) / "config.yaml")
    else:
        cfg = TrainConfig.from_yaml(config_path)
    if overrides:
        cfg = cfg.replace(**dict(overrides))
    if run_dir is None:
        run_dir = Path("runs") / Path(config_path).stem  # type: ignore[arg-type]
    return train(cfg, run_dir, resume=resume, progress=progress, stop_at=stop_at)
