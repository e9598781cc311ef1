"""The models a server offers: its own (first), the shipped ones and the official ones, each
described as ``/api/models`` lists it."""

from __future__ import annotations

import logging
import threading

import torch

from ..engine.interface import warm_up
from ..errors import FastSAM3DError
from ..registry import MODEL_CONFIGS, load_model, spatial_dims
from .settings import ServerSettings

log = logging.getLogger(__name__)


class ServerModels:
    """The models this server has in memory (each loaded once, shared by all sessions) and those it offers."""

    def __init__(self, settings: ServerSettings, device: torch.device, model: torch.nn.Module | None = None) -> None:
        self.settings = settings
        self.device = device
        if model is not None:
            self.loaded: dict[str, torch.nn.Module] = {settings.model: model}
        else:  # loaded on first use, kept
            self.loaded = {settings.model: self._load(settings.model, settings.checkpoint)}
        self._lock = threading.Lock()

    def offered(self) -> list[dict]:
        """Every model a session can be opened with (:func:`offered_models`)."""
        return offered_models(self.settings.model, self.loaded)

    def available(self) -> list[str]:
        """Names of the models a session can be opened with now."""
        return [row["name"] for row in self.offered() if row["available"]]

    def get(self, name: str | None) -> torch.nn.Module:
        """A model by name (one of :meth:`available`), loaded once and shared by all sessions."""
        name = name or self.settings.model
        if name not in self.loaded:
            rows = {row["name"]: row for row in self.offered()}
            if name not in rows:
                raise FastSAM3DError(
                    f"model {name!r} is not offered by this server; choose from {', '.join(self.available())}"
                )
            if not rows[name]["available"]:
                raise FastSAM3DError(
                    f"model {name!r}: its weights are not on this server; there run `fastsam3d weights fetch {name}`"
                )
        with self._lock:
            if name not in self.loaded:
                self.loaded[name] = self._load(name, None)
        return self.loaded[name]

    def _load(self, name: str, checkpoint: str | None) -> torch.nn.Module:
        precision = self.settings.precision if spatial_dims(name) == 3 else "auto"  # --precision is for 3D encoders
        model = load_model(name, checkpoint, device=self.device, precision=precision)
        try:  # its first user's first click is then not a cold one
            seconds = warm_up(model, self.device)
            log.info(f"model {name} loaded ({getattr(model, 'precision', 'fp32')}) and warmed up ({seconds:.1f} s)")
        except (FastSAM3DError, RuntimeError, ValueError) as error:  # a model that cannot: its first click is cold
            log.warning(f"model {name} loaded; warming it up failed ({type(error).__name__}: {error})")
        return model


def offered_models(default: str, loaded: dict[str, torch.nn.Module]) -> list[dict]:
    """Every model a session can be opened with: the server's own ``default`` (first), the shipped
    ones and the official ones (3D and 2D), each with ``name, dims, prompts, available, description``;
    ``available`` is false for official weights not downloaded on this server yet (``loaded``: the
    models in memory, always available)."""
    from ..hub import official_models
    from ..registry import weights_status

    rows = {default: describe_model(default, True, loaded)}
    for row in official_models():
        if row["runnable"]:
            rows.setdefault(row["name"], describe_model(row["name"], row["cached"], loaded, row["description"]))
    for name, config in MODEL_CONFIGS.items():
        if weights_status(name) == "shipped":
            rows.setdefault(name, describe_model(name, True, loaded, config.description))
    for name in loaded:
        rows[name] = {**rows.get(name, describe_model(name, True, loaded)), "available": True}
    return list(rows.values())


def describe_model(name: str, available: bool, loaded: dict[str, torch.nn.Module], description: str = "") -> dict:
    config = getattr(loaded.get(name), "config", None) or MODEL_CONFIGS.get(name)
    if config is None or config.spatial_dims == 3:
        return {
            "name": name,
            "dims": 3,
            "prompts": ["point", "box"],
            "available": available,
            "description": description or getattr(config, "description", ""),
        }
    return {
        "name": name,
        "dims": 2,
        "prompts": ["point", "box"] if config.point_prompts else ["box"],
        "clicks": "points" if config.point_prompts else "box edits",
        "available": available,
        "description": description or config.description,
    }
