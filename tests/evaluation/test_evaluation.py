"""Evaluation harness: protocols, metrics, segmenters, report, bad input, parallel runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import compute_surface_dice

from fastsam3d.cli import main
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine.answers import Timings
from fastsam3d.errors import PromptError, VolumeError
from fastsam3d.evaluation.datasets import Case, load_cases
from fastsam3d.evaluation.evaluate import evaluate
from fastsam3d.evaluation.harness import COLUMNS, EvaluationSettings, evaluate_case, run_cases
from fastsam3d.evaluation.metrics import (
    CHALLENGE_NSD_TOLERANCE_MM,
    area_under_curve,
    challenge_auc,
    challenge_nsd,
    segmentation_metrics,
)
from fastsam3d.evaluation.protocols import Prompt, challenge_box, challenge_click, get_protocol, is_vessel_like
from fastsam3d.evaluation.report import write_report
from fastsam3d.evaluation.segmenters import RandomWalkerSegmenter, SamSegmenter, Segmenter
from fastsam3d.io import Volume, align_label, write_volume

from ..helpers import rotation, sphere_volume


def cube(shape, low, high) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] = True
    return mask


# --- protocols ----------------------------------------------------------------------------


def test_center_click_is_in_the_largest_error_with_its_sign():
    target = cube((40, 40, 40), (5, 5, 5), (30, 30, 30))
    prediction = cube((40, 40, 40), (5, 5, 5), (30, 30, 14))  # misses a 25x25x16 slab: false negative
    prediction |= cube((40, 40, 40), (34, 34, 34), (37, 37, 37))  # small false positive
    (prompt,) = get_protocol("center").prompts(2, prediction, target, (1, 1, 1), np.random.default_rng(0))
    assert prompt.positive and target[prompt.point] and not prediction[prompt.point]
    assert 18 <= prompt.point[2] <= 25  # the interior of the missed slab (k from 14 to 29)
    overgrown = target | cube((40, 40, 40), (0, 0, 0), (40, 40, 4))  # big false positive
    (prompt,) = get_protocol("center").prompts(2, overgrown, target, (1, 1, 1), np.random.default_rng(0))
    assert not prompt.positive and overgrown[prompt.point] and not target[prompt.point]


def test_fastsam3d_protocol_draws_from_the_error_core_then_uniformly():
    rng = np.random.default_rng(1)
    target = cube((40, 40, 40), (10, 10, 10), (30, 30, 30))
    empty = np.zeros_like(target)
    protocol = get_protocol("fastsam3d")
    assert protocol.click_history == "last" and protocol.max_rois == 1 and protocol.label_centred_roi
    for _ in range(20):  # first click: deep inside the target (distance > half the maximum, 10)
        (prompt,) = protocol.prompts(1, empty, target, (1, 1, 1), rng)
        assert prompt.positive and all(15 <= v <= 24 for v in prompt.point)
    tie = cube((40, 40, 40), (10, 10, 10), (20, 30, 30))  # FN and FP slabs of equal depth: FP wins
    shifted = cube((40, 40, 40), (20, 10, 10), (30, 30, 30)) | cube((40, 40, 40), (0, 10, 10), (10, 30, 30))
    (prompt,) = protocol.prompts(2, shifted, tie, (1, 1, 1), rng)
    assert not prompt.positive and shifted[prompt.point] and not tie[prompt.point]
    prediction = cube((40, 40, 40), (12, 10, 10), (30, 30, 30))
    errors = prediction ^ target
    for _ in range(10):  # later clicks: anywhere in the errors, sign by type
        (prompt,) = protocol.prompts(3, prediction, target, (1, 1, 1), rng)
        assert errors[prompt.point] and prompt.positive == bool(target[prompt.point])
    region = (slice(0, 20), slice(0, 40), slice(0, 40))
    (prompt,) = protocol.prompts(3, prediction, target, (1, 1, 1), rng, region)
    assert prompt.point[0] < 20


def test_random_protocol_gives_one_include_and_one_exclude_near_the_structure():
    target = cube((60, 60, 30), (20, 20, 10), (30, 30, 15))
    rng = np.random.default_rng(2)
    for _ in range(10):
        positive, negative = get_protocol("random").prompts(1, target, target, (1.0, 1.0, 2.0), rng)
        assert positive.positive and target[positive.point]
        assert not negative.positive and not target[negative.point]
        assert 10 <= negative.point[0] <= 39 and 5 <= negative.point[2] <= 19  # within 10 mm of the box


def test_box_protocol_starts_with_the_challenge_box():
    target = cube((30, 30, 30), (3, 4, 5), (10, 20, 12))
    protocol = get_protocol("box+5")
    assert protocol.default_steps == 6 and protocol.challenge and type(get_protocol("cvpr25")) is type(protocol)
    (prompt,) = protocol.prompts(1, np.zeros_like(target), target, (1, 1, 1), np.random.default_rng(0))
    assert prompt.box == ((3, 4, 5), (9, 19, 11)) and prompt.box_slice == (2, 8)  # 30 voxels: no growth
    (prompt,) = protocol.prompts(2, np.zeros_like(target), target, (1, 1, 1), np.random.default_rng(0))
    assert prompt.point is not None and target[prompt.point]


# --- the CVPR 2025 challenge protocol -------------------------------------------------------


class FixedShift:
    """A generator stand-in whose box shift (``integers(0, 6)``) is ``shift``."""

    def __init__(self, shift: int):
        self.shift = shift

    def integers(self, low, high):
        assert (low, high) == (0, 6)
        return self.shift


def test_challenge_box_spans_the_slices_and_the_middle_slice_in_plane():
    target = np.zeros((300, 260, 40), bool)
    target[100:150, 60:90, 10:31] = True  # slices 10-30 across axis 2: middle slice 20
    target[20:250, 30:200, 28:31] = True  # a wide top that the 3D box would include
    (low, high), middle = challenge_box(target, 2, FixedShift(0)).box, 20
    assert (low, high) == ((100, 60, 10), (149, 89, 30))
    prompt = challenge_box(target, 2, FixedShift(5))  # grown by int(5 * n / 256): 5 on i (300), 5 on j (260)
    assert prompt.box == ((95, 55, 10), (154, 94, 30)) and prompt.box_slice == (2, middle)
    across_i = challenge_box(target.transpose(2, 1, 0), 2, FixedShift(0))  # slices i 20-249: middle 135
    assert across_i.box == ((10, 30, 20), (30, 199, 249)) and across_i.box_slice == (2, 135)


def test_challenge_click_is_at_the_centre_of_the_largest_error_component():
    target = cube((40, 40, 40), (5, 5, 5), (30, 30, 30))
    prediction = cube((40, 40, 40), (5, 5, 5), (30, 30, 14))  # misses a 25x25x16 slab: largest error
    prediction |= cube((40, 40, 40), (34, 34, 34), (37, 37, 37))  # small false positive
    point, positive = challenge_click(prediction, target)
    # depth 8 voxels at k 21-22 (of 14-29) for i, j 12-22: ties drawn by RandomState(42) in (k, j, i) order
    ties = [(i, j, k) for k in (21, 22) for j in range(12, 23) for i in range(12, 23)]
    assert positive and point == ties[np.random.RandomState(42).choice(len(ties))]
    overgrown = target | cube((40, 40, 40), (0, 0, 32), (40, 40, 40))  # 8-voxel-thick false positive slab
    point, positive = challenge_click(overgrown, target)
    assert not positive and overgrown[point] and not target[point] and point[2] in (35, 36)
    # the largest component by voxel count wins, not the deepest: a long thin error beats a small cube
    thin = cube((40, 40, 40), (0, 0, 0), (40, 2, 2)) | cube((40, 40, 40), (20, 20, 20), (25, 25, 25))
    point, _ = challenge_click(np.zeros_like(thin), thin)
    assert point[1] < 2 and point[2] < 2
    assert challenge_click(target, target) is None


def test_vessel_like_names_get_no_box():
    vessels = [
        "aorta",
        "inferior_vena_cava",
        "portal_vein_and_splenic_vein",
        "iliac_artery_left",
        "iliac_vena_right",
        "brachiocephalic_trunk",
        "common_carotid_artery_right",
        "pulmonary_vein",
        "Hepatic Vessel",
    ]
    organs = ["liver", "iliopsoas_left", "vertebrae_L1", "heart", "atrial_appendage_left", "kidney_cyst_left"]
    assert all(is_vessel_like(n) for n in vessels) and not any(is_vessel_like(n) for n in organs)
    assert is_vessel_like("liver", [r"\bliver"]) and not is_vessel_like("aorta", [])
    protocol = get_protocol("cvpr25")
    target = cube((20, 20, 20), (5, 5, 5), (15, 15, 15))
    protocol.start("aorta", 2)
    assert protocol.prompts(1, np.zeros_like(target), target, (1, 1, 1), np.random.default_rng(0)) == []
    protocol.start("aorta", 2, no_box=())
    assert protocol.prompts(1, np.zeros_like(target), target, (1, 1, 1), np.random.default_rng(0))[0].box


class Recorder(Segmenter):
    """Stand-in: remembers every prompt; its mask is the structure under the first include prompt
    (box centre or click) cut to its first ``steps seen`` sixths along axis 0 - a curve that grows."""

    name = "recorder"

    def __init__(self, label: np.ndarray, boxes_only: bool = False):
        self.label, self.boxes_only, self.seen = label, boxes_only, []

    def set_image(self, volume):
        pass

    def begin(self, protocol, roi_centre=None):
        self.value, self.steps = None, 0
        self.seen.append([])

    def apply(self, prompts):
        if self.boxes_only and self.value is None and prompts[0].box is None:
            raise PromptError("this model takes a box first")
        self.seen[-1].append(prompts)
        self.steps += 1
        for p in prompts:
            point = p.point if p.box is None else tuple((np.array(p.box[0]) + p.box[1]) // 2)
            if self.value is None and p.positive:
                self.value = self.label[point]
        mask = self.label == self.value
        where = np.flatnonzero(mask.any(axis=(1, 2)))
        mask[where[0] + max(1, len(where) * self.steps // 6) :] = False
        return mask, Timings()


def test_challenge_first_prompt_is_a_box_for_an_organ_and_a_click_for_a_vessel(tmp_path):
    case, _, labels = two_structure_case(tmp_path)
    case = Case(case.name, case.image, case.label, {1: "liver", 2: "inferior_vena_cava"})
    recorder = Recorder(labels.array)
    rows = evaluate_case(case, [recorder], EvaluationSettings(models=["recorder"], protocol="cvpr25"))
    liver, vessel = recorder.seen
    assert liver[0][0].box is not None and liver[0][0].box_slice is not None and len(liver) == 6
    assert vessel[0][0].box is None and vessel[0][0].positive and labels.array[vessel[0][0].point] == 2
    assert len(vessel) == 5  # step 1 skipped
    first = {r["structure"]: r for r in rows if r["step"] == 1}
    assert first["liver"]["prompt"].startswith("box") and first["liver"]["dice"] > 0
    step_one = first["inferior_vena_cava"]
    assert step_one["prompt"].startswith("none (no box") and step_one["dice"] == step_one["nsd"] == 0.0
    assert step_one["total_ms"] == 0.0 and step_one["status"] == "ok"
    assert len([r for r in rows if r["status"] == "ok"]) == 12
    recorder = Recorder(labels.array)
    evaluate_case(case, [recorder], EvaluationSettings(models=["recorder"], protocol="cvpr25", no_box=()))
    assert all(seen[0][0].box is not None for seen in recorder.seen)  # no pattern: every structure a box
    # a box-only model (LiteMedSAM) on a vessel: its prompts fail, scored as an empty prediction, not a crash
    rows = evaluate_case(case, [Recorder(labels.array, boxes_only=True)], EvaluationSettings(["r"], "cvpr25"))
    vessel = [r for r in rows if r["structure"] == "inferior_vena_cava"]
    assert [r["status"] for r in vessel] == ["ok"] * 6 and all(r["dice"] == 0.0 for r in vessel)
    assert "prompt not applied" in vessel[1]["error"]


def test_challenge_auc_is_the_trapezoid_over_the_five_click_steps():
    dsc = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # box, then clicks 1-5
    assert challenge_auc(dsc) == pytest.approx(0.6 / 2 + 0.7 + 0.8 + 0.9 + 1.0 / 2)  # x = 0..4: 3.2
    assert challenge_auc([1.0] * 6) == pytest.approx(4.0)  # the maximum
    assert challenge_auc([0.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)  # the box step is left out
    assert np.isnan(challenge_auc([0.7]))
    assert challenge_nsd(0.2, 0.9) == 0.0 and challenge_nsd(0.21, 0.9) == 0.9


def test_challenge_nsd_is_surface_dice_at_two_mm_with_area_weighting(tmp_path):
    assert CHALLENGE_NSD_TOLERANCE_MM == 2.0 and EvaluationSettings(["m"]).nsd_tolerance == 2.0
    target = cube((30, 30, 30), (5, 5, 5), (15, 15, 15))
    shifted = cube((30, 30, 30), (6, 5, 5), (16, 15, 15))  # one voxel = 2 mm along i
    assert segmentation_metrics(shifted, target, (2.0, 1, 1), surfels=True)["nsd"] == pytest.approx(1.0)
    assert segmentation_metrics(shifted, target, (2.0, 1, 1), 1.9, surfels=True)["nsd"] < 1.0

    class Shifted(Segmenter):
        name = "shifted"

        def set_image(self, volume):
            pass

        def begin(self, protocol, roi_centre=None):
            pass

        def apply(self, prompts):
            return np.roll(labels.array == 1, 1, axis=2), Timings()  # one 3 mm slice off

    case, _, labels = two_structure_case(tmp_path)
    case = Case(case.name, case.image, case.label, {1: "liver"})
    (row, *_) = evaluate_case(case, [Shifted()], EvaluationSettings(["shifted"], "cvpr25", steps=2))
    expected = compute_surface_dice(
        torch.from_numpy(np.roll(labels.array == 1, 1, axis=2))[None, None].float(),
        torch.from_numpy(labels.array == 1)[None, None].float(),
        [2.0],
        include_background=True,
        spacing=[1.5, 1.5, 3.0],
        use_subvoxels=True,
    )
    assert row["nsd"] == pytest.approx(float(expected), abs=1e-6) and 0 < row["nsd"] < 1


def test_challenge_report_has_the_challenge_summary_columns(tmp_path):
    case, _, labels = two_structure_case(tmp_path)
    case = Case(case.name, case.image, case.label, {1: "liver", 2: "aorta"})
    settings = EvaluationSettings(models=["recorder"], protocol="box+5")
    rows = run_cases([case], settings, progress=False, segmenters=[Recorder(labels.array)])
    summary = write_report(rows, tmp_path / "out", settings)["recorder"]
    # by hand: per step, Dice = mean over the two structures; NSD kept when that Dice > 0.2
    at = {s: [r for r in rows if r["step"] == s] for s in range(1, 7)}
    dsc = [np.mean([r["dice"] for r in at[s]]) for s in range(1, 7)]
    nsd = [np.mean([r["nsd"] for r in at[s]]) if d > 0.2 else 0.0 for s, d in zip(range(1, 7), dsc, strict=True)]
    auc = (dsc[1] + dsc[5]) / 2 + dsc[2] + dsc[3] + dsc[4]
    challenge = summary["challenge"]
    assert challenge["cases"] == 1 and challenge["no_box_structures"] == 1
    assert challenge["dsc_auc"] == pytest.approx(auc) and challenge["dsc_final"] == pytest.approx(dsc[5])
    assert challenge["nsd_auc"] == pytest.approx((nsd[1] + nsd[5]) / 2 + sum(nsd[2:5]))
    assert challenge["nsd_final"] == pytest.approx(nsd[5]) and challenge["dsc_per_step"] == pytest.approx(dsc)
    assert dsc[0] < dsc[5] and challenge["running_time_per_step_s"][0] > 0
    with open(tmp_path / "out" / "summary.csv") as handle:
        (line,) = list(csv.DictReader(handle))
    for column in ("challenge_dsc_auc", "challenge_nsd_auc", "challenge_dsc_final", "challenge_nsd_final"):
        assert float(line[column]) == pytest.approx(challenge[column.removeprefix("challenge_")], rel=1e-5)
    assert all(float(line[f"time_{s}_ms"]) > 0 for s in range(1, 7)) and "challenge_running_time_6_s" in line
    with open(tmp_path / "out" / "challenge_metrics.csv") as handle:
        (line,) = list(csv.DictReader(handle))
    assert list(line)[:3] == ["model", "CaseName", "TotalRunningTime"] and line["num_class"] == "2"
    assert float(line["DSC_AUC"]) == pytest.approx(auc, rel=1e-5) and float(line["runtime_upperbound"]) == 180
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## CVPR 2025 challenge metrics" in report and "DSC_AUC" in report


def test_cli_runs_the_cvpr25_protocol_end_to_end(tmp_path):
    two_structure_case(tmp_path)
    manifest = {
        "labels": {"1": "bright", "2": "grey"},
        "cases": [{"name": "toy", "image": "img.nii.gz", "label": "lab.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    out = tmp_path / "report"
    arguments = ["evaluate", "--data", str(tmp_path / "dataset.json"), "--model", "random-walker"]
    code = main([*arguments, "--protocol", "cvpr25", "--no-box", "gr[ae]y", "--clicks", "3", "--out", str(out), "-q"])
    assert code == 0
    with open(out / "results.csv") as handle:
        first = {r["structure"]: r["prompt"] for r in csv.DictReader(handle) if r["step"] == "1"}
    assert first["bright"].startswith("box") and first["grey"].startswith("none (no box")
    document = json.loads((out / "summary.json").read_text())
    assert document["settings"]["no_box"] == ["gr[ae]y"] and "challenge" in document["models"]["random-walker"]
    assert (out / "challenge_metrics.csv").stat().st_size > 0


# --- metrics ------------------------------------------------------------------------------


def test_dice_and_nsd_match_hand_computed_values():
    target = cube((30, 30, 30), (5, 5, 5), (15, 15, 15))  # 1000 voxels
    prediction = cube((30, 30, 30), (5, 5, 10), (15, 15, 20))  # 500 overlap
    values = segmentation_metrics(prediction, target, (1, 1, 1))
    assert values["dice"] == pytest.approx(2 * 500 / 2000)
    shifted = cube((30, 30, 30), (6, 5, 5), (16, 15, 15))  # one voxel (2 mm) along i
    assert segmentation_metrics(shifted, target, (2.0, 1, 1), nsd_tolerance=2.0)["nsd"] == pytest.approx(1.0)
    assert segmentation_metrics(shifted, target, (2.0, 1, 1), nsd_tolerance=1.0)["nsd"] < 1.0
    empty = segmentation_metrics(np.zeros_like(target), target, (1, 1, 1), hd95=True)
    assert empty["dice"] == 0.0 and empty["nsd"] == 0.0
    assert segmentation_metrics(target, target, (1, 1, 1), hd95=True)["hd95"] == 0.0


def test_metrics_on_the_crop_equal_monai_on_the_whole_volume():
    rng = np.random.default_rng(3)
    target = cube((50, 40, 30), (0, 10, 5), (20, 30, 25)) & (rng.random((50, 40, 30)) > 0.1)
    prediction = cube((50, 40, 30), (2, 12, 5), (22, 30, 28))
    spacing = (0.8, 1.1, 2.5)
    full = compute_surface_dice(
        torch.from_numpy(prediction)[None, None].float(),
        torch.from_numpy(target)[None, None].float(),
        [1.5],
        include_background=True,
        spacing=list(spacing),
    )
    assert segmentation_metrics(prediction, target, spacing, nsd_tolerance=1.5)["nsd"] == pytest.approx(
        float(full), abs=1e-6
    )


def test_area_under_curve():
    assert area_under_curve([0.2, 0.4, 0.6]) == pytest.approx(0.4)
    assert area_under_curve([0.7]) == pytest.approx(0.7)


# --- harness with stand-in models -------------------------------------------------------------


class Oracle(Segmenter):
    """Returns the labelled structure under the first include click (or box centre): a perfect model."""

    name = "oracle"

    def __init__(self, label: np.ndarray, perfect: bool = True):
        self.label, self.perfect = label, perfect

    def set_image(self, volume):
        pass

    def begin(self, protocol, roi_centre=None):
        self.value = None

    def apply(self, prompts):
        for p in prompts:
            point = p.point if p.box is None else tuple((np.array(p.box[0]) + p.box[1]) // 2)
            if self.value is None and p.positive:
                self.value = self.label[point]
        mask = (self.label == self.value) if self.perfect else np.zeros(self.label.shape, bool)
        return mask, Timings()


def two_structure_case(tmp_path: Path) -> tuple[Case, Volume, Volume]:
    shape = (48, 40, 24)
    image = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    label[5:20, 5:20, 4:14] = 1
    label[28:44, 10:30, 8:20] = 2
    image[label == 1] = 300
    image[label == 2] = 150
    image += np.random.default_rng(0).normal(0, 10, shape).astype(np.float32)
    volume = Volume(image, (1.5, 1.5, 3.0), (10.0, -20.0, 5.0), rotation(10, 5))
    labels = volume.with_array(label)
    write_volume(volume, tmp_path / "img.nii.gz")
    write_volume(labels, tmp_path / "lab.nii.gz")
    return (
        Case("toy", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", {1: "bright", 2: "grey", 3: "missing"}),
        volume,
        labels,
    )


@pytest.mark.parametrize("protocol", ["center", "fastsam3d", "random", "box+5", "cvpr25"])
def test_perfect_model_scores_one_at_the_first_step_and_empty_model_zero(tmp_path, protocol):
    case, _, labels = two_structure_case(tmp_path)
    settings = EvaluationSettings(models=["oracle"], protocol=protocol, steps=3, requested={"missing"})
    rows = evaluate_case(case, [Oracle(labels.array)], settings)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6 and all(r["dice"] == pytest.approx(1.0) for r in ok)
    assert [r["status"] for r in rows if r["structure"] == "missing"] == ["absent"]
    if protocol in ("center", "fastsam3d"):  # nothing left to correct after a perfect first step
        assert all(r["prompt"].startswith("none") for r in ok if r["step"] > 1)
    rows = evaluate_case(case, [Oracle(labels.array, perfect=False)], settings)
    assert all(r["dice"] == 0.0 for r in rows if r["status"] == "ok")


def test_sam_segmenter_caches_the_embedding_and_keeps_the_label_centred_roi(tmp_path, intensity_model):
    volume, truth = sphere_volume()
    case = Case("sphere", tmp_path / "s.nii.gz", tmp_path / "l.nii.gz", {1: "sphere"})
    write_volume(volume, case.image)
    write_volume(volume.with_array(truth.astype(np.uint8)), case.label)
    segmenter = SamSegmenter(intensity_model, name="intensity")
    for protocol in ("fastsam3d", "center"):
        rows = evaluate_case(case, [segmenter], EvaluationSettings(models=["intensity"], protocol=protocol, steps=3))
        assert [r["status"] for r in rows] == ["ok"] * 3
        assert rows[0]["dice"] > 0.9 and rows[0]["encoder_ms"] > 0
        assert all(r["encoder_ms"] == 0 for r in rows[1:])  # later steps reuse the cached embedding
    assert segmenter.session.encoder_runs == 2  # label-centred ROI, then click-centred ROI


def test_random_walker_segments_a_sphere_from_its_clicks():
    volume, truth = sphere_volume()
    walker = RandomWalkerSegmenter()
    walker.set_image(volume)
    walker.begin(get_protocol("center"))
    centre = tuple(int(v) for v in np.argwhere(truth).mean(0).round())
    mask, timing = walker.apply([Prompt(point=centre)])
    assert segmentation_metrics(mask, truth, volume.spacing)["dice"] > 0.85 and timing.total > 0
    walker.begin(get_protocol("box+5"))
    where = np.argwhere(truth)
    mask, _ = walker.apply([Prompt(box=(tuple(where.min(0)), tuple(where.max(0))))])
    assert segmentation_metrics(mask, truth, volume.spacing)["dice"] > 0.85


# --- datasets and bad input -----------------------------------------------------------------


def test_label_map_on_a_flipped_grid_is_aligned_and_a_foreign_one_rejected():
    rng = np.random.default_rng(4)
    image = Volume(rng.random((6, 5, 4)).astype(np.float32), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), np.eye(3))
    label_array = (rng.random((6, 5, 4)) > 0.5).astype(np.uint8)
    # the same voxels stored with j flipped and axes i/k swapped
    flipped = label_array[:, ::-1, :].transpose(2, 1, 0)
    direction = np.zeros((3, 3))
    direction[:, 0], direction[:, 1], direction[:, 2] = [0, 0, 1], [0, -1, 0], [1, 0, 0]
    origin = image.index_to_world(np.array([[0, 4, 0]]))[0]
    stored = Volume(flipped, (3.0, 2.0, 1.0), origin, direction)
    np.testing.assert_array_equal(align_label(image, stored).array, label_array)
    shifted = Volume(label_array, (1.0, 2.0, 3.0), (0.5, 0.0, 0.0), np.eye(3))
    with pytest.raises(VolumeError, match=r"img\.nii\.gz"):
        align_label(image, shifted, "img.nii.gz", "lab.nii.gz")


def test_nnunet_and_fastsam3d_layouts(tmp_path):
    _, volume, labels = two_structure_case(tmp_path)
    nnunet = tmp_path / "Dataset001_Toy"
    for folder in ("imagesTr", "labelsTr"):
        (nnunet / folder).mkdir(parents=True)
    write_volume(volume, nnunet / "imagesTr" / "toy_001_0000.nii.gz")
    write_volume(labels, nnunet / "labelsTr" / "toy_001.nii.gz")
    (nnunet / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "bright": 1, "grey": 2}, "file_ending": ".nii.gz"})
    )
    (case,) = load_cases(nnunet)
    assert case.name == "toy_001" and case.classes == {1: "bright", 2: "grey"}
    assert load_cases(nnunet / "dataset.json", ["grey"])[0].classes == {2: "grey"}
    layout = tmp_path / "fs3d" / "kidney" / "ct_set"
    for folder in ("imagesTr", "labelsTr"):
        (layout / folder).mkdir(parents=True)
    write_volume(volume, layout / "imagesTr" / "c1.nii.gz")
    write_volume(labels.with_array((labels.array == 1).astype(np.uint8)), layout / "labelsTr" / "c1.nii.gz")
    (case,) = load_cases(tmp_path / "fs3d")
    assert case.name == "kidney/ct_set/c1" and case.classes == {1: "kidney"}


def test_cli_reports_a_crashed_case_and_keeps_going(tmp_path, capsys):
    two_structure_case(tmp_path)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    manifest = {
        "labels": {"1": "bright", "2": "grey"},
        "cases": [
            {"name": "good", "image": "img.nii.gz", "label": "lab.nii.gz"},
            {"name": "bad", "image": "broken.nii.gz", "label": "lab.nii.gz"},
        ],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    out = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "dataset.json"),
            "--model",
            "random-walker",
            "--clicks",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 1 and "failed" in capsys.readouterr().err
    with open(out / "results.csv") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert [r["status"] for r in rows if r["case"] == "bad"] == ["failed"]
    good = [r for r in rows if r["case"] == "good"]
    assert len(good) == 4 and all(float(r["dice"]) > 0.5 for r in good if r["step"] == "2")
    for name in ("summary.json", "report.md", "dice_per_click.png", "time_per_click.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["models"]["random-walker"]["failed"] == 1
        and len(summary["models"]["random-walker"]["dice_per_step"]) == 2
    )
    assert main(["evaluate", "--data", str(tmp_path / "nowhere"), "--model", "default", "--out", str(out)]) == 2


@pytest.mark.slow
def test_workers_and_torchrun_give_the_same_rows_as_one_process(tmp_path):
    _, volume, labels = two_structure_case(tmp_path)
    cases = []
    for index in range(3):
        write_volume(volume.with_array(np.roll(volume.array, 3 * index, axis=0)), tmp_path / f"i{index}.nii.gz")
        write_volume(labels.with_array(np.roll(labels.array, 3 * index, axis=0)), tmp_path / f"l{index}.nii.gz")
        cases.append({"name": f"c{index}", "image": f"i{index}.nii.gz", "label": f"l{index}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"1": "bright"}, "cases": cases}))
    common = dict(models=["random-walker"], protocol="random", steps=2, progress=False)
    evaluate(tmp_path / "dataset.json", out=tmp_path / "one", **common)
    evaluate(tmp_path / "dataset.json", out=tmp_path / "two", workers=2, **common)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        "-m",
        "fastsam3d.cli",
        "evaluate",
        "--data",
        str(tmp_path / "dataset.json"),
        "--model",
        "random-walker",
        "--protocol",
        "random",
        "--clicks",
        "2",
        "--out",
        str(tmp_path / "ddp"),
        "--quiet",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ddp" / "shards").iterdir()) == ["results.rank0.csv", "results.rank1.csv"]

    def table(folder):
        with open(tmp_path / folder / "results.csv") as handle:
            return [(r["case"], r["step"], r["prompt"], r["dice"]) for r in csv.DictReader(handle)]

    assert table("one") == table("two") == table("ddp")
    assert len(table("one")) == 6


# --- real development data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_data() -> Path:
    manifest = dev_manifest()
    if manifest is None:
        pytest.skip("development data not fetched: run `fastsam3d data fetch` (scripts/install.sh does)")
    return manifest


def test_dev_data_label_maps_sit_on_their_images(dev_data):
    cases = {c.name: c for c in load_cases(dev_data, ["liver", "spleen"])}
    assert set(cases) == {"ct", "mr", "ct_dicom"}
    image, label = cases["ct_dicom"].load()  # its label map is stored with j flipped
    assert image.shape == label.shape == (512, 512, 20)
    liver = image.array[label.array == 5]
    assert 40 < liver.mean() < 140 and liver.std() < 40  # liver parenchyma in HU, not a random region


@pytest.mark.slow
def test_random_walker_improves_with_clicks_on_the_development_data(dev_data, tmp_path):
    summary, failed = evaluate(
        dev_data, ["random-walker"], tmp_path, protocol="center", steps=3, classes=["liver", "spleen"], progress=False
    )
    assert failed == 0 and summary["random-walker"]["structures"] == 6  # liver + spleen in CT, MR, DICOM CT
    curve = summary["random-walker"]["dice_per_step"]
    assert curve[0] < curve[1] < curve[2] and curve[2] > 0.45
