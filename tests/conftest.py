"""Shared fixtures: paths to the reference fixtures beside the repository, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "ref_small.pt").is_file():
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR} (they ship in ../shared/reference)")
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
