"""``fastsam3d segment FOLDER --prompts FILE --output DIR``: the same prompts on every image of a
folder, one label map each; a failed image is reported in one line and the rest go on."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import FastSAM3DError
from ..prompt_file import ObjectPrompts

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
EXIT_SOME_FAILED = 1


def images_in(folder: Path) -> list[Path]:
    """The folder's image files and DICOM series subfolders, by name."""
    from ..io import holds_dicom

    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if (path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)) or (path.is_dir() and holds_dicom(path)):
            found.append(path)
    return found


def output_name(image: Path, suffix: str = ".nii.gz") -> str:
    """``case1.nii.gz`` -> ``case1.nii.gz`` (a label map in the output folder), ``ct.nrrd`` -> ``ct.nii.gz``."""
    name = image.name
    lower = name.lower()
    stem = next((name[: -len(s)] for s in IMAGE_SUFFIXES if lower.endswith(s)), name)
    return stem + suffix


def run_batch(args: argparse.Namespace, objects: tuple[ObjectPrompts, ...]) -> int:
    """Segment every image of ``args.image``; 0 when all succeeded, 1 when any failed."""
    from ..io import make_folder
    from ..statistics import check_stats_path, write_stats
    from .segment import open_session, prepare, segment

    for flag, value in (
        ("--dicom-seg", args.dicom_seg),
        ("--initial-mask", args.initial_mask),
        ("--probability", args.probability),
        ("--uncertainty", args.uncertainty),
    ):
        if value is not None:
            raise FastSAM3DError(f"{flag} takes one image, not a folder ({args.image})")
    if args.out is None:
        raise FastSAM3DError("give --output FOLDER for the label maps of a folder of images")
    if args.stats is not None:
        check_stats_path(args.stats)
    images = images_in(args.image)
    if not images:
        raise FastSAM3DError(f"no images ({', '.join(IMAGE_SUFFIXES)} or DICOM series) in {args.image}")
    folder = make_folder(args.out)
    session = open_session(args)
    rows, failed = [], []
    for image in _progress(images, args.quiet):
        try:
            job = prepare(image, objects, args)
            rows += segment(session, job, args, folder / output_name(image))
        except (FastSAM3DError, OSError) as error:
            if isinstance(error, OSError) and error.strerror is None:
                raise
            message = str(error) if isinstance(error, FastSAM3DError) else f"{error.strerror}: {error.filename}"
            log.error(f"{image.name}: {message}")
            failed.append(image)
    if args.stats is not None and rows:
        log.info(f"wrote {write_stats(rows, args.stats)}")
    log.info(f"segmented {len(images) - len(failed)} of {len(images)} images into {folder}")
    if failed:
        log.error(f"{len(failed)} of {len(images)} images failed: {', '.join(p.name for p in failed)}")
        return EXIT_SOME_FAILED
    return 0


def _progress(images: list[Path], quiet: bool):
    if quiet:
        return images
    from tqdm import tqdm

    return tqdm(images, unit="image", desc="segmenting", file=sys.stderr)
