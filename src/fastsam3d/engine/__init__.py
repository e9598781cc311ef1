"""The interactive engine: one volume, several objects, prompts, undo/redo, cached image features.

Session        3D models (session3d.py): ROIs around the prompts, zoom, growth into neighbours
SliceSession   2D models slice by slice (session2d.py): propagation and corrections
Engine         the interface both implement (interface.py); open_session picks one by model,
               warm_up clicks once so that a user's first click is not a cold one
base.py        what both share: objects, undo histories, the label map, answers, point frames
predictor.py   per-ROI cached embeddings and the prompt path; roi.py the ROI grid; labelmap.py boxes
strokes.py     scribbles and lassos; persistence.py states as data; cache.py one feature budget
"""

from ..lazy import lazy_attributes

# Loaded on first use: the sessions import torch, and light modules (prompt files, answers,
# strokes) must stay importable without it (`fastsam3d models` answers at once).
_LAZY = {
    "Engine": "interface",
    "open_session": "interface",
    "warm_up": "interface",
    "Session": "session3d",
    "SliceSession": "session2d",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["Engine", "Session", "SliceSession", "open_session", "warm_up"]
