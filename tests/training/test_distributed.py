"""``fastsam3d train`` under ``torchrun --nproc_per_node 2`` (DDP over gloo, on the CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastsam3d.registry import load_model


@pytest.mark.slow
def test_two_process_torchrun_training_keeps_ranks_identical(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fastsam3d.cli",
        "train",
        "--config",
        "tiny-student",
        "--steps",
        "3",
        "--rounds",
        "1",
        "--workers",
        "0",
        "--loss-size",
        "32",
        "--epoch-steps",
        "2",
        "--out",
        str(tmp_path / "run"),
    ]
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        env=environment,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "weights identical on all 2 ranks" in output
    assert output.count("wrote ") == 1  # rank 0 alone exports
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4  # header + one row per step, written once
    assert load_model(str(tmp_path / "run" / "model.safetensors")).config.name == "tiny-student"
