"""Helpers shared by test modules (import them from here; conftest.py holds only fixtures and hooks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import torch

from fastsam3d.io import Volume
from fastsam3d.modeling import Sam2DConfig


def randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Overwrite every parameter with seeded N(0, 0.3²) values, so untrained layers do something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    """A direction matrix rotated about z then x: makes test volumes oblique."""
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def sphere_volume(centre_mm=(10.0, -25.0, 40.0), radius_mm=18.0, shape=(120, 100, 44), spacing=(0.9, 1.2, 3.0)):
    """An oblique, anisotropic volume with a bright sphere at a known world position."""
    direction = rotation(25, 12)
    origin = np.array([-40.0, -90.0, -20.0])
    probe = Volume(np.zeros(shape, np.float32), np.array(spacing), origin, direction)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    distance = np.linalg.norm(probe.index_to_world(grid) - np.array(centre_mm), axis=-1)
    rng = np.random.default_rng(0)
    array = np.where(distance < radius_mm, 200.0, 40.0) + rng.normal(0, 5, shape)
    return probe.with_array(array.astype(np.float32)), distance < radius_mm


def ellipsoid_volume(direction: np.ndarray | None = None) -> tuple[Volume, np.ndarray]:
    """A bright ellipsoid (slices 5-15 across axis 2) on an anisotropic grid."""
    direction = np.eye(3) if direction is None else direction
    shape = (40, 30, 30)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    inside = (((grid - [20, 15, 10]) / [12, 9, 5]) ** 2).sum(-1) <= 1  # k from 5 to 15
    array = np.where(inside, 300.0, 100.0).astype(np.float32)
    return Volume(array, (0.8, 1.2, 3.0), (0.0, 0.0, 0.0), direction), inside


class IntensityModel(torch.nn.Module):
    """A stand-in 3D SAM whose 'segmentation' is the bright region of the crop, minus a ball of
    radius 12 ROI voxels around each exclude click. Lets tests check geometry exactly."""

    img_size = 128
    roi_spacing = 1.5
    roi_spacings = (1.5,)
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
        centres = (torch.arange(32, dtype=torch.float32, device=embedding.device) + 0.5) * 4 - 0.5
        grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), -1)
        for b in range(batch):
            for coord, label in zip(point_coords[b], point_labels[b], strict=True):
                if label == 0:
                    logits[b, 0][(grid - coord).norm(dim=-1) < 12] = -10.0
        return logits, torch.ones(batch, 1, device=embedding.device)


class BrightInBox(torch.nn.Module):
    """Stand-in 2D SAM: the bright (> 0.5) pixels of the slice inside the box prompt."""

    spatial_dims = 2
    img_size = 64
    low_res_size = (64, 64)
    config = Sam2DConfig("stub", "tiny-vit", 64, 1.0, (0, 0, 0), (1, 1, 1), "test stand-in")

    def encode(self, images):
        return images

    def decode(
        self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=False
    ):
        image = embedding[0, 0]
        inside = torch.zeros_like(image, dtype=torch.bool)
        x0, y0, x1, y1 = boxes[0].tolist()
        rows = torch.arange(64)[:, None].float()
        cols = torch.arange(64)[None, :].float()
        inside = (rows >= y0 - 0.5) & (rows <= y1 + 0.5) & (cols >= x0 - 0.5) & (cols <= x1 + 0.5)
        logits = torch.where(inside & (image > 0.5), 10.0, -10.0)
        return logits[None, None], torch.ones(1, 1)


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


def hand_made_errors() -> tuple[np.ndarray, np.ndarray]:
    """A 10-voxel cube target, a prediction covering a thin slab of it plus a small false positive."""
    target = np.zeros((20, 20, 20), bool)
    target[2:12, 2:12, 2:12] = True  # a 10-voxel cube
    prediction = np.zeros_like(target)
    prediction[2:12, 2:12, 2:5] = True  # covers a thin slab of it
    prediction[14:18, 14:18, 14:18] = True  # and a small false positive
    return prediction, target
