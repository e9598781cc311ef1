"""Shared fixtures and hooks: the reference fixtures beside the repository, offline weights, a
virtual display. Plain helpers (test volumes, stand-in models) live in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .helpers import IntensityModel

REFERENCE_DIR = Path(
    os.environ.get("FASTSAM3D_REFERENCE_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "reference"
)


def pytest_configure(config):
    """Start a virtual X display for the napari (Qt + OpenGL) tests when there is no display."""
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return
    display = f":{90 + os.getpid() % 500}"
    process = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_end_with_parent,  # noqa: PLW1509 - no threads exist yet
    )
    time.sleep(1.0)
    if process.poll() is None:
        os.environ["DISPLAY"] = display
        os.environ["QT_QPA_PLATFORM"] = "xcb"


def pytest_sessionfinish(session, exitstatus):
    session.config._fastsam3d_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """After a run that loaded Qt (napari), leave without C++ static destructors: Qt/OpenGL
    teardown at interpreter exit crashed now and then (status 139 with every test passed, no Python
    frame on the stack). The summary is printed and the status kept."""
    if "qtpy" in sys.modules and hasattr(config, "_fastsam3d_status"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config._fastsam3d_status)


def _end_with_parent() -> None:
    """In the child: the kernel ends Xvfb when pytest's process exits (however it exits, see
    ``pytest_unconfigure``)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "ref_small.pt").is_file():
        pytest.skip(
            f"reference fixtures (ref_small.pt, made with the public FastSAM3D code) not found at {REFERENCE_DIR}: "
            "they are not in the repository; put the project's shared/reference folder beside the clone "
            "(../shared/reference) or set FASTSAM3D_REFERENCE_DIR"
        )
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch, tmp_path_factory):
    """Tests never reach the real hub: official model names resolve offline from an empty cache
    (tests/test_hub.py serves them from a loopback stand-in); derived files (ONNX exports) are
    cached in the run's temporary folder; ``auto`` follows its rule without measuring."""
    root = tmp_path_factory.getbasetemp() / "weights-cache"
    monkeypatch.setenv("FASTSAM3D_WEIGHTS", str(root / "fastsam3d"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FASTSAM3D_CACHE", str(root / "cache"))  # ONNX exports: one per test run, not in ~/.cache
    monkeypatch.setenv("FASTSAM3D_AUTO_PRECISION", "rule")  # auto by its rule: tests/test_tuning.py measures


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def intensity_model() -> IntensityModel:
    return IntensityModel()
