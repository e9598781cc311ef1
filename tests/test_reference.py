"""reference: the model reproduces the reference fixtures (../shared/reference)."""

import pytest

from fastsam3d.reference import check_fixture


@pytest.mark.parametrize("fixture", ["ref_small.pt", "ref_small_student.pt"])
def test_reference_fixture_reproduced(reference_dir, fixture):
    report = check_fixture(reference_dir / fixture)
    for variant, errors in report.items():
        assert len(errors) >= 13, f"{variant}: too few outputs compared ({sorted(errors)})"
        worst = max(errors.items(), key=lambda item: item[1])
        assert worst[1] <= 1e-4, f"{variant}: {worst[0]} differs by {worst[1]:.2e}"


def test_block_styles_differ_on_teacher_fixture(reference_dir):
    """The two residual forms give different outputs on the same weights (REFERENCE fact 2)."""
    report = check_fixture(reference_dir / "ref_small.pt")
    assert set(report) == {"reference", "fastsam3d_block_variant"}
