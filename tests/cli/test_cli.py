import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import fastsam3d.registry
from fastsam3d.cli import build_parser, main
from fastsam3d.cli.arguments import join_negative_values
from fastsam3d.clicks import dice
from fastsam3d.io import Volume, read_volume, write_volume
from fastsam3d.registry import build_model, save_model

from ..helpers import sphere_volume


@pytest.fixture
def sphere_file(tmp_path):
    volume, truth = sphere_volume()
    return write_volume(volume, tmp_path / "sphere.nii.gz"), volume, truth


@pytest.fixture
def with_intensity_model(monkeypatch, intensity_model):
    monkeypatch.setattr(fastsam3d.registry, "load_model", lambda *args, **kwargs: intensity_model)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_writes_masks_on_the_input_grid(capsys, tmp_path, sphere_file, with_intensity_model):
    path, volume, truth = sphere_file
    centre = np.round(volume.world_to_index(np.array([10.0, -25.0, 40.0]))).astype(int)
    code, out, err = run(
        capsys,
        "segment",
        path,
        "--point",
        ",".join(map(str, centre)),
        "--world-point",
        "10,-25,55,-",
        "--out",
        tmp_path / "seg.nii.gz",
        "--uncertainty",
        tmp_path / "unc.nrrd",
        "--probability",
        tmp_path / "prob.mha",
        "--timing",
        "--samples",
        "3",
    )
    assert code == 0, err
    assert "segmented" in out and "encoder" in out and "uncertainty (3 samples)" in out
    seg = read_volume(tmp_path / "seg.nii.gz")
    assert seg.shape == volume.shape and np.allclose(seg.direction, volume.direction, atol=1e-6)
    assert 0.6 < dice(seg.array > 0, truth) < 0.99  # the exclude click carved a cap off the sphere
    for name in ("unc.nrrd", "prob.mha"):
        assert read_volume(tmp_path / name).array.dtype == np.float32


def test_info_and_models(capsys, sphere_file):
    path, _, _ = sphere_file
    code, out, _ = run(capsys, "info", path)
    assert code == 0
    assert "120 x 100 x 44" in out and "0.9, 1.2, 3 mm" in out and "orientation" in out
    code, out, _ = run(capsys, "models")
    assert code == 0 and "fastsam3d" in out and "sam-med3d-turbo" in out and "--checkpoint" in out


def _assert_user_error(code, err, fragment):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsam3d: error:"), err
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "make_input,fragment",
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "junk.nii.gz").write_bytes(b"\x1f\x8b not really gzip") and p / "junk.nii.gz", "corrupt"),
        (
            lambda p: (
                sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(p / "flat.nii.gz")) or p / "flat.nii.gz"
            ),
            "2D",
        ),
        (
            lambda p: (
                sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), str(p / "4d.nii.gz")) or p / "4d.nii.gz"
            ),
            "4D",
        ),
        (
            lambda p: write_volume(
                Volume(np.full((8, 8, 8), np.nan, np.float32), np.ones(3), np.zeros(3), np.eye(3)), p / "nan.nii.gz"
            ),
            "NaN",
        ),
    ],
)
def test_bad_images(capsys, tmp_path, with_intensity_model, make_input, fragment):
    image = make_input(tmp_path)
    code, _, err = run(capsys, "segment", image, "--point", "1,1,1", "--out", tmp_path / "out.nii.gz")
    _assert_user_error(code, err, fragment)
    assert not (tmp_path / "out.nii.gz").exists()


def test_truncated_file(capsys, tmp_path, sphere_file, with_intensity_model):
    path, _, _ = sphere_file
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(path.read_bytes()[:300])
    code, _, err = run(capsys, "segment", truncated, "--point", "1,1,1", "--out", tmp_path / "o.nii.gz")
    _assert_user_error(code, err, "corrupt")


