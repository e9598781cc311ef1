"""Optional dependencies: one clear line when a command needs an extra that is not installed.

require_extra("server", "fastapi", "uvicorn")   # before importing them
"""

from __future__ import annotations

import importlib.util

from .errors import FastSAM3DError

_PIP_NAMES = {"multipart": "python-multipart", "skimage": "scikit-image"}


class MissingExtra(FastSAM3DError):
    """A feature whose optional dependencies are not installed."""


def require_extra(extra: str, *modules: str, feature: str = "") -> None:
    """Raise :class:`MissingExtra` naming ``pip install 'fastsam3d[EXTRA]'`` when a module is missing.

    ``feature`` (or the extra's name) says what needs it; a third positional string is taken as the feature
    when it is not an importable-looking module name (``require_extra("weights", "gdown", "downloading x")``).
    """
    names = list(modules)
    if names and " " in names[-1]:
        feature = feature or names.pop()
    missing = [_PIP_NAMES.get(name, name) for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(
            f"{feature or 'this command'} needs {', '.join(missing)}: pip install 'fastsam3d[{extra}]' "
            f"(or 'fastsam3d[all]')"
        )
