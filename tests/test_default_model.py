"""The shipped default model: loads within its size budget, segments a ball from one click and real
held-out organs from a few clicks, honours its clicks."""

import numpy as np
import pytest

from fastsam3d import load_model
from fastsam3d.clicks import dice
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.demo import run_demo
from fastsam3d.engine.session3d import Session
from fastsam3d.io import Volume
from fastsam3d.modeling.click_unet import ClickUNet3D
from fastsam3d.registry import WEIGHTS_DIR


@pytest.fixture(scope="module")
def default_model() -> ClickUNet3D:
    return load_model("default")


def ball_volume(radius_mm: float = 24.0) -> tuple[Volume, np.ndarray]:
    """A bright ball in a noisy anisotropic volume."""
    shape, spacing = (110, 110, 60), np.array([0.9, 0.9, 2.5])
    position = np.indices(shape).transpose(1, 2, 3, 0) * spacing
    ball = np.linalg.norm(position - np.array(shape) // 2 * spacing, axis=-1) < radius_mm
    image = (40 + 200 * ball + np.random.default_rng(0).normal(0, 15, shape)).astype(np.float32)
    return Volume(image, spacing, np.zeros(3), np.eye(3)), ball


def test_default_weights_are_small_and_load(default_model):
    assert (WEIGHTS_DIR / "default.safetensors").stat().st_size <= 20 * 1024 * 1024
    assert isinstance(default_model, ClickUNet3D) and default_model.config.name == "default"


def test_demo_writes_its_outputs(tmp_path, intensity_model, capsys):
    results = run_demo(intensity_model, tmp_path, clicks=2)
    assert set(results) == {"liver", "spleen", "left kidney", "right kidney", "aorta"}
    assert all(len(scores) == 2 and all(0 <= s <= 1 for s in scores) for scores in results.values())
    for name in ("image.nii.gz", "truth.nii.gz", "segmentation.nii.gz", "overlay.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "mean Dice after 2 clicks" in capsys.readouterr().out


def test_default_model_segments_a_sphere_from_one_click(default_model):
    volume, ball = ball_volume()
    session = Session(default_model)
    session.set_image(volume)
    session.add_click(np.array(volume.shape) // 2, True)
    assert dice(session.mask() > 0, ball) >= 0.9


def test_a_negative_click_removes_the_voxel_it_was_placed_on(default_model):
    volume, _ball = ball_volume()
    session = Session(default_model)
    session.set_image(volume)
    centre = np.array(volume.shape) // 2
    session.add_click(centre, True)
    inside = tuple(centre + np.array([12, 0, 0]))  # 11 mm from the centre, well inside the ball
    assert session.mask()[inside]
    session.add_click(inside, positive=False)
    assert not session.mask()[inside] and session.mask()[tuple(centre)]


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["liver", "spleen"])
def test_default_model_segments_a_held_out_real_organ(default_model, structure):
    """The DICOM CT of the development data was never trained on (nor its label map): 5 clicks at
    the interior-most voxel of the largest error, as `fastsam3d evaluate --protocol center`."""
    from fastsam3d.clicks import center_click
    from fastsam3d.evaluation.datasets import load_cases

    manifest = dev_manifest()
    if manifest is None:
        pytest.skip("development data not fetched: run `fastsam3d data fetch` (scripts/install.sh does)")
    case = next(c for c in load_cases(manifest, [structure]) if c.name == "ct_dicom")
    image, label = case.load()
    target = label.array == next(k for k, v in case.classes.items() if v == structure)
    session = Session(default_model)
    session.set_image(image)
    session.add_object(structure)
    for _ in range(5):
        click = center_click(session.mask(), target, image.spacing)
        if click is None:
            break
        session.add_click(*click)
    # measured after 5 clicks: v2 liver 0.89, spleen 0.94; v3 (strokes) liver 0.88, spleen 0.79
    # (0.89 at click 3: its fifth click overshoots); the model card lists every structure
    assert dice(session.mask(), target) >= 0.75