@pytest.mark.parametrize(
    "prompt,fragment",
    [
        (["--point", "500,1,1"], "outside the volume"),
        (["--world-point", "1000,0,0"], "outside the volume"),
        (["--box", "10,10,10,30,10,10"], "no extent"),
        ([], "at least one"),
    ],
)
def test_bad_prompts_keep_existing_output(capsys, tmp_path, sphere_file, with_intensity_model, prompt, fragment):
    path, _, _ = sphere_file
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"previous work")
    code, _, err = run(capsys, "segment", path, *prompt, "--out", out)
    _assert_user_error(code, err, fragment)
    assert out.read_bytes() == b"previous work"


def test_empty_object_is_an_error_and_writes_nothing(capsys, tmp_path, sphere_file, with_intensity_model):
    path, volume, _ = sphere_file
    centre = np.round(volume.world_to_index(np.array([10.0, -25.0, 40.0]))).astype(int)
    excludes = []
    for offset in ([0, 0, 0], [8, 0, 0], [-8, 0, 0], [0, 8, 0], [0, -8, 0], [0, 0, 3], [0, 0, -3]):
        excludes += ["--point", ",".join(map(str, centre + offset)) + ",-"]
    code, _, err = run(
        capsys, "segment", path, "--point", ",".join(map(str, centre)), *excludes, "--out", tmp_path / "s.nii.gz"
    )
    _assert_user_error(code, err, "empty")
    assert not (tmp_path / "s.nii.gz").exists()


def test_unsupported_output_extension(capsys, tmp_path, sphere_file, with_intensity_model):
    path, _, _ = sphere_file
    code, _, err = run(capsys, "segment", path, "--point", "1,1,1", "--out", tmp_path / "seg.png")
    _assert_user_error(code, err, "use one of")


def test_wrong_checkpoint_for_the_model(capsys, tmp_path, sphere_file):
    path, _, _ = sphere_file
    student = save_model(build_model("tiny-student"), tmp_path / "student.safetensors")
    import torch

    torch.save({"model_state_dict": build_model("tiny-student").state_dict()}, tmp_path / "student.pth")
    code, _, err = run(
        capsys,
        "segment",
        path,
        "--point",
        "1,1,1",
        "--model",
        "tiny-teacher",
        "--checkpoint",
        tmp_path / "student.pth",
        "--out",
        tmp_path / "o.nii.gz",
    )
    _assert_user_error(code, err, "does not fit model 'tiny-teacher'")
    code, _, err = run(
        capsys,
        "segment",
        path,
        "--point",
        "1,1,1",
        "--model",
        student.with_suffix(".pth.gz"),
        "--out",
        tmp_path / "o.nii.gz",
    )
    _assert_user_error(code, err, "unknown model")


def test_real_tiny_model_end_to_end_as_a_process(tmp_path, sphere_file):
    """The installed entry point with a real (random-weight) model: runs, or fails cleanly."""
    path, _, _ = sphere_file
    model = save_model(build_model("tiny-teacher"), tmp_path / "tiny.safetensors")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastsam3d.cli",
            "segment",
            str(path),
            "--point",
            "60,50,22",
            "--model",
            str(model),
            "--out",
            str(tmp_path / "seg.nii.gz"),
            "--timing",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert read_volume(tmp_path / "seg.nii.gz").array.any()
    else:
        assert result.returncode == 2 and "empty" in result.stderr


def test_train_command_with_peft(tmp_path, capsys):
    from fastsam3d.cli import main

    assert main(["train", "--out", str(tmp_path), "--config", "tiny-student", "--peft", "bogus", "--steps", "1"]) == 2
    assert "--peft must be" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path),
                "--config",
                "tiny-student",
                "--peft",
                "lora",
                "--steps",
                "1",
                "--rounds",
                "1",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert (tmp_path / "adapters.safetensors").is_file() and (tmp_path / "model.safetensors").is_file()


