"""Writing files: output paths checked before any work, folders created, every file written
atomically (:func:`atomic_output`), and :func:`write_volume`."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import VolumeError
from ..stages import staged
from .volume import Volume

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in WRITE_SUFFIXES if name.endswith(s)), "")


def check_writable(path: str | Path) -> Path:
    """Fail early, before any work, on an output path that cannot be written."""
    path = Path(path)
    if not suffix(path):
        raise VolumeError(f"cannot write {path}: use one of {', '.join(WRITE_SUFFIXES)}")
    if path.is_dir():
        raise VolumeError(f"cannot write {path}: it is a directory")
    check_folder(path.parent)
    return path


def check_folder(folder: str | Path) -> Path:
    """An output folder that exists or can be created: refuses one under a regular file, in one line."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise VolumeError(f"cannot write into {folder}: {parent} is a file, not a folder; choose another path")
            break
    return folder


def file_mode() -> int:
    """The mode a new file gets from the umask (0o644 under umask 022), read without changing the umask
    (``os.umask`` is process-wide and racy in a threaded server)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def make_folder(folder: str | Path) -> Path:
    """Create an output folder (and its parents); one clear line when that is impossible."""
    folder = check_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VolumeError(f"cannot create the folder {folder}: {error.strerror}") from None
    return folder


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` with the same ending (not created: the writer creates it);
    renamed onto ``path`` on success, with the umask's permissions (0644 under 022) whatever mode the
    writer used; removed on failure, leaving any previous ``path`` as it was."""
    path = Path(path)
    make_folder(path.parent)
    temp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
    try:
        yield temp
        if temp.is_file():
            os.chmod(temp, file_mode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@staged(lambda volume, path, *args, **kwargs: f"writing {Path(path).name}")
def write_volume(volume: Volume, path: str | Path, compress: bool = True) -> Path:
    """Write atomically (:func:`atomic_output`); the ending chooses the format."""
    import SimpleITK as sitk

    path = check_writable(path)
    try:
        with atomic_output(path) as temp:
            sitk.WriteImage(volume.to_sitk(), str(temp), useCompression=compress)
    except (RuntimeError, OSError) as error:
        raise VolumeError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None
    return path
