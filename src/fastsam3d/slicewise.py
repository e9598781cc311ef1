"""2D SAMs on volumes: segment one slice from a box or clicks, then propagate slice by slice.

    session = SliceSession("litemedsam")
    session.set_image("ct.nii.gz")
    session.set_box((40, 50, 10), (90, 110, 25))   # 3D box: middle slice, in-plane extent, slice range
    session.add_click((70, 80, 18), positive=False)  # correct slice 18, re-propagate from there

Slices are cut across ``axis`` (default: the input axis closest to superior-inferior, i.e. axial
slices) and shown to the model as a radiologist sees them (rows towards posterior/inferior,
columns towards patient left) with square physical pixels: the slice is resized so its longer
physical side is the model's input size, padded, and the low-res logits are mapped back to the
slice grid by the same two bilinear (align_corners=False) maps SAM uses, composed into one
matrix per axis. Each next slice is prompted with the box of the previous slice's mask (plus
``box_margin`` pixels); propagation stops where the mask vanishes or at the box's slice range.
Slice embeddings are cached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .errors import PromptError
from .evaluation.clicks import dice
from .io import Volume, check_finite, ras_to_lps, read_volume, write_volume
from .preprocess import canonical_axes, upsampling_weights
from .modeling.sam2d import Sam2D
from .registry2d import Model2DConfig, load_sam2d

CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400), as MedSAM prepares CT
UNCHANGED_DICE = 0.98  # a corrective click's propagation stops at a slice that changes less than this


@dataclass
class SliceTimings:
    encoder: float = 0.0
    decoder: float = 0.0
    slices: int = 0

    @property
    def total(self) -> float:
        return self.encoder + self.decoder


@dataclass(frozen=True)
class SliceGeometry:
    """How a slice of shape (H, W) maps onto the model input (h, w) inside an S x S square."""

    height: int
    width: int
    resized: tuple[int, int]
    size: int
    low_res: int

    def to_model(self) -> tuple[np.ndarray, np.ndarray]:
        """(h, H) and (w, W) resize matrices (bilinear, align_corners=False)."""
        return upsampling_weights(self.height, self.resized[0]), upsampling_weights(self.width, self.resized[1])

    def from_low_res(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, L) and (W, L): low-res logits -> S x S -> crop to (h, w) -> (H, W), as one matrix per axis."""
        up = upsampling_weights(self.low_res, self.size)
        rows = upsampling_weights(self.resized[0], self.height) @ up[: self.resized[0]]
        cols = upsampling_weights(self.resized[1], self.width) @ up[: self.resized[1]]
        return rows, cols

    def point_to_model(self, row: float, col: float) -> tuple[float, float]:
        """Slice pixel (row, col) -> model input (x, y), pixel centres aligned."""
        y = (row + 0.5) * self.resized[0] / self.height - 0.5
        x = (col + 0.5) * self.resized[1] / self.width - 0.5
        return x, y


