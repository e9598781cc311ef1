"""Development data: real CT and MR volumes with organ label maps, from TotalSegmentator's sources.

TotalSegmentator's source release on PyPI carries test volumes under ``tests/reference_files/``.
:func:`fetch_dev_data` downloads that release with pip (nothing is committed to this repository),
extracts the three image/label-map pairs and writes a ``dataset.json`` manifest that
``fastsam3d evaluate`` and the training code read:

* ``ct``: ``example_ct_sm.nii.gz`` (122x101x30, 3 mm) + ``example_seg.nii.gz`` ("total" classes)
* ``mr``: ``example_mr_sm.nii.gz`` (117x91x20, 3 mm) + ``example_seg_mr.nii.gz`` ("total_mr" classes)
* ``ct_dicom``: the 20-slice DICOM series ``example_ct_dicom/`` (512x512, 0.98x0.98x2 mm) +
  ``example_seg_dicom.nii.gz`` (its label map is stored with the j axis flipped; the loader
  aligns it onto the image grid).

and, listed under ``training`` (not evaluated by default), the whole-torso CT the ``ct`` case is
cut from: ``example_ct.nii.gz`` (122x101x112, 3 mm) + ``example_seg_fast_force_split.nii.gz``
(61 structures), the label map the default model's synthesis is built from.

The label maps are TotalSegmentator predictions, not manual labels. Everything under
``aorta_report/`` and ``pulmonary_report/`` is reserved for independent evaluation and is
never extracted here.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import FastSAM3DError
from ..io import atomic_output

PACKAGE = "totalsegmentator==2.18.0"
RESERVED = ("aorta_report/", "pulmonary_report/")
CASES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "total"),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr"),
    "ct_dicom": ("example_ct_dicom", "example_seg_dicom.nii.gz", "total"),
}
TRAINING = {"ct_torso": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "total")}


def default_root() -> Path:
    """``$FASTSAM3D_DATA/totalsegmentator`` or ``~/.cache/fastsam3d/totalsegmentator``."""
    base = os.environ.get("FASTSAM3D_DATA") or Path.home() / ".cache" / "fastsam3d"
    return Path(base) / "totalsegmentator"


def dev_manifest(root: Path | None = None) -> Path | None:
    """The manifest of already fetched development data (with its training cases), or None."""
    manifest = (root or default_root()) / "dataset.json"
    if not manifest.is_file() or "training" not in json.loads(manifest.read_text()):
        return None
    return manifest


def training_cases(manifest: Path) -> list[tuple[Path, Path]]:
    """(image, label map) paths of the manifest's training cases."""
    data = json.loads(Path(manifest).read_text())
    return [(Path(manifest).parent / c["image"], Path(manifest).parent / c["label"]) for c in data.get("training", [])]


def fetch_dev_data(root: Path | None = None, source: Path | None = None) -> Path:
    """Download (or take ``source``, a local sdist) and extract the development data; returns the
    manifest path. Idempotent: an existing manifest is returned as is."""
    root = root or default_root()
    existing = dev_manifest(root)
    if existing is not None:
        return existing
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        archive = source or _download(Path(scratch))
        class_maps = _extract(archive, root)

    def entries(cases: dict) -> list[dict]:
        return [
            {
                "name": name,
                "image": f"reference_files/{image}",
                "label": f"reference_files/{label}",
                "labels": {str(k): v for k, v in sorted(class_maps[class_map].items())},
            }
            for name, (image, label, class_map) in cases.items()
        ]

    manifest = {
        "name": "TotalSegmentator development data",
        "source": f"pip download --no-binary :all: {PACKAGE} (tests/reference_files)",
        "note": "labels are TotalSegmentator predictions; aorta_report/ and pulmonary_report/ excluded",
        "cases": entries(CASES),
        "training": entries(TRAINING),
    }
    path = root / "dataset.json"
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(manifest, indent=1))
    return path


def _download(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", PACKAGE, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(folder.glob("totalsegmentator-*.tar.gz"))
    if result.returncode != 0 or not archives:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FastSAM3DError(f"could not download {PACKAGE} with pip: {tail[0]}")
    return archives[0]


def _extract(archive: Path, root: Path) -> dict[str, dict[int, str]]:
    """Extract the needed reference files into ``root/reference_files``; return the class maps."""
    pairs = [*CASES.values(), *TRAINING.values()]
    wanted = {image for image, _, _ in pairs} | {label for _, label, _ in pairs}
    class_maps: dict[str, dict[int, str]] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if parts[-1] == "map_to_binary.py" and "totalsegmentator" in parts[-2:-1]:
                    class_maps = _class_maps(tar.extractfile(member).read().decode())
                    continue
                if "reference_files" not in parts or not member.isfile():
                    continue
                relative = "/".join(parts[parts.index("reference_files") + 1 :])
                if relative.startswith(RESERVED) or not any(
                    relative == w or relative.startswith(w + "/") for w in wanted
                ):
                    continue
                target = root / "reference_files" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    except (tarfile.TarError, OSError) as error:
        raise FastSAM3DError(f"could not read {archive}: {error}") from error
    missing = {m for _, _, m in CASES.values()} - set(class_maps)
    if missing:
        raise FastSAM3DError(f"{archive} has no class map for {sorted(missing)}")
    return class_maps


def _class_maps(source: str) -> dict[str, dict[int, str]]:
    """The ``class_map`` dict literal of TotalSegmentator's ``map_to_binary.py`` (parsed, not run)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}