def test_training_commands_refuse_bad_options(tmp_path, capsys):
    from fastsam3d.cli import main

    manifest = tmp_path / "dataset.json"
    manifest.write_text('{"cases": [{"name": "a", "image": "a.nii.gz", "label": "a_seg.nii.gz"}]}')
    assert (
        main(["train", "--out", str(tmp_path / "r"), "--data", str(manifest), "--holdout", "zzz", "--steps", "1"]) == 2
    )
    assert "--holdout names unknown cases ['zzz']" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--real-fraction", "1.5", "--steps", "1"]) == 2
    assert main(["distill", "--labels", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "prepare-labels" in capsys.readouterr().err


@pytest.mark.parametrize("joined", [True, False])
def test_negative_coordinates_with_or_without_equals(capsys, tmp_path, sphere_file, with_intensity_model, joined):
    path, _, truth = sphere_file
    inside = "-5,-25,40"  # world mm inside the sphere, starting with a minus sign
    prompt = [f"--world-point={inside}"] if joined else ["--world-point", inside]
    code, _, err = run(capsys, "segment", path, *prompt, "--out", tmp_path / "seg.nii.gz")
    assert code == 0, err
    assert dice(read_volume(tmp_path / "seg.nii.gz").array > 0, truth) > 0.8


def test_negative_values_are_joined_to_every_coordinate_option():
    argv = ["segment", "x", "--point", "-1,-2.5,3e1,-", "--box", "-1,0,0,2,2,2", "--world-point", "-3,0,.5"]
    args = build_parser().parse_args(join_negative_values([*argv, "--out", "o", "-q"]))
    assert args.clicks == [("voxel", (-1.0, -2.5, 30.0), False), ("world", (-3.0, 0.0, 0.5), True)]
    assert args.box == ((-1, 0, 0), (2, 2, 2)) and args.quiet
    assert join_negative_values(["--point", "-q"]) == ["--point", "-q"]  # not a number: left to argparse


def test_reversed_box_corners_are_one_line_naming_the_axis(capsys, tmp_path, sphere_file):
    path, _, _ = sphere_file
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(path), "--box", "10,30,5,20,12,9", "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("fastsam3d: error:") and "axis j" in err and "j0=30 > j1=12" in err


def test_segment_help_says_indices_are_0_based_and_names_the_default_model(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0-based" in text and "data[i, j, k]" in text and "default: 'default'" in text


def test_timing_covers_the_whole_call(capsys, tmp_path, sphere_file, with_intensity_model):
    path, _, _ = sphere_file
    code, out, err = run(
        capsys, "segment", path, "--world-point", "-5,-25,40", "--out", tmp_path / "s.nii.gz", "--timing"
    )
    assert code == 0, err
    times = {
        line.split(":")[0].strip(): float(line.rsplit(":", 1)[1].removesuffix(" s"))
        for line in out.split("timing (wall clock):")[1].strip().splitlines()
    }
    total = times.pop("total (wall time since the process started)")
    stages = [name.split(" ")[0] for name in list(times)[1:]]
    assert stages == ["starting", "reading", "loading", "segmenting", "writing", "other"], list(times)
    assert 0 < times["start-up (interpreter, imports)"] < total
    assert abs(sum(times.values()) - total) < 0.05 and min(times.values()) >= 0


@pytest.mark.parametrize("quiet", [False, True])
def test_a_long_stage_shows_a_status_line_unless_quiet(
    capsys, monkeypatch, tmp_path, sphere_file, intensity_model, quiet
):
    import time

    from fastsam3d.cli import progress

    def slow_load(*args, **kwargs):
        time.sleep(0.8)
        return intensity_model

    monkeypatch.setattr(fastsam3d.registry, "load_model", slow_load)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.1)
    path, _, _ = sphere_file
    argv = ["segment", path, "--point", "1,1,1", "--out", tmp_path / "s.nii.gz", *(["-q"] if quiet else [])]
    _, _, err = run(capsys, *argv)
    assert ("fastsam3d: loading model default…" in err) != quiet, err