class SliceSession:
    """Interactive 3D segmentation of one object with a 2D SAM (see module docstring)."""

    def __init__(self, model: str | Sam2D = "litemedsam", checkpoint: str | Path | None = None, device: str | None = None,
                 axis: int | None = None, box_margin: int = 3, min_pixels: int = 5, config: Model2DConfig | None = None,
                 click_box_mm: float = 30.0) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, str):
            model, config = load_sam2d(model, checkpoint, self.device)
        elif config is None:
            raise ValueError("a model instance needs its Model2DConfig")
        self.model, self.config = model.to(self.device).eval(), config
        self.requested_axis = axis
        self.box_margin = box_margin
        self.click_box_mm = click_box_mm
        self.min_pixels = min_pixels
        self.volume: Volume | None = None
        self.timings = SliceTimings()
        self.encoder_runs = 0
        self.decoder_runs = 0

    # --- image --------------------------------------------------------------------------

    def set_image(self, image: Volume | str | Path) -> Volume:
        volume = image if isinstance(image, Volume) else read_volume(image)
        check_finite(volume)
        self.volume = volume
        axes, signs = canonical_axes(volume.direction)
        self.axis = self.requested_axis if self.requested_axis is not None else axes[2]
        if self.axis not in (0, 1, 2):
            raise PromptError(f"slice axis must be 0, 1 or 2, got {self.axis}")
        ras = axes.index(self.axis)
        # in-plane display axes: (input axis, sign) for rows and columns
        rows_ras, cols_ras = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[ras]
        self._rows = (axes[rows_ras], -signs[rows_ras])
        self._cols = (axes[cols_ras], -signs[cols_ras])
        self._scaled = _scale_intensities(volume.array)
        self._embeddings: dict[int, torch.Tensor] = {}
        self._mask = np.zeros(volume.shape, dtype=bool)
        self._history: list[np.ndarray] = [self._mask.copy()]
        self._position = 0
        self._clicks: dict[int, list[tuple[float, float, bool]]] = {}
        self._root: int | None = None  # the first prompted slice: propagation flows away from it
        spacing_rows, spacing_cols = volume.spacing[self._rows[0]], volume.spacing[self._cols[0]]
        height, width = volume.shape[self._rows[0]], volume.shape[self._cols[0]]
        scale = self.config.img_size / max(height * spacing_rows, width * spacing_cols)
        resized = (max(1, round(height * spacing_rows * scale)), max(1, round(width * spacing_cols * scale)))
        self.geometry = SliceGeometry(height, width, resized, self.config.img_size, self.model.low_res_size[0])
        matrices = self.geometry.to_model()
        self._to_model = [torch.from_numpy(m).to(self.device) for m in matrices]
        self._from_low_res = [torch.from_numpy(m).to(self.device) for m in self.geometry.from_low_res()]
        return volume

    # --- prompts ------------------------------------------------------------------------

    def set_box(self, corner_a, corner_b) -> None:
        """A 3D box (two corner voxels, inclusive): its middle slice is segmented from the box's
        in-plane extent, then propagated within the box's slice range."""
        volume = self._require_image()
        a, b = (np.asarray(c, dtype=float) for c in (corner_a, corner_b))
        if a.shape != (3,) or b.shape != (3,) or np.any(np.minimum(a, b) < 0) or np.any(np.maximum(a, b) > np.array(volume.shape) - 1):
            raise PromptError(f"box {a.tolist()}-{b.tolist()} is not inside the volume of shape {volume.shape}")
        low, high = np.minimum(a, b).round().astype(int), np.maximum(a, b).round().astype(int)
        start = (low[self.axis] + high[self.axis]) // 2
        corners = [self._in_plane(low), self._in_plane(high)]
        rows = sorted(c[0] for c in corners)
        cols = sorted(c[1] for c in corners)
        self.timings = SliceTimings()
        self._root = int(start)
        mask = np.zeros_like(self._mask)
        first = self._segment(start, box=(rows[0], cols[0], rows[1], cols[1]))
        if first is None:
            raise PromptError("the model found nothing inside the box on its middle slice")
        self._write(mask, start, first)
        self._propagate(mask, start, first, (int(low[self.axis]), int(high[self.axis])))
        self._push(mask)

    def add_click(self, point, positive: bool = True, *, world: bool = False, ras: bool = False) -> None:
        """Include/exclude click at a voxel: its slice is re-segmented, then the change is propagated
        outwards until the slices agree with the current mask again.

        Models trained with clicks (SAM) get the slice's clicks plus the box of the current mask.
        Box-only models (LiteMedSAM, MedSAM) get the click as a box edit: an include click grows
        the slice's box to contain it (or opens a ``click_box_mm`` box on an empty slice), an
        exclude click inside the mask moves the nearest box edge past it and drops the connected
        part of the new slice mask that still covers the click.
        ``point`` is a voxel index, or LPS millimetres with ``world=True``
        (RAS with ``ras=True``), as for :class:`~fastsam3d.Session`.
        """
        volume = self._require_image()
        point = np.asarray(point, dtype=float).reshape(-1)
        if world and point.shape == (3,):
            point = volume.world_to_index((ras_to_lps(point) if ras else point)[None])[0]
        if point.shape != (3,) or np.any(np.round(point) < 0) or np.any(np.round(point) > np.array(volume.shape) - 1):
            raise PromptError(f"point {point.tolist()} is outside the volume of shape {volume.shape}")
        index = int(round(point[self.axis]))
        row, col = self._in_plane(point)
        current = self._slice(self._mask, index)
        self.timings = SliceTimings()
        if self.config.point_prompts:
            self._clicks.setdefault(index, []).append((row, col, positive))
            box = _box_of(current, self.box_margin, current.shape) if current.any() else None
            result = self._segment(index, box=box, clicks=self._clicks[index])
        else:
            box = self._edited_box(current, int(round(row)), int(round(col)), positive)
            if box is None:  # an exclude click outside the mask: nothing to remove
                self._push(self._mask.copy())
                return
            result = self._segment(index, box=box)
        mask = self._mask.copy()
        result = np.zeros(current.shape, bool) if result is None else result
        if not positive and result[int(round(row)), int(round(col))]:  # the excluded pixel must go
            components, _ = ndimage.label(result)
            result = result & (components != components[int(round(row)), int(round(col))])
        self._write(mask, index, result)
        if self._root is None:
            self._root = index
        # slices farther from the first prompted slice were derived from this one: update those
        directions = (-1, 1) if index == self._root else (int(np.sign(index - self._root)),)
        last = volume.shape[self.axis] - 1
        for direction in directions:
            limits = (0, index) if direction < 0 else (index, last)
            if result.any():
                self._propagate(mask, index, result, limits, directions=(direction,), stop_when_unchanged=True)
            else:  # the object ends here: nothing beyond it
                beyond = [slice(None)] * 3
                beyond[self.axis] = slice(0, index) if direction < 0 else slice(index + 1, None)
                mask[tuple(beyond)] = False
        self._push(mask)

    def _edited_box(self, current: np.ndarray, row: int, col: int, positive: bool) -> tuple[int, int, int, int] | None:
        if positive:
            if not current.any():
                half_rows = max(1, round(self.click_box_mm / 2 / self.volume.spacing[self._rows[0]]))
                half_cols = max(1, round(self.click_box_mm / 2 / self.volume.spacing[self._cols[0]]))
                return (max(row - half_rows, 0), max(col - half_cols, 0),
                        min(row + half_rows, current.shape[0] - 1), min(col + half_cols, current.shape[1] - 1))
            r0, c0, r1, c1 = _box_of(current, self.box_margin, current.shape)
            return min(r0, row - self.box_margin), min(c0, col - self.box_margin), max(r1, row + self.box_margin), max(c1, col + self.box_margin)
        if not current[row, col]:
            return None
        r0, c0, r1, c1 = _box_of(current, 0, current.shape)
        edges = {"top": row - r0, "bottom": r1 - row, "left": col - c0, "right": c1 - col}
        nearest = min(edges, key=edges.get)
        if nearest == "top":
            r0 = row + 1
        elif nearest == "bottom":
            r1 = row - 1
        elif nearest == "left":
            c0 = col + 1
        else:
            c1 = col - 1
        return (r0, c0, r1, c1) if r0 <= r1 and c0 <= c1 else None

    def reset(self) -> None:
        """Clear the object (clicks and mask; undoable); cached slice embeddings are kept."""
        self._require_image()
        self._clicks = {}
        self._root = None
        self._push(np.zeros_like(self._mask))

    def undo(self) -> bool:
        """Back to the mask before the last prompt; False when there is nothing to undo."""
        if self._position == 0:
            return False
        self._position -= 1
        self._mask = self._history[self._position].copy()
        return True

    def redo(self) -> bool:
        """Forward again after an undo; False when there is nothing to redo."""
        if self._position == len(self._history) - 1:
            return False
        self._position += 1
        self._mask = self._history[self._position].copy()
        return True

    def mask(self) -> np.ndarray:
        """The object's boolean mask on the input grid."""
        self._require_image()
        return self._mask.copy()

    def save_labels(self, path: str | Path) -> Path:
        """Write the mask as a label map (1 = object) on the input grid, atomically."""
        return write_volume(self.volume.with_array(self._mask.astype(np.uint8)), path)

    # --- internals ----------------------------------------------------------------------

    def _require_image(self) -> Volume:
        if self.volume is None:
            raise PromptError("no image: call set_image first")
        return self.volume

    def _in_plane(self, point: np.ndarray) -> tuple[float, float]:
        """Voxel -> (row, col) on its slice's display grid."""
        (ra, rs), (ca, cs) = self._rows, self._cols
        shape = self.volume.shape
        row = point[ra] if rs > 0 else shape[ra] - 1 - point[ra]
        col = point[ca] if cs > 0 else shape[ca] - 1 - point[ca]
        return float(row), float(col)

    def _slice(self, array: np.ndarray, index: int) -> np.ndarray:
        """The (H, W) display-oriented slice ``index`` of a volume-shaped array."""
        (ra, rs), (_, cs) = self._rows, self._cols
        plane = np.take(array, index, axis=self.axis)
        remaining = [a for a in range(3) if a != self.axis]
        plane = plane if remaining.index(ra) == 0 else plane.T
        return plane[:: 1 if rs > 0 else -1, :: 1 if cs > 0 else -1]

    def _write(self, mask: np.ndarray, index: int, plane: np.ndarray) -> None:
        """Store a display-oriented (H, W) plane as slice ``index`` of ``mask`` (inverse of :meth:`_slice`)."""
        (ra, rs), (_, cs) = self._rows, self._cols
        plane = plane[:: 1 if rs > 0 else -1, :: 1 if cs > 0 else -1]
        remaining = [a for a in range(3) if a != self.axis]
        where = [slice(None)] * 3
        where[self.axis] = index
        mask[tuple(where)] = plane if remaining.index(ra) == 0 else plane.T

    def _embedding(self, index: int) -> torch.Tensor:
        if index not in self._embeddings:
            started = time.perf_counter()
            image = torch.from_numpy(np.ascontiguousarray(self._slice(self._scaled, index))).to(self.device)
            image = self._to_model[0] @ image @ self._to_model[1].T
            low, high = image.min(), image.max()
            image = (image - low) / torch.clamp(high - low, min=1e-8) * self.config.pixel_scale
            mean = torch.tensor(self.config.pixel_mean, device=self.device).view(3, 1, 1)
            std = torch.tensor(self.config.pixel_std, device=self.device).view(3, 1, 1)
            rgb = (image.expand(3, -1, -1) - mean) / std
            size = self.config.img_size
            padded = torch.zeros(1, 3, size, size, device=self.device)
            padded[0, :, : rgb.shape[1], : rgb.shape[2]] = rgb
            with torch.inference_mode():
                self._embeddings[index] = self.model.encode(padded)
            self.timings.encoder += time.perf_counter() - started
            self.encoder_runs += 1
        return self._embeddings[index]

    def _segment(self, index: int, box=None, clicks=None) -> np.ndarray | None:
        """Mask (H, W) of one slice from a (row0, col0, row1, col1) box and/or clicks; None if empty."""
        embedding = self._embedding(index)
        started = time.perf_counter()
        boxes = coords = labels = None
        if box is not None:
            x0, y0 = self.geometry.point_to_model(box[0], box[1])
            x1, y1 = self.geometry.point_to_model(box[2], box[3])
            boxes = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32, device=self.device)
        if clicks:
            coords = torch.tensor([[self.geometry.point_to_model(r, c) for r, c, _ in clicks]], dtype=torch.float32, device=self.device)
            labels = torch.tensor([[int(p) for _, _, p in clicks]], device=self.device)
        with torch.inference_mode():
            low_res, _ = self.model.decode(embedding, coords, labels, boxes=boxes)
            logits = self._from_low_res[0] @ low_res[0, 0].float() @ self._from_low_res[1].T
        self.decoder_runs += 1
        self.timings.decoder += time.perf_counter() - started
        self.timings.slices += 1
        plane = (logits > 0).cpu().numpy()
        return plane if plane.sum() >= self.min_pixels else None

    def _propagate(self, mask: np.ndarray, start: int, plane: np.ndarray, limits: tuple[int, int],
                   directions: tuple[int, ...] = (-1, 1), stop_when_unchanged: bool = False) -> None:
        """Segment the slices on both sides of ``start``, each from the box of its neighbour's mask,
        until the object vanishes, the limits, or (``stop_when_unchanged``) a slice whose new mask
        agrees with the one it already had (Dice >= ``UNCHANGED_DICE``)."""
        for step in directions:
            previous, index = plane, start + step
            while limits[0] <= index <= limits[1]:
                current = self._segment(index, box=_box_of(previous, self.box_margin, previous.shape))
                before = self._slice(mask, index)
                if current is None:
                    self._write(mask, index, np.zeros_like(plane))
                    break
                self._write(mask, index, current)
                if stop_when_unchanged and dice(current, before) >= UNCHANGED_DICE:
                    break
                previous, index = current, index + step

    def _push(self, mask: np.ndarray) -> None:
        self._mask = mask
        del self._history[self._position + 1 :]
        self._history.append(mask.copy())
        self._position += 1


def _box_of(plane: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(plane)
    return (max(int(rows.min()) - margin, 0), max(int(cols.min()) - margin, 0),
            min(int(rows.max()) + margin, shape[0] - 1), min(int(cols.max()) + margin, shape[1] - 1))


def _scale_intensities(array: np.ndarray) -> np.ndarray:
    """CT (minimum below -500 HU): the soft-tissue window; otherwise the 0.5-99.5 percentiles of the
    non-zero voxels. Returned as float32 in [0, 1] (each slice is min-max scaled again later)."""
    array = array.astype(np.float32)
    if array.min() < -500:
        low, high = CT_WINDOW
    else:
        values = array[array > 0] if (array > 0).any() else array.ravel()
        low, high = np.percentile(values, [0.5, 99.5])
    return np.clip((array - low) / max(float(high - low), 1e-6), 0, 1).astype(np.float32)
