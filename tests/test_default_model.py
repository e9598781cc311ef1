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
