"""Outputs people can use: permissions from the umask, folders created, one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastsam3d.registry
from fastsam3d.cli import main
from fastsam3d.io import Volume, write_volume

from ..helpers import sphere_volume


@pytest.fixture
def image(tmp_path):
    return write_volume(sphere_volume()[0], tmp_path / "sphere.nii.gz")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_honour_the_umask_and_missing_folders_are_created(
    capsys, tmp_path, image, intensity_model, monkeypatch, umask_022
):
    monkeypatch.setattr(fastsam3d.registry, "load_model", lambda *args, **kwargs: intensity_model)
    out = tmp_path / "new" / "deeper" / "seg.nii.gz"
    assert (
        main(
            [
                "segment",
                str(image),
                "--point",
                "60,50,22",
                "--out",
                str(out),
                "--uncertainty",
                str(tmp_path / "u.nrrd"),
                "--samples",
                "2",
            ]
        )
        == 0
    ), capsys.readouterr().err
    for path in (out, tmp_path / "u.nrrd"):
        assert path.stat().st_mode & 0o777 == 0o644
    os.umask(0o027)
    assert main(["segment", str(image), "--point", "60,50,22", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o640


def test_one_line_errors(capsys, tmp_path, image, intensity_model, monkeypatch):
    monkeypatch.setattr(fastsam3d.registry, "load_model", lambda *args, **kwargs: intensity_model)
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    for argv in (
        ["segment", str(image), "--point", "1,1,1", "--out", str(blocker / "sub" / "seg.nii.gz")],
        ["demo", "--out", str(blocker / "demo")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{blocker} is a file, not a folder" in err, err
    monkeypatch.undo()
    assert (
        main(["segment", str(image), "--point", "1,1,1", "--model", "no-such", "--out", str(tmp_path / "o.nii.gz")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(
        name in err for name in ("litemedsam", "medsam", "sam-vit-b", "sam-med2d", "sam-med3d-turbo")
    )
    text = tmp_path / "weights.pth"
    text.write_text("not weights\n")
    assert (
        main(
            [
                "segment",
                str(image),
                "--point",
                "1,1,1",
                "--model",
                "tiny-teacher",
                "--checkpoint",
                str(text),
                "--out",
                str(tmp_path / "o.nii.gz"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "text file" in err and "weights_only" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("fastsam3d 0.")


def test_quiet_and_verbose_are_accepted_anywhere(capsys, tmp_path):
    assert main(["-q", "weights", "list"]) == 0 and "sam-med3d-turbo" in capsys.readouterr().out
    assert main(["weights", "list", "--verbose"]) == 0


def test_info_labels_the_frame_of_origin_and_direction(capsys, tmp_path):
    volume = Volume(np.zeros((4, 5, 6), np.float32), (1, 1, 2), (10, -20, 30), np.diag([-1.0, -1.0, 1.0]))
    path = write_volume(volume, tmp_path / "ras.nii.gz")
    assert main(["info", str(path)]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["orientation"].split()[0] == "RAS" and "i toward right" in lines["orientation"]
    assert lines["origin (LPS)"].startswith(" " * 4 + "10.00, -20.00, 30.00 mm")
    assert lines["origin (RAS)"].strip().startswith("-10.00, 20.00, 30.00 mm")
    assert lines["direction (RAS)"].strip() == "[1 0 0; 0 1 0; 0 0 1]"


def test_serve_prints_its_url_as_information(capsys, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn not installed: pip install 'fastsam3d[server]'")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    assert main(["serve", "--port", "8123"]) == 0
    captured = capsys.readouterr()
    assert "http://127.0.0.1:8123/" in captured.out and "warning" not in captured.err


def test_models_lists_every_model_and_its_weights_without_importing_torch(tmp_path):
    # fast because torch is never imported (0.24 s against 13.7 s: `time fastsam3d models`, docs/benchmarks.md)
    code = "import sys; from fastsam3d.cli import main; main(['models']); assert 'torch' not in sys.modules"
    env = {**os.environ, "FASTSAM3D_WEIGHTS": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for name in ("default", "fastsam3d", "fastsam3d-encoder", "sam-med3d-turbo", "litemedsam", "sam-med2d"):
        assert f"\n{name} " in text, name
    assert "bundled: " in text and "default.safetensors" in text
    assert "not downloaded: fastsam3d weights fetch fastsam3d-encoder" in text and "--checkpoint FILE" in text


@pytest.mark.parametrize("stored", ["ras", "lps"])
def test_demo_views_are_radiological_and_cross_every_structure(stored):
    from fastsam3d.demo import make_phantom, radiological_views

    volume, masks = make_phantom()
    if stored == "lps":  # the same patient stored the other way round: the views must not change
        volume = Volume(
            volume.array[::-1, ::-1],
            volume.spacing,
            volume.index_to_world(np.array([volume.shape[0] - 1, volume.shape[1] - 1, 0])),
            volume.direction @ np.diag([-1.0, -1.0, 1.0]),
        )
        masks = {name: mask[::-1, ::-1] for name, mask in masks.items()}
    truth = np.zeros(volume.shape, np.uint8)
    for value, mask in enumerate(masks.values(), 1):
        truth[mask] = value
    views = {title.split()[0]: slices for title, _, slices in radiological_views(volume, truth, show=truth)}

    def centre(view: str, name: str) -> np.ndarray:  # (row, column) as fractions, row 0 at the bottom
        rows, columns = np.nonzero(views[view][1] == list(masks).index(name) + 1)
        return np.array([rows.mean() / views[view][1].shape[0], columns.mean() / views[view][1].shape[1]])

    assert all(len(np.unique(views[view][1])) == len(masks) + 1 for view in ("axial", "coronal"))
    assert centre("axial", "liver")[1] < 0.5 < centre("axial", "spleen")[1]  # patient left on the image right
    assert centre("axial", "left kidney")[0] < centre("axial", "liver")[0]  # posterior down
    assert centre("coronal", "left kidney")[0] < centre("coronal", "spleen")[0]  # inferior down
