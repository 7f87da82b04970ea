"""The settings of a live run: one versioned dataclass, saved as YAML or JSON.

>>> cfg = LiveConfig(geometry="beamline.yaml", mode="monitor", max_batch=8, latency_budget=0.05)
>>> cfg.to_yaml("live.yaml")                      # written atomically
>>> cfg = LiveConfig.from_yaml("live.yaml")       # validated; unknown keys and bad values: one-line ConfigError
>>> engine = LiveEngine.from_config(cfg)          # gixdrt.live.engine

Every file carries ``version``; :func:`migrate` brings an older layout to :data:`CURRENT_VERSION` before it is
validated (one step per version, like the azimuthal-integration configs of pyFAI). A mapping without
``version`` is read as the current version.

Versions:
- 0: the draft layout: ``delivery`` (now ``mode``), ``queue_size`` (now ``queue_frames``), ``batch`` (now
  ``max_batch``), ``config`` (now ``geometry``).
- 1: the current layout (the fields of :class:`LiveConfig`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["CURRENT_VERSION", "MODES", "LiveConfig", "migrate"]

CURRENT_VERSION = 1

#: delivery modes: ``lossless`` blocks the producer when the queue is full (nothing dropped); ``monitor`` drops
#: the oldest queued frame (newest wins), each drop counted
MODES = ("lossless", "monitor")

_INPUTS = ("raw", "polar", "processed")
_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _v0_to_v1(d: dict[str, Any]) -> dict[str, Any]:
    renames = {"delivery": "mode", "queue_size": "queue_frames", "batch": "max_batch", "config": "geometry"}
    out = {renames.get(k, k): v for k, v in d.items()}
    out["version"] = 1
    return out


#: version → the function taking a mapping of that version to the next
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


def migrate(data: Mapping[str, Any], path: str | None = None) -> dict[str, Any]:
    """A settings mapping of any known version → the same settings in the current layout (a new dict).

    Raises :class:`ConfigError` for a version that is not an integer, is negative, or is newer than this gixdrt.
    """
    d = dict(data)
    version = d.get("version", CURRENT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"must be an integer, got {version!r}", path=path, key="version")
    if version > CURRENT_VERSION:
        raise ConfigError(f"{version} is newer than this gixdrt reads (≤ {CURRENT_VERSION}); upgrade gixdrt",
                          path=path, key="version")
    if version < 0:
        raise ConfigError(f"must be ≥ 0, got {version}", path=path, key="version")
    while version < CURRENT_VERSION:
        d = _MIGRATIONS[version](d)
        version = d["version"]
    d["version"] = CURRENT_VERSION
    return d


def _int(name: str, value: Any, lo: int, hi: int | None, path: str | None, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer{' or null' if none else ''}, got {value!r}", path=path, key=name)
    if value < lo or (hi is not None and value > hi):
        bound = f"≥ {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"must be {bound}, got {value}", path=path, key=name)


def _seconds(name: str, value: Any, path: str | None, *, none: bool = True, hi: float = 86_400.0) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be a number of seconds{' or null' if none else ''}, got {value!r}", path=path,
                          key=name)
    if not (0 < value <= hi):  # False for NaN too
        raise ConfigError(f"must be in (0, {hi:g}] seconds, got {value}", path=path, key=name)


def _choice(name: str, value: Any, choices: tuple[str, ...], path: str | None) -> None:
    if value not in choices:
        raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}", path=path, key=name)


def _text(name: str, value: Any, path: str | None, *, none: bool = True) -> None:
    if value is None and none:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a non-empty string{' or null' if none else ''}, got {value!r}", path=path, key=name)


def _number(name: str, value: Any, lo: float, hi: float, path: str | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
        raise ConfigError(f"must be a number in [{lo:g}, {hi:g}] or null, got {value!r}", path=path, key=name)


@dataclass
class LiveConfig:
    """What a live run needs (units: seconds, frames, bytes).

    geometry: the geometry/contrast config: a path to its YAML (:func:`gixdrt.geometry.load_config`) or the same
        content inline as a mapping; required for ``input="raw"``. input: ``raw``, ``polar`` or ``processed``.
    model: ``default``, ``published[:NAME]`` or a path. backend: ``auto`` or a backend name
        (:data:`gixdrt.engine.PREFERENCE`). device: ``cpu``, ``cuda``, ``cuda:N`` or None (chosen with the
        backend). precision: ``fp32`` / ``fp16`` / ``int8`` (onnxruntime). threads: ONNX Runtime CPU threads (None: one per core).
    score_threshold [-1, 1], nms_iou [0, 1], max_detections [1, 100000]: the detector's overrides (None: the
        model's). channel: which image channel of a frame to process (None: the first).
    mode: ``lossless`` or ``monitor`` (see :data:`MODES`). queue_frames [1, 1 000 000]: queued frames at most.
        queue_bytes (≥ 1, None: no limit): queued bytes at most (a frame larger than the limit is still admitted
        into an empty queue). max_batch [1, 4096]: frames per detector call at most (batch 1 when idle).
    latency_budget (seconds, None: none): frames whose latency exceeds it are counted ``late``.
    idle_timeout (seconds, None: never): a series with nothing for this long is closed as ``incomplete``.
    metrics_interval (seconds): how often the metrics callback runs. warmup: run a dummy frame before the first.
    screening: settings of the screening stage (a placeholder mapping kept as is).
    """

    version: int = CURRENT_VERSION
    geometry: str | dict[str, Any] | None = None
    input: str = "raw"
    model: str = "default"
    backend: str = "auto"
    device: str | None = None
    precision: str = "fp32"
    threads: int | None = None
    score_threshold: float | None = None
    nms_iou: float | None = None
    max_detections: int | None = None
    channel: str | None = None
    mode: str = "lossless"
    queue_frames: int = 64
    queue_bytes: int | None = 1 << 30
    max_batch: int = 8
    latency_budget: float | None = None
    idle_timeout: float | None = 10.0
    metrics_interval: float = 1.0
    warmup: bool = True
    screening: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # --- validation ---------------------------------------------------------------------------------------
    def validate(self, path: str | None = None) -> LiveConfig:
        """Check every field (ConfigError naming the key, its valid range and the value) → self."""
        from ..engine.backends import PREFERENCE

        _int("version", self.version, CURRENT_VERSION, CURRENT_VERSION, path)
        g = self.geometry
        if g is not None and not isinstance(g, (str, os.PathLike, Mapping)):
            raise ConfigError(f"must be a path or a mapping, got {type(g).__name__}", path=path, key="geometry")
        if isinstance(g, str) and not g:
            raise ConfigError("must be a path or a mapping, got an empty string", path=path, key="geometry")
        _choice("input", self.input, _INPUTS, path)
        if self.input == "raw" and g is None:
            raise ConfigError("raw frames need a geometry config (a YAML path or a mapping)", path=path,
                              key="geometry")
        _text("model", self.model, path, none=False)
        _choice("backend", self.backend, ("auto", *PREFERENCE), path)
        _text("device", self.device, path)
        _choice("precision", self.precision, _PRECISIONS, path)
        _int("threads", self.threads, 1, 1024, path, none=True)
        _number("score_threshold", self.score_threshold, -1.0, 1.0, path)
        _number("nms_iou", self.nms_iou, 0.0, 1.0, path)
        _int("max_detections", self.max_detections, 1, 100_000, path, none=True)
        _text("channel", self.channel, path)
        _choice("mode", self.mode, MODES, path)
        _int("queue_frames", self.queue_frames, 1, 1_000_000, path)
        _int("queue_bytes", self.queue_bytes, 1, None, path, none=True)
        _int("max_batch", self.max_batch, 1, 4096, path)
        _seconds("latency_budget", self.latency_budget, path)
        _seconds("idle_timeout", self.idle_timeout, path)
        _seconds("metrics_interval", self.metrics_interval, path, none=False)
        if not isinstance(self.warmup, bool):
            raise ConfigError(f"must be true or false, got {self.warmup!r}", path=path, key="warmup")
        if not isinstance(self.screening, Mapping):
            raise ConfigError(f"must be a mapping, got {type(self.screening).__name__}", path=path, key="screening")
        return self

    # --- mappings -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (YAML/JSON-ready), ``version`` first."""
        d = asdict(self)
        if isinstance(self.geometry, os.PathLike):
            d["geometry"] = os.fspath(self.geometry)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | os.PathLike | None = None) -> LiveConfig:
        """A mapping of any known version → a validated LiveConfig. ConfigError (one line naming ``path`` and
        the key) for an unknown key, a bad value or an unreadable version."""
        p = None if path is None else os.fspath(path)
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", path=p)
        d = migrate(data, p)
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", path=p, key=str(key))
        cfg = cls.__new__(cls)
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            setattr(cfg, f.name, d.get(f.name, default))
        if isinstance(cfg.screening, Mapping):
            cfg.screening = dict(cfg.screening)
        return cfg.validate(p)

    # --- files --------------------------------------------------------------------------------------------
    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The YAML text; also written (atomically) to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            _write(path, text)
        return text

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            _write(path, text)
        return text

    @classmethod
    def from_yaml(cls, source: str | os.PathLike) -> LiveConfig:
        """From a YAML file (a path) or YAML text (a string holding a newline, e.g. what :meth:`to_yaml` returns)."""
        import yaml

        text, p = _read(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML ({' '.join(str(exc).split())})", path=p) from None
        return cls.from_dict({} if data is None else data, p)

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> LiveConfig:
        """From a JSON file (a path) or JSON text (a string holding a newline)."""
        text, p = _read(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON ({exc})", path=p) from None
        return cls.from_dict(data, p)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LiveConfig:
        """From a file: JSON for ``.json``, YAML otherwise."""
        return cls.from_json(path) if os.fspath(path).lower().endswith(".json") else cls.from_yaml(path)

    # --- what it builds -----------------------------------------------------------------------------------
    def load_geometry(self) -> Any:
        """The :class:`gixdrt.geometry.Config` named by ``geometry`` (None when there is none)."""
        from ..geometry import config_from_mapping, load_config

        if self.geometry is None:
            return None
        if isinstance(self.geometry, Mapping):
            return config_from_mapping(self.geometry, "LiveConfig.geometry")
        return load_config(self.geometry)


def _read(source: str | os.PathLike) -> tuple[str, str | None]:
    """(text, path or None) of a file path or inline text."""
    s = os.fspath(source)
    if isinstance(source, str) and "\n" in s:  # text (what to_yaml/to_json return ends with a newline)
        return s, None
    try:
        return Path(s).read_text(encoding="utf-8"), s
    except FileNotFoundError:
        raise ConfigError("file not found", path=s) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a settings file", path=s) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file", path=s) from None


def _write(path: str | os.PathLike, text: str) -> None:
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

