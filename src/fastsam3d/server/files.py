"""The server's files: the data folder (listing, paths that cannot escape it), uploads checked
against the size limits before they are decoded, zip files unpacked safely, and the temporary
folders of this server and its sessions."""

from __future__ import annotations

import fcntl
import math
import os
import re
import shutil
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path

import SimpleITK as sitk

from ..errors import FastSAM3DError, VolumeError
from ..io import Volume, dicom_series_files, holds_dicom, read_volume

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".zip")
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".zip")
MAX_PATH_CHARS = 1024
MAX_NAME_CHARS = 255
CHUNK = 1 << 20


class DataFolder:
    """The folder ``--data`` names (None: uploads only): the volumes it holds and paths inside it."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def files(self) -> list[str]:
        """Volumes under the data folder (relative paths; DICOM folders end with ``/``): exactly those
        :meth:`resolve` opens, so a symlink is listed only when it resolves inside the folder."""
        root = self.root()
        found = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_symlink() and not resolves_inside(path, root):
                continue
            if path.is_file() and relative.lower().endswith(VOLUME_SUFFIXES):
                found.append(relative)
            elif path.is_dir() and holds_dicom(path):
                found.append(relative + "/")
        return found

    def resolve(self, relative: str) -> Path:
        """A path inside the data folder; anything that escapes it (or is no valid path) is refused."""
        root = self.root()
        missing = VolumeError(f"no volume {display_name(relative, '?')!r} in the data folder")
        if len(relative) > MAX_PATH_CHARS or re.search(r"[\x00-\x1f]", relative):
            raise missing
        if any(len(part.encode()) > MAX_NAME_CHARS for part in relative.split("/")):
            raise missing
        path = resolves_inside(root / relative, root)
        if path is None:
            raise missing
        return path

    def root(self) -> Path:
        if self.folder is None:
            raise FastSAM3DError("the server was started without --data: only uploads are possible")
        return Path(self.folder).resolve()


def read_checked(path: Path, name: str, max_voxels: int, max_mb: float) -> Volume:
    """Read a volume after checking its header against the voxel and byte limits; errors name
    it ``name``, never by its path on the server."""
    try:
        check_size(path, name, max_voxels, max_mb)
        return read_volume(path)
    except VolumeError as error:
        raise VolumeError(str(error).replace(str(path), name)) from None


def check_size(path: Path, name: str, max_voxels: int, max_mb: float) -> None:
    """Refuse an image whose header promises more voxels or bytes than the limits (before decoding)."""
    header = sitk.ImageFileReader()
    try:
        if path.is_dir() or path.suffix.lower() == ".dcm":
            folder = path if path.is_dir() else path.parent
            files = dicom_series_files(folder)
            if not files:
                raise VolumeError(f"no DICOM series found in {name}")
            header.SetFileName(files[0])
            header.ReadImageInformation()
            size = (*header.GetSize()[:2], len(files))
        else:
            header.SetFileName(str(path))
            header.ReadImageInformation()
            size = header.GetSize()
    except RuntimeError:
        raise VolumeError(
            f"cannot read {name}: file is corrupt, truncated or not a supported image (NIfTI, NRRD, MHA, DICOM)"
        ) from None
    voxels = math.prod(size) * header.GetNumberOfComponents()
    bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(header.GetPixelID()))
    megabytes = voxels * (int(bits.group(1)) // 8 if bits else 8) / 2**20
    shape = "x".join(map(str, size))
    if voxels > max_voxels:
        raise VolumeError(f"{name} has {voxels} voxels ({shape}); this server accepts at most {max_voxels}")
    if megabytes > max_mb:
        raise VolumeError(
            f"{name} unpacks to {megabytes:.0f} MB ({shape}); this server accepts at most {max_mb:.0f} MB"
        )


def keep_upload(path: Path, folder: Path, session_id: str) -> str:
    """A copy of an uploaded file in ``folder`` (the state folder; a hard link where possible); its name."""
    kept = folder / f"{session_id}.{path.name}"
    try:
        os.link(path, kept)
    except OSError:
        shutil.copyfile(path, kept)
    return kept.name


def display_name(name: str | None, default: str) -> str:
    """A client-given file name made safe to show: its last part, no control characters, ≤ 100 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", (name or "").replace("\\", "/").rsplit("/", 1)[-1])[:100]
    return name or default


def safe_unzip(archive: Path, target: Path, max_bytes: float, max_entries: int) -> None:
    """Extract a zip, refusing members that escape ``target``, more than ``max_entries`` files, and
    archives that inflate past ``max_bytes``. The declared sizes are enough: ``zipfile`` never
    inflates a member past its declared size (a member that lies fails its CRC check)."""
    try:
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.infolist() if not m.is_dir()]
            if len(members) > max_entries:
                raise VolumeError(f"the zip file holds {len(members)} files; this server accepts at most {max_entries}")
            if sum(m.file_size for m in members) > max_bytes:
                raise VolumeError(f"the zip file unpacks to more than {max_bytes / 2**20:.0f} MB")
            target.mkdir(parents=True, exist_ok=True)
            root = target.resolve()
            for member in members:
                destination = (target / member.filename).resolve()
                if not destination.is_relative_to(root):
                    raise VolumeError(
                        f"the zip file has a member outside its folder: {display_name(member.filename, '?')!r}"
                    )
                destination.parent.mkdir(parents=True, exist_ok=True)
                with handle.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, ValueError, zlib.error):
        raise VolumeError(
            "the zip file cannot be unpacked (corrupt, encrypted, or a member name the system refuses)"
        ) from None


def single_series(folder: Path) -> Path:
    """The folder holding the DICOM files of an unzipped archive (the deepest one with files)."""
    candidates = sorted({p.parent for p in folder.rglob("*") if p.is_file()}, key=lambda p: len(p.parts))
    if not candidates:
        raise VolumeError("the zip file holds no files")
    return max(candidates, key=lambda p: sum(1 for f in p.iterdir() if f.is_file()))


def resolves_inside(path: Path, root: Path) -> Path | None:
    """The existing file or folder ``path`` leads to with every symlink followed, or None when that
    leaves ``root`` (a resolved folder), is missing or cannot be resolved (a loop, a name the OS refuses)."""
    try:
        resolved = path.resolve()
        return resolved if resolved.is_relative_to(root) and resolved.exists() else None
    except (OSError, RuntimeError, ValueError):
        return None


class TempFolder:
    """This server's folder under the temp root, marked live by a lock held while the process runs.

    A folder whose lock file is not locked belongs to a server that died (even by kill -9: the
    kernel drops the lock), so it is removed at start-up.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or Path(tempfile.gettempdir()) / "fastsam3d-server").resolve()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.stale_removed = self._remove_stale()
        handle, pending = tempfile.mkstemp(prefix=".pending-", dir=self.root)
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = handle
        self.path = self.root / f"server-{uuid.uuid4().hex[:12]}"
        self.path.mkdir(mode=0o700)
        os.rename(pending, self.path.with_suffix(".lock"))  # visible only once locked

    def new_folder(self) -> Path:
        """A private folder for one session's files."""
        return Path(tempfile.mkdtemp(prefix="session-", dir=self.path))

    def remove(self) -> None:
        """Remove this server's folder (at shutdown)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        os.close(self._lock_fd)

    def _remove_stale(self) -> int:
        removed = 0
        for lock in self.root.glob("server-*.lock"):
            try:
                handle = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                lock.unlink(missing_ok=True)
                removed += 1
            except OSError:
                pass  # a live server holds the lock
            finally:
                os.close(handle)
        return removed
