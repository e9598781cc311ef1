"""A real server process with the stand-in model, for tests that kill it:
``python -m tests.server.stub_server PORT SETTINGS_JSON`` (ServerSettings fields; paths as strings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn

from fastsam3d.server.app import create_app
from fastsam3d.server.settings import ServerSettings

from ..helpers import IntensityModel

PATHS = ("data_dir", "state_dir", "temp_dir")

if __name__ == "__main__":
    port, fields = int(sys.argv[1]), json.loads(sys.argv[2])
    settings = ServerSettings(**{key: Path(value) if key in PATHS else value for key, value in fields.items()})
    uvicorn.run(create_app(settings, model=IntensityModel()), host="127.0.0.1", port=port, log_level="warning")
