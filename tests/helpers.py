"""Helpers shared by test modules (import them from here; conftest.py holds only fixtures and hooks)."""

from __future__ import annotations

import torch


def randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Overwrite every parameter with seeded N(0, 0.3²) values, so untrained layers do something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
