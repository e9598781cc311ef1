"""``fastsam3d segment`` as a whole job: named objects from a prompt file, label map, DICOM-SEG,
statistics, an initial mask, a folder of images; bad prompt files stop it before anything is written."""

import json

import numpy as np
import pytest

import fastsam3d.registry
from fastsam3d.cli import main
from fastsam3d.io import Volume, read_volume, write_volume

from ..dicom_series import write_dicom_series

SHAPE = (350, 64, 64)
CENTRES = ((40, 32, 32), (175, 32, 32), (310, 32, 32))  # three bright balls, each beyond the others' ROIs
RADIUS = 20


def three_balls() -> Volume:
    """A 1-mm volume with three bright balls (200) on a dark background (40)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1)
    inside = np.zeros(SHAPE, bool)
    for centre in CENTRES:
        inside |= np.linalg.norm(grid - centre, axis=-1) <= RADIUS
    return Volume(np.where(inside, 200.0, 40.0).astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


PROMPTS = {
    "frame": "voxel",
    "objects": [
        {"name": "liver", "label": 1, "prompts": [{"click": [40, 32, 32]}, {"click": [40, 32, 52], "positive": False}]},
        {"name": "spleen", "label": 5, "prompts": [{"box": [[150, 8, 8], [200, 56, 56]]}]},
        {
            "name": "left kidney",
            "label": 3,
            "prompts": [{"lasso": [[295, 17, 32], [325, 17, 32], [325, 47, 32], [295, 47, 32]], "positive": True}],
        },
    ],
}


@pytest.fixture
def job(tmp_path, monkeypatch, intensity_model):
    monkeypatch.setattr(fastsam3d.registry, "load_model", lambda *args, **kwargs: intensity_model)
    volume = three_balls()
    series = write_dicom_series(volume, tmp_path / "series")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    return series, prompts


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_three_objects_to_a_label_map_dicom_seg_and_stats(capsys, tmp_path, job):
    import highdicom as hd

    series, prompts = job
    out, seg, stats = tmp_path / "out" / "labels.nii.gz", tmp_path / "seg.dcm", tmp_path / "stats.json"
    code, stdout, err = run(
        capsys, "segment", series, "--prompts", prompts, "--out", out, "--dicom-seg", seg, "--stats", stats
    )
    assert code == 0, err
    assert "liver (label 1): segmented" in stdout
    labels = read_volume(out).array
    assert sorted(np.unique(labels).tolist()) == [0, 1, 3, 5]
    for value, centre in zip((1, 5, 3), CENTRES, strict=True):
        assert labels[centre] == value
    assert labels[40, 32, 50] == 0  # the exclude click carved the liver's top

    segmentation = hd.seg.segread(seg)
    described = {
        d.SegmentLabel: (d.SegmentedPropertyTypeCodeSequence[0].CodeValue, tuple(d.RecommendedDisplayCIELabValue))
        for d in segmentation.SegmentSequence
    }
    assert {name: code for name, (code, _) in described.items()} == {
        "liver": "10200004",
        "spleen": "78961009",
        "left kidney": "64033007",
    }
    assert len({colour for _, colour in described.values()}) == 3
    kidney = segmentation.get_volume(segment_numbers=[2]).array  # segments in label order: 1, 3, 5
    assert kidney.sum() == (labels == 3).sum()

    rows = {row["name"]: row for row in json.loads(stats.read_text())}
    ball_ml = 4 / 3 * np.pi * RADIUS**3 / 1000
    for name, centre in zip(("liver", "spleen", "left kidney"), CENTRES, strict=True):
        row = rows[name]
        assert row["voxels"] == (labels == row["label"]).sum()
        assert 0.6 * ball_ml < row["volume_ml"] <= 1.2 * ball_ml
        assert 180 < row["mean_intensity"] <= 200  # the ball (200), a rim of background (40) at most
        assert np.all(np.array(row["bbox_min"]) >= np.array(centre) - RADIUS - 3)
        assert np.all(np.array(row["bbox_max"]) <= np.array(centre) + RADIUS + 3)
    assert rows["liver"]["voxels"] < rows["spleen"]["voxels"]  # minus the excluded cap


def test_stats_as_csv_and_an_output_ending_dcm(capsys, tmp_path, job):
    import highdicom as hd

    series, prompts = job
    code, _, err = run(
        capsys, "segment", series, "--prompts", prompts, "--out", tmp_path / "s.dcm", "--stats", tmp_path / "s.csv"
    )
    assert code == 0, err
    assert len(hd.seg.segread(tmp_path / "s.dcm").SegmentSequence) == 3
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("image,name,label,voxels,volume_ml,bbox_min_i") and len(lines) == 4


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("{not json", "not valid JSON"),
        ({"objects": []}, '"objects" must be a non-empty list'),
        ({"frame": "mm", "objects": [{"prompts": []}]}, "frame 'mm'"),
        ({"objects": [{"name": "a", "prompts": [{"click": [1, 2]}]}]}, "object 1 ('a'), prompt 1: a click is"),
        ({"objects": [{"name": "a", "prompts": [{"tap": [1, 2, 3]}]}]}, "give exactly one of click, box"),
        (
            {"objects": [{"name": "a", "prompts": [{"click": [1, 2, 3]}, {"lasso": [[1, 2, 3], [4, 5, 3]]}]}]},
            "object 1 ('a'), prompt 2: a lasso needs at least 3 points",
        ),
        ({"objects": [{"name": "a", "label": 0, "prompts": []}]}, "the label must be an integer from 1"),
        ({"objects": [{"name": "a", "label": 2}, {"name": "b", "label": 2}]}, "two objects have the label 2"),
        (
            {"objects": [{"name": "a", "prompts": [{"click": [10, 10, 10]}]}, {"name": "b", "prompts": []}]},
            "object 'b' has no prompts",
        ),
        ({"objects": [{"name": "a", "prompts": [{"click": [500, 1, 1]}]}]}, "prompt 1 (click): point at voxel"),
        (
            {"objects": [{"name": "a", "prompts": [{"lasso": [[10, 10, 10], [20, 10, 11], [20, 20, 12]]}]}]},
            "on one slice",
        ),
    ],
)
def test_bad_prompt_files_give_one_line_and_write_nothing(capsys, tmp_path, job, content, fragment):
    series, _ = job
    prompts = tmp_path / "bad.json"
    prompts.write_text(content if isinstance(content, str) else json.dumps(content))
    outputs = [tmp_path / "o.nii.gz", tmp_path / "o.dcm", tmp_path / "o.json"]
    code, _, err = run(
        capsys, "segment", series, "--prompts", prompts, "--out", outputs[0], "--dicom-seg", outputs[1],
        "--stats", outputs[2],
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not any(path.exists() for path in outputs)


def test_prompts_and_point_flags_do_not_mix_and_dicom_seg_needs_dicom(capsys, tmp_path, job):
    series, prompts = job
    code, _, err = run(
        capsys, "segment", series, "--prompts", prompts, "--point", "1,1,1", "--out", tmp_path / "o.nrrd"
    )
    assert code == 2 and "either --prompts" in err
    nifti = write_volume(three_balls(), tmp_path / "balls.nii.gz")
    code, _, err = run(capsys, "segment", nifti, "--prompts", prompts, "--dicom-seg", tmp_path / "o.dcm")
    assert code == 2 and "needs a DICOM series" in err and not (tmp_path / "o.dcm").exists()


def test_initial_mask_starts_the_objects(capsys, tmp_path, job):
    volume = three_balls()
    image = write_volume(volume, tmp_path / "balls.nii.gz")
    start = np.zeros(volume.shape, np.uint8)
    start[30:50, 10:30, 10:30] = 1  # a cube around the first ball: label 1
    start[175, 32, 32] = 2  # one voxel of the second: label 2
    mask = write_volume(volume.with_array(start), tmp_path / "start.nii.gz")
    prompts = tmp_path / "p.json"
    prompts.write_text(
        json.dumps({"objects": [{"name": "cube", "label": 1}, {"name": "grown", "label": 2, "prompts": []}]})
    )
    out = tmp_path / "o.nii.gz"
    code, _, err = run(capsys, "segment", image, "--prompts", prompts, "--initial-mask", mask, "--out", out)
    assert code == 0, err
    labels = read_volume(out).array
    assert (labels == 1).sum() == 20**3 and (labels == 2).sum() == 1  # unchanged: no prompts after them
    code, _, err = run(capsys, "segment", image, "--initial-mask", mask, "--point", "175,32,32", "--out", out)
    assert code == 0, err
    assert (read_volume(out).array == 1).sum() > 1000  # the single object: every non-zero voxel, then the click


def test_a_folder_of_images_goes_on_past_a_broken_one(capsys, tmp_path, job):
    _, prompts = job
    folder = tmp_path / "images"
    folder.mkdir()
    volume = three_balls()
    for name in ("a.nii.gz", "b.nrrd"):
        write_volume(volume, folder / name)
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    code, _, err = run(capsys, "segment", folder, "--prompts", prompts, "--output", tmp_path / "out", "-q")
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert sorted(np.unique(read_volume(tmp_path / "out" / "b.nii.gz").array).tolist()) == [0, 1, 3, 5]
    errors = [line for line in err.splitlines() if line.startswith("fastsam3d: ")]
    assert errors[0].startswith("fastsam3d: error: broken.nii.gz: cannot read") and "1 of 3 images failed" in errors[1]


def test_scribbles_and_lassos_reach_the_engine_verbs():
    """A recording fake engine (the verbs are being added to the real engines in parallel)."""
    from fastsam3d.engine.answers import Interaction, Timings
    from fastsam3d.prompt_file import apply_prompts, locate, parse_prompts

    calls = []

    class Recorder:
        def __getattr__(self, verb):
            def record(*args, **kwargs):
                calls.append((verb, np.asarray(args[0]).tolist(), args[1:], kwargs))
                return Interaction(None, Timings())

            return record

    prompts = parse_prompts(
        {
            "frame": "lps",
            "objects": [
                {
                    "name": "x",
                    "prompts": [
                        {"scribble": [[1, 2, 3], [4, 5, 3]], "positive": False},
                        {"lasso": [[1, 1, 2], [5, 1, 2], [5, 5, 2]], "frame": "voxel"},
                    ],
                }
            ],
        }
    )
    volume = Volume(np.zeros((10, 10, 10), np.float32), (1.0, 1.0, 1.0), (9.0, 9.0, 0.0), np.diag([-1.0, -1.0, 1.0]))
    (obj,) = locate(prompts.objects, volume)
    apply_prompts(Recorder(), obj, label=4)
    assert calls[0] == ("add_scribble", [[8, 7, 3], [5, 4, 3]], (False,), {"frame": "voxel", "label": 4})
    assert calls[1] == ("add_lasso", [[1, 1, 2], [5, 1, 2], [5, 5, 2]], (True,), {"frame": "voxel", "label": 4})
