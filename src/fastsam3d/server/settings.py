"""What ``fastsam3d serve`` was started with, and the check that it stays on this machine without a key."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FastSAM3DError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServerSettings:
    """What ``fastsam3d serve`` was started with."""

    data_dir: Path | None = None
    model: str = "default"
    checkpoint: str | None = None
    device: str | None = None
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header values accepted ("*": any)
    max_sessions: int = 64  # open at once; with a state folder the least recently used idle one makes room
    parallel_jobs: int = field(default_factory=lambda: max(4, os.cpu_count() or 1))  # session jobs run at once
    cache_mb: float = 2048.0  # cached image features of all sessions together (LRU: idle sessions' go first)
    precision: str = "auto"  # image encoder arithmetic (fastsam3d.modeling.precision): auto, fp32, bf16, int8
    max_upload_mb: float = 2048.0  # volume and mask uploads
    max_unpacked_mb: float = 2048.0  # decoded image bytes, and the unpacked size of a zip
    max_voxels: int = 2**28
    max_zip_entries: int = 5000
    max_points: int = 100  # per click request
    max_stroke_pixels: int = 1 << 20  # per drawn scribble / lasso crop (a 1024 x 1024 slice)
    request_seconds: float = 120.0  # one request's wait for its session plus its work
    idle_seconds: float = 1800.0
    temp_dir: Path | None = None  # default: <system temp>/fastsam3d-server
    state_dir: Path | None = None  # saved sessions (see .state); None: sessions end with the server
    keep_days: float = 14.0  # saved sessions unchanged this long are deleted
    sync_saves: bool = False  # answer a change only once its record is on disk (else just after)
    lease_seconds: float = 30.0  # a saved session's lease (see .lease): how soon another server may take it over


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: str | None, insecure: bool = False) -> None:
    """Refuse to expose the server beyond this machine without an API key (unless ``insecure``)."""
    if not is_loopback(host) and not api_key and not insecure:
        raise FastSAM3DError(
            f"--host {host} exposes the server beyond this machine: give --api-key "
            "(or $FASTSAM3D_API_KEY), or --insecure to serve without one"
        )
