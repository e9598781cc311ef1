"""The weights shipped with the package load as the registered "default" model, within the size budget."""

from fastsam3d import load_model
from fastsam3d.demo import run_demo
from fastsam3d.registry import WEIGHTS_DIR


def test_default_weights_are_small_and_load():
    assert (WEIGHTS_DIR / "default.safetensors").stat().st_size <= 20 * 1024 * 1024
    model = load_model("default")
    assert model.config.name == "default"


def test_demo_writes_its_outputs(tmp_path, intensity_model, capsys):
    results = run_demo(intensity_model, tmp_path, clicks=2)
    assert set(results) == {"liver", "spleen", "left kidney", "right kidney", "aorta"}
    assert all(len(scores) == 2 and all(0 <= s <= 1 for s in scores) for scores in results.values())
    for name in ("image.nii.gz", "truth.nii.gz", "segmentation.nii.gz", "overlay.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "mean Dice after 2 clicks" in capsys.readouterr().out


def test_default_model_segments_a_sphere_from_one_click():
    """A 24 mm ball in a noisy anisotropic volume, one click in its centre."""
    import numpy as np

    from fastsam3d.evaluation.clicks import dice
    from fastsam3d.io import Volume
    from fastsam3d.session import Session

    shape, spacing = (110, 110, 60), np.array([0.9, 0.9, 2.5])
    position = np.indices(shape).transpose(1, 2, 3, 0) * spacing
    ball = np.linalg.norm(position - np.array(shape) // 2 * spacing, axis=-1) < 24
    image = (40 + 200 * ball + np.random.default_rng(0).normal(0, 15, shape)).astype(np.float32)
    session = Session(load_model("default"))
    session.set_image(Volume(image, spacing, np.zeros(3), np.eye(3)))
    session.add_click(np.array(shape) // 2, True)
    assert dice(session.mask() > 0, ball) >= 0.9
