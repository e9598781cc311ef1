"""reference: the model reproduces the reference fixtures (../shared/reference)."""

import pytest
import torch

from fastsam3d.reference import check_fixture, compare, config_from_reference, run_model
from fastsam3d.registry import build_model


@pytest.mark.parametrize("fixture", ["ref_small.pt", "ref_small_student.pt"])
def test_reference_fixture_reproduced(reference_dir, fixture):
    report = check_fixture(reference_dir / fixture)
    for variant, errors in report.items():
        assert len(errors) >= 13, f"{variant}: too few outputs compared ({sorted(errors)})"
        worst = max(errors.items(), key=lambda item: item[1])
        assert worst[1] <= 1e-4, f"{variant}: {worst[0]} differs by {worst[1]:.2e}"


def test_block_style_switch_selects_the_matching_residual_form(reference_dir):
    """docs/reference.md fact 2: the teacher fixture's weights run through both residual forms. Each
    block_style reproduces its own stored outputs and is far from the other form's (max |d| ~ 2.8),
    so a switch that is ignored, or swapped, fails here."""
    fixture = torch.load(reference_dir / "ref_small.pt", map_location="cpu", weights_only=True)
    expected = {"prenorm": fixture["outputs"], "fastsam3d": fixture["fastsam3d_block_variant"]}
    ours = {}
    for style in expected:
        model = build_model(config_from_reference(fixture["config"], style))
        model.load_state_dict(fixture["state_dict"], strict=True)
        ours[style] = run_model(model.eval(), fixture["inputs"], cases=("A",))
    for style, other in [("prenorm", "fastsam3d"), ("fastsam3d", "prenorm")]:
        right = compare(ours[style], expected[style])
        wrong = compare(ours[other], expected[style])
        assert {"block_outputs.0", "block_outputs.3", "A.low_res_masks"} <= set(right), sorted(right)
        worst = max(right, key=right.get)
        assert right[worst] <= 1e-4, f"{style}: {worst} differs by {right[worst]:.2e}"
        for name in ("block_outputs.0", "block_outputs.3", "A.low_res_masks"):
            assert wrong[name] > 0.1, f"{other} reproduces {style}'s {name} (max |d| {wrong[name]:.2e})"
