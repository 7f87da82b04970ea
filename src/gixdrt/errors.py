"""Exceptions and warnings raised by gixdrt. Every message names the file (where there is one) and the problem."""
from __future__ import annotations

import os


class GixdrtError(Exception):
    """Base class of gixdrt's errors."""


class ConfigError(GixdrtError, ValueError):
    """A configuration file or geometry is invalid: names the file, the key and the problem."""

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None, key: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: " if self.path else ""
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{problem}")


class FrameError(GixdrtError, ValueError):
    """A frame file or array cannot be used: names the file and the problem."""

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(GixdrtError, ValueError):
    """A model checkpoint cannot be used (unreadable, corrupt, wrong keys or shapes): names the file and the problem."""

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class BackendUnavailableError(GixdrtError, RuntimeError):
    """A kernel implementation was asked for by name but cannot run here."""


class ExtensionUnavailableError(BackendUnavailableError, ImportError):
    """The compiled extension gixdrt._ext (or the part of it a call needs) is not available in this installation."""


class AssetError(GixdrtError, RuntimeError):
    """A published asset could not be downloaded, extracted or verified."""


class DataWarning(UserWarning):
    """The data is degenerate (constant, all zero, non-finite pixels); a defined result was returned."""


class ConfigWarning(UserWarning):
    """A configuration is valid but will give little or nothing (a polar grid that misses the detector)."""
