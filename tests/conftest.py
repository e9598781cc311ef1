"""Shared fixtures: paths to the reference fixtures beside the repository, tiny models."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsam3d.io import Volume
from fastsam3d.registry2d import Model2DConfig

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def pytest_configure(config):
    """Start a virtual X display for the napari (Qt + OpenGL) tests when there is no display."""
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return
    display = f":{90 + os.getpid() % 500}"
    process = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_end_with_parent)  # noqa: PLW1509 - no threads exist yet
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


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    """A direction matrix rotated about z then x: makes test volumes oblique."""
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "ref_small.pt").is_file():
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR} (they ship in ../shared/reference)")
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch, tmp_path_factory):
    """Tests never reach the real hub: official model names resolve offline from an empty cache
    (tests/test_hub.py serves them from a loopback stand-in)."""
    root = tmp_path_factory.getbasetemp() / "weights-cache"
    monkeypatch.setenv("FASTSAM3D_WEIGHTS", str(root / "fastsam3d"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


class IntensityModel(torch.nn.Module):
    """A stand-in 3D SAM whose 'segmentation' is the bright region of the crop, minus a ball of
    radius 12 ROI voxels around each exclude click. Lets tests check geometry exactly."""

    img_size = 128
    roi_spacing = 1.5
    roi_padding = "zero"
    low_res_size = (32, 32, 32)
    supports_boxes = False

    def encode(self, crop: torch.Tensor) -> torch.Tensor:
        return crop

    def decode(self, embedding, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=False):
        low = torch.nn.functional.avg_pool3d(embedding, 4)
        logits = (low - (low.amax() + low.amin()) / 2) * 10.0  # threshold halfway: bright = inside
        batch = point_coords.shape[0]
        logits = logits.expand(batch, -1, -1, -1, -1).clone()
        centres = (torch.arange(32, dtype=torch.float32) + 0.5) * 4 - 0.5
        grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), -1)
        for b in range(batch):
            for coord, label in zip(point_coords[b], point_labels[b]):
                if label == 0:
                    logits[b, 0][(grid - coord).norm(dim=-1) < 12] = -10.0
        return logits, torch.ones(batch, 1)


@pytest.fixture
def intensity_model() -> IntensityModel:
    return IntensityModel()


@contextlib.contextmanager
def running_server(app):
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class BrightInBox(torch.nn.Module):
    """Stand-in 2D SAM: the bright (> 0.5) pixels of the slice inside the box prompt."""

    img_size = 64
    low_res_size = (64, 64)
    config = Model2DConfig("stub", "tiny-vit", 64, 1.0, (0, 0, 0), (1, 1, 1), "test stand-in")

    def encode(self, images):
        return images

    def decode(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=False):
        image = embedding[0, 0]
        inside = torch.zeros_like(image, dtype=torch.bool)
        x0, y0, x1, y1 = boxes[0].tolist()
        rows = torch.arange(64)[:, None].float()
        cols = torch.arange(64)[None, :].float()
        inside = (rows >= y0 - 0.5) & (rows <= y1 + 0.5) & (cols >= x0 - 0.5) & (cols <= x1 + 0.5)
        logits = torch.where(inside & (image > 0.5), 10.0, -10.0)
        return logits[None, None], torch.ones(1, 1)


def ellipsoid_volume(direction: np.ndarray | None = None) -> tuple[Volume, np.ndarray]:
    """A bright ellipsoid (slices 5-15 across axis 2) on an anisotropic grid."""
    direction = np.eye(3) if direction is None else direction
    shape = (40, 30, 30)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    inside = (((grid - [20, 15, 10]) / [12, 9, 5]) ** 2).sum(-1) <= 1  # k from 5 to 15
    array = np.where(inside, 300.0, 100.0).astype(np.float32)
    return Volume(array, (0.8, 1.2, 3.0), (0.0, 0.0, 0.0), direction), inside
