"""fastsam3d check-reference: exit status and output."""

from fastsam3d.cli import main


def test_check_reference_exit_codes(reference_dir, capsys):
    assert main(["check-reference", str(reference_dir / "ref_small.pt"), "--tolerance", "1e-4"]) == 0
    assert "max abs error" in capsys.readouterr().out
    assert main(["check-reference", str(reference_dir / "ref_small.pt"), "--tolerance", "1e-12"]) == 1
    assert main(["check-reference", str(reference_dir / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
