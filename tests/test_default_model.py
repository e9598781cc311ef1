"""The weights shipped with the package: they load, and segment a sphere from one click."""

import numpy as np
import pytest

from fastsam3d import Session, load_model
from fastsam3d.registry import WEIGHTS_DIR

from .test_session import dice, sphere_volume

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / "default.safetensors").is_file(), reason="default weights not built into this checkout"
)


def test_default_weights_are_small_and_load():
    assert (WEIGHTS_DIR / "default.safetensors").stat().st_size <= 20 * 1024 * 1024
    model = load_model("default")
    assert model.config.name == "default"


def test_default_model_segments_a_sphere_from_one_click():
    volume, truth = sphere_volume(radius_mm=20.0)
    session = Session("default", max_rois=1)
    session.set_image(volume)
    session.add_click((10.0, -25.0, 40.0), world=True)
    assert dice(session.mask(), truth) >= 0.9
