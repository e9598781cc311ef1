"""The interactive engine: one volume, several objects, prompts, undo/redo, cached image features.

Session        3D models (session3d.py): ROIs around the prompts, zoom, growth into neighbours
SliceSession   2D models slice by slice (session2d.py): propagation and corrections
Engine         the interface both implement (interface.py); open_session picks one by model
base.py        what both share: objects, undo histories, the label map, answers, point frames
predictor.py   per-ROI cached embeddings and the prompt path; roi.py the ROI grid; labelmap.py boxes
strokes.py     scribbles and lassos; persistence.py states as data; cache.py one feature budget
"""

from .interface import Engine, open_session
from .session2d import SliceSession
from .session3d import Session

__all__ = ["Engine", "Session", "SliceSession", "open_session"]
