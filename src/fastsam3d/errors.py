"""Exceptions that carry a message meant for the user.

Everything the package raises on bad input derives from :class:`FastSAM3DError`, so a
command-line or server front end can print ``str(error)`` as one line and stop.
"""


class FastSAM3DError(Exception):
    """Base class: the message alone tells the user what went wrong and what to do."""


class VolumeError(FastSAM3DError):
    """An image or label file that cannot be read, written or used (corrupt, 2D, NaN, ...)."""


class PromptError(FastSAM3DError):
    """A click, box or mask prompt that cannot be applied (outside the volume, no extent, ...)."""


class CheckpointError(FastSAM3DError):
    """A checkpoint that does not exist, cannot be read, or belongs to another model."""
