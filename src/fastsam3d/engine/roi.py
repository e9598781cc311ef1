"""Region of interest (ROI) around the prompts: where the model looks, and the exact way back.

The models were trained on volumes reoriented to RAS (torchio ``ToCanonical``), resampled to
1.5 mm and cropped to 128³ (docs/reference.md §7). We never resample the whole volume:
a :class:`RoiGrid` is a 128³ grid at 1.5 mm whose axes are the input's own axes, permuted and
flipped into RAS order (what ``ToCanonical`` does, so oblique volumes are not rotated). Because
the two grids' axes are parallel, every mapping between them is separable: index conversions
are one affine map per axis, and linear resampling is one small interpolation matrix per axis.

* :meth:`RoiGrid.extract` samples the input into the ROI (trilinear, zero outside the volume,
  as ITK's linear interpolator with a default value of 0).
* :meth:`RoiGrid.paste_logits` maps low-res decoder logits back onto the input voxels the ROI
  covers. Its per-axis matrices compose the model's trilinear upsampling (``align_corners=False``)
  with the linear resampling onto the input grid, so the per-click cost is three small
  matrix products over the covered voxels, never a pass over the whole volume.
* :meth:`RoiGrid.paste_mask` gives the signs of that paste, and only where they can be positive;
  on the CPU its last axis is a threshold comparison per voxel instead of a product.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..configs import TARGET_SPACING_MM
from ..io import Volume, drop_mapped_pages
from .labelmap import RegionView

EXTRACT_SLAB_VOXELS = 2**19  # input voxels RoiGrid.extract reads at a time (2 MB of float32: 2**21 was 1.6x slower)
NORMALISE_PLANES = 8  # crop planes normalise_intensity sums at a time
SIGN_PASTE_MIN_VOXELS = 2**19  # boxes from this size on take paste_mask's signs, smaller ones one product
BAND_ROWS = 16  # output rows per product of a banded resampling (8: 2x slower; 32, 64: as fast or slower)
BANDED_MIN_INPUTS = 64  # banded products from this many inputs on (a 32³ paste's: 1.5 ms against 0.75-1.0 dense)
# RAS axis directions written in LPS world coordinates (the convention of Volume.direction).
_RAS_IN_LPS = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T


def canonical_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Input axis and sign for each RAS axis: ROI axis ``a`` runs along ``sign[a] * input axis[a]``.

    Chooses the axis permutation that best aligns the input axes with R, A, S (as ToCanonical).
    """
    alignment = direction.T @ _RAS_IN_LPS  # [input axis, ras axis] cosines
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(alignment[p[a], a]) for a in range(3)))
    signs = tuple(1 if alignment[best[a], a] >= 0 else -1 for a in range(3))
    return tuple(best), signs


def linear_weights(positions: np.ndarray, length: int) -> np.ndarray:
    """(len(positions), length) matrix of 1D linear interpolation at continuous indices.

    Positions within half a voxel outside the samples use the edge value; further out the row is
    zero (outside the image).
    """
    taps = LinearTaps.at(positions, length)
    weights = np.zeros((len(positions), length), dtype=np.float32)
    rows = np.arange(len(positions))
    np.add.at(weights, (rows, taps.lower.numpy()), taps.lower_weight.numpy())
    np.add.at(weights, (rows, taps.upper.numpy()), taps.upper_weight.numpy())
    return weights


@dataclass(frozen=True)
class LinearTaps:
    """1D linear interpolation as two taps per output sample: ``out = w_lower * x[lower] + w_upper * x[upper]``,
    the sparse form of :func:`linear_weights` (positions outside the image get zero weights)."""

    lower: torch.Tensor
    upper: torch.Tensor
    lower_weight: torch.Tensor
    upper_weight: torch.Tensor

    @classmethod
    def at(cls, positions: np.ndarray, length: int) -> LinearTaps:
        inside = (positions >= -0.5) & (positions <= length - 0.5)
        clamped = np.clip(positions, 0, length - 1)
        lower = np.minimum(np.floor(clamped).astype(np.int64), length - 1)
        upper = np.minimum(lower + 1, length - 1)
        fraction = (clamped - lower).astype(np.float32)
        return cls(
            torch.from_numpy(lower),
            torch.from_numpy(upper),
            torch.from_numpy(np.where(inside, 1 - fraction, 0).astype(np.float32)),
            torch.from_numpy(np.where(inside, fraction, 0).astype(np.float32)),
        )

    def apply(self, array: torch.Tensor, axis: int) -> torch.Tensor:
        """Interpolate ``array`` along ``axis`` at the taps' positions."""
        shape = [1] * array.dim()
        shape[axis] = -1
        result = array.index_select(axis, self.lower).mul_(self.lower_weight.view(shape))
        return result.addcmul_(array.index_select(axis, self.upper), self.upper_weight.view(shape))


def upsampling_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix of ``F.interpolate(mode="linear", align_corners=False)`` along one axis."""
    positions = np.maximum((np.arange(target) + 0.5) * source / target - 0.5, 0.0)
    return linear_weights(positions, source)


def apply_per_axis(array: torch.Tensor, matrices: list[torch.Tensor]) -> torch.Tensor:
    """Contract axis ``a`` of a 3D array with ``matrices[a]`` (out_a, in_a): a separable resampling.
    Each product consumes axis 0 and appends the new one."""
    for matrix in matrices:
        if array.device.type == "cpu" and matrix.shape[1] >= BANDED_MIN_INPUTS:
            array = _contract_first_axis_banded(array, matrix)
        else:
            array = torch.tensordot(array, matrix, dims=([0], [1]))
    return array


def _contract_first_axis_banded(array: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``torch.tensordot(array, matrix, dims=([0], [1]))`` for a banded matrix (interpolation: a
    few consecutive taps per row), in blocks of ``BAND_ROWS`` output rows, each a product over only
    the inputs its rows mix: a 64³ paste's two products over 64 inputs each took 3 ms, 2 ms so."""
    inputs = array.reshape(array.shape[0], -1)
    out = torch.empty(inputs.shape[1], len(matrix))
    for begin, end, low, high in _band_blocks(matrix):
        torch.mm(inputs[low:high].t(), matrix[begin:end, low:high].t(), out=out[:, begin:end])
    return out.view(*array.shape[1:], len(matrix))


def _band_blocks(matrix: torch.Tensor) -> Iterator[tuple[int, int, int, int]]:
    """(first row, end row, first input, end input) of each block of ``BAND_ROWS`` rows of a banded
    (R, L) matrix: the inputs its rows mix."""
    nonzero = (matrix != 0).to(torch.uint8)
    first = nonzero.argmax(1)
    last = matrix.shape[1] - 1 - nonzero.flip(1).argmax(1)
    for begin in range(0, len(matrix), BAND_ROWS):
        end = min(begin + BAND_ROWS, len(matrix))
        yield begin, end, int(first[begin:end].min()), int(last[begin:end].max()) + 1


@dataclass(frozen=True)
class RoiGrid:
    """A cubic grid of ``size`` voxels at ``spacing`` mm, axes parallel to the input's.

    ROI axis ``a`` runs along input axis ``axes[a]``: input index = ``start[a] + step[a] * t``
    for ROI index ``t``. ROI axes are in RAS order, as the models were trained.
    """

    volume_shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    start: tuple[float, float, float]
    step: tuple[float, float, float]
    size: int = 128

    @classmethod
    def centred(
        cls, volume: Volume, centre_index: np.ndarray, size: int = 128, spacing: float = TARGET_SPACING_MM
    ) -> RoiGrid:
        """The ROI whose voxel ``size // 2`` on each axis lies on ``centre_index`` (input voxels),
        torchio CropOrPad's rounding for an even size."""
        axes, signs = canonical_axes(volume.direction)
        step = tuple(signs[a] * spacing / float(volume.spacing[axes[a]]) for a in range(3))
        start = tuple(float(centre_index[axes[a]]) - step[a] * (size // 2) for a in range(3))
        return cls(tuple(volume.shape), axes, start, step, size)

    @property
    def key(self) -> tuple:
        """Hashable identity, for caching embeddings."""
        return (self.axes, tuple(round(s, 6) for s in self.start), tuple(round(s, 6) for s in self.step), self.size)

    def index_to_roi(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) input voxel indices -> (N, 3) continuous ROI indices (ROI axis order)."""
        index = np.atleast_2d(np.asarray(index, dtype=np.float64))
        return np.stack([(index[:, self.axes[a]] - self.start[a]) / self.step[a] for a in range(3)], axis=1)

    def roi_to_index(self, roi: np.ndarray) -> np.ndarray:
        """(N, 3) ROI indices -> (N, 3) continuous input voxel indices."""
        roi = np.atleast_2d(np.asarray(roi, dtype=np.float64))
        index = np.empty_like(roi)
        for a in range(3):
            index[:, self.axes[a]] = self.start[a] + self.step[a] * roi[:, a]
        return index

    def contains(self, index: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether input voxel indices fall in the ROI, at least ``margin`` ROI voxels from its faces."""
        roi = self.index_to_roi(index)
        return np.all((roi >= margin - 0.5) & (roi <= self.size - 0.5 - margin), axis=1)

    def low_res_grid(self, low_res: int) -> RoiGrid:
        """The grid of the decoder's low-res logits over this ROI: ``size / low_res`` times coarser,
        its cell centres at the centres of the blocks they cover (as ``align_corners=False``)."""
        factor = self.size // low_res
        start = tuple(s + st * (factor - 1) / 2 for s, st in zip(self.start, self.step, strict=True))
        return replace(self, start=start, step=tuple(st * factor for st in self.step), size=low_res)

    def neighbour(self, axis: int, direction: int) -> RoiGrid:
        """The ROI shifted by half its size along ROI ``axis``, forwards (``direction=1``) or back (-1)."""
        start = list(self.start)
        start[axis] += self.step[axis] * direction * self.size / 2
        return replace(self, start=tuple(start))

    def face_inside_volume(self, axis: int, direction: int, low_res: int) -> bool:
        """Whether the outermost low-res cell on that side of ROI ``axis`` starts inside the volume
        (else the volume ends there: nothing lies beyond that face)."""
        position = 0 if direction < 0 else self.size - self.size // low_res
        face = self.start[axis] + self.step[axis] * position
        return 0 < face < self.volume_shape[self.axes[axis]] - 1

    def _input_positions(self, a: int) -> np.ndarray:
        return self.start[a] + self.step[a] * np.arange(self.size)

    def covered_slices(self) -> tuple[slice, slice, slice]:
        """Bounding box (input axis order) of the input voxels whose centres lie inside the ROI."""
        slices: list[slice] = [slice(0, 0)] * 3
        for a in range(3):
            ends = self.start[a] + self.step[a] * np.array([-0.5, self.size - 0.5])
            low = max(int(np.ceil(ends.min())), 0)
            high = min(int(np.floor(ends.max())), self.volume_shape[self.axes[a]] - 1)
            slices[self.axes[a]] = slice(low, max(high + 1, low))
        return tuple(slices)

    def extract(self, array: np.ndarray | RegionView, outside: str = "zero") -> torch.Tensor:
        """Linearly resample the input array (or a mask's :class:`~.labelmap.RegionView`) into the
        ROI: (size, size, size) float32; where the ROI
        leaves the volume, zero (``outside="zero"``, ITK's default) or the nearest border voxel (``"edge"``).

        Each axis is interpolated from its two neighbouring samples (:class:`LinearTaps`: work in
        proportion to the output, unlike a dense matrix product). The covered input block is read and
        converted to float in slabs along ROI axis 2, resampled along axes 0 and 1 slab by slab, then
        along axis 2: memory stays at a few slabs whatever the input's resolution, and a
        memory-mapped input is read once, its pages released from this process after each slab.
        """
        sources: list[slice] = []
        taps = []
        for a in range(3):
            positions = self._input_positions(a)
            length = self.volume_shape[self.axes[a]]
            if outside == "edge":
                positions = np.clip(positions, 0, length - 1)
            low = int(np.clip(np.floor(positions.min()), 0, length - 1))
            high = int(np.clip(np.ceil(positions.max()), 0, length - 1))
            sources.append(slice(low, high + 1))
            taps.append(LinearTaps.at(positions - low, high - low + 1))
        depth = sources[2].stop - sources[2].start
        slab = max(
            1, EXTRACT_SLAB_VOXELS // ((sources[0].stop - sources[0].start) * (sources[1].stop - sources[1].start))
        )
        # resampled along ROI axes 0 and 1, axis 2 first: the taps along it then read whole planes
        # (along the innermost axis, a 128³ crop's took 9.4 ms against 0.85 ms + 2 ms for the copy back)
        planes = torch.empty(depth, self.size, self.size)
        for first in range(0, depth, slab):
            part = slice(sources[2].start + first, sources[2].start + min(first + slab, depth))
            block_slices = [None] * 3
            for a, source in enumerate((sources[0], sources[1], part)):
                block_slices[self.axes[a]] = source
            block = np.asarray(array[tuple(block_slices)], dtype=np.float32)
            if not block.flags.writeable:  # a view of a read-only mapped float32 volume
                block = block.copy()
            if isinstance(array, np.ndarray):
                drop_mapped_pages(array)  # a mapped file's pages leave this process slab by slab
            block = torch.from_numpy(block).permute(self.axes)
            resampled = _apply_in_memory_order(block, {0: taps[0], 1: taps[1]})
            planes[first : first + block.shape[2]] = resampled.permute(2, 0, 1)
        return taps[2].apply(planes, 0).permute(1, 2, 0).contiguous()

    def paste_matrices(self, low_res: int) -> tuple[tuple[slice, slice, slice], list[torch.Tensor]]:
        """Covered input box and per-ROI-axis matrices (covered voxels, low_res) taking low-res
        logits to the input voxels: trilinear upsampling to ``size`` then linear resampling."""
        return _paste_matrices(self, low_res)

    def paste_logits(self, low_res_logits: torch.Tensor) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """(L, L, L) low-res logits -> (covered box, logits on those input voxels in input axis order)."""
        covered, matrices = self.paste_matrices(low_res_logits.shape[-1])
        values = apply_per_axis(low_res_logits.detach().float().cpu(), matrices)
        return covered, values.permute(*np.argsort(self.axes)).numpy()

    def paste_mask(self, low_res_logits: torch.Tensor) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """(L, L, L) low-res logits -> (box, boolean mask on the box) of input voxels with pasted logit > 0.

        Equal to ``paste_logits(...)[1] > 0`` (up to float rounding at values within rounding of 0)
        but only computed where it can be positive: an interpolated value is a convex mix of low-res
        values, so rows whose weights all fall outside the low-res bounding box of positive logits
        (per axis) are negative. Computed on the logits' device: on a GPU only the boolean box comes
        back to the CPU, in one product and one copy; on the CPU see :func:`_signs_of_mixes`.
        """
        logits = low_res_logits.detach().float()
        covered, matrices = self.paste_matrices(logits.shape[-1])
        matrices = [matrix.to(logits.device) for matrix in matrices]
        box: list[slice] = list(covered)
        # the positive logits' bounding box from maxima (nonzero() of the positive cells: 0.5-0.9 ms)
        across_last = logits.amax(dim=2)
        if not (across_last > 0).any():
            box = [slice(s.start, s.start) for s in covered]
            return tuple(box), np.zeros((0, 0, 0), dtype=bool)
        maxima = (across_last.amax(1), across_last.amax(0), logits.amax(dim=(0, 1)))
        cropped, read = [], []
        for a in range(3):
            cells = torch.nonzero(maxima[a] > 0)[:, 0]
            low, high = cells[0].item(), cells[-1].item()
            rows = torch.nonzero(matrices[a][:, low : high + 1].sum(1) > 0)[:, 0]
            if len(rows) == 0:  # the positive logits lie where the ROI leaves the volume
                return tuple(slice(s.start, s.start) for s in covered), np.zeros((0, 0, 0), dtype=bool)
            first, last = rows.min().item(), rows.max().item()
            block = matrices[a][first : last + 1]
            columns = torch.nonzero(block.any(0))[:, 0]  # the low-res cells these rows mix
            read.append(slice(columns[0].item(), columns[-1].item() + 1))
            cropped.append(block[:, read[a]])
            span = covered[self.axes[a]]
            box[self.axes[a]] = slice(span.start + first, span.start + last + 1)
        # Axes 1 and 2 first: (L, rows 1, rows 2); then axis 0, whose output planes each mix a few of
        # these L planes: one product, or on the CPU for large boxes their signs without the product.
        rows = [len(matrix) for matrix in cropped]
        if logits.device.type != "cpu" or rows[0] * rows[1] * rows[2] < SIGN_PASTE_MIN_VOXELS:
            partial = apply_per_axis(logits[tuple(read)].permute(1, 2, 0), cropped[1:])
            mask = ((cropped[0] @ partial.reshape(partial.shape[0], -1)) > 0).view(rows).cpu().numpy()
            return tuple(box), mask.transpose(np.argsort(self.axes))
        if logits.shape[1] >= BANDED_MIN_INPUTS:
            planes = _planes_along_axis_0(logits[tuple(read)], cropped[1], cropped[2])
        else:  # a 32³ student's: dense products, and contiguous planes for its many three-plane rows
            planes = apply_per_axis(logits[tuple(read)].permute(1, 2, 0), cropped[1:])
        mask = np.empty(rows, dtype=bool)
        _signs_of_mixes(cropped[0], planes, mask)
        return tuple(box), mask.transpose(np.argsort(self.axes))


def _planes_along_axis_0(logits: torch.Tensor, across_1: torch.Tensor, across_2: torch.Tensor) -> torch.Tensor:
    """(L0, L1, L2) logits resampled along axes 1 and 2 by (rows 1, L1) and (rows 2, L2) matrices:
    (L0, rows 1, rows 2), laid out as (rows 1, L0, rows 2). So the larger product takes the
    interpolation matrix on its left, each block of ``BAND_ROWS`` rows over only the inputs it mixes,
    and writes whole rows: with axis 1 on the right it wrote 16-column strips (a 64³ default's
    ROI-filling paste: 3.9-4.2 -> 2.4-2.6 ms for both products). For logits of 64³ or more: a 32³
    student's dense products are as fast, and its many three-plane rows (products) read the
    planes faster when contiguous."""
    size_0, size_1, size_2 = logits.shape
    along_2 = logits.permute(1, 0, 2).reshape(size_1 * size_0, size_2) @ across_2.t()  # (L1·L0, rows 2)
    inputs = along_2.view(size_1, -1)
    out = torch.empty(len(across_1), inputs.shape[1])
    for begin, end, low, high in _band_blocks(across_1):
        torch.mm(across_1[begin:end, low:high], inputs[low:high], out=out[begin:end])
    return out.view(len(across_1), size_0, len(across_2)).permute(1, 0, 2)


def _signs_of_mixes(weights: torch.Tensor, planes: torch.Tensor, out: np.ndarray) -> None:
    """``out = weights @ planes > 0`` (contracting the planes' axis 0) on the CPU, for (R, L) weights
    whose rows mix 1-3 consecutive planes of (L, ...) ``planes`` with non-negative weights, without
    the (R, ...) product.

    A row that mixes planes a and b (s its share of b) is positive where ``a + s (b - a) > 0``: per
    column, ``s > t`` with ``t = -a / (b - a)``, the comparison reversed where ``b < a`` (where
    ``a = b``, t is -inf or +inf: always or never). So such a row costs a comparison and an XOR of
    booleans per voxel (NumPy's: torch's broadcast comparison took 2.6x as long), where the product
    wrote floats and read them back (the comparisons of a ROI-filling 7.4 M-voxel box: ~3x faster).
    The signs are the product's up to float rounding (values within rounding of 0). Rows that mix
    three planes (two ROI voxels on either side of a low-res sample, where the upsampling bends) are
    products, ``BAND_ROWS`` rows at a time over the planes they mix.
    """
    matrix = weights.numpy()
    present = matrix > 0
    first, count = present.argmax(1), present.sum(1)
    # per row: 0 mixes nothing, 1 mixes one or two planes (a threshold), 2 more (or there is one plane)
    kind = np.where(count == 0, 0, np.where((count <= 2) & (len(planes) > 1), 1, 2))
    if len(planes) > 1:  # in torch (two threads), contiguous whatever the planes' layout
        gaps = torch.sub(planes[1:], planes[:-1], out=torch.empty((len(planes) - 1, *planes.shape[1:])))
        reversed_ = (gaps < 0).numpy()
        thresholds = torch.div(planes[:-1], gaps, out=gaps).neg_().numpy()  # a = b: -inf, +inf or NaN (a = 0: never)
    starts = np.flatnonzero((first[1:] != first[:-1]) | (kind[1:] != kind[:-1])) + 1
    products = []
    for begin, end in itertools.pairwise([0, *starts.tolist(), len(matrix)]):
        run = out[begin:end]
        if kind[begin] == 0:
            run[:] = False
        elif kind[begin] == 1:
            interval = min(int(first[begin]), len(planes) - 2)  # a row on the last plane only: s = 1 before it
            mix = matrix[begin:end, interval : interval + 2]
            shares = (mix[:, 1] / mix.sum(1)).reshape(-1, *(1,) * (planes.dim() - 1))
            np.greater(shares, thresholds[interval], out=run)
            np.logical_xor(run, reversed_[interval], out=run)
        else:
            products.extend(range(begin, end))
    for chunk in range(0, len(products), BAND_ROWS):  # the other rows as products, BAND_ROWS at a time
        rows = np.asarray(products[chunk : chunk + BAND_ROWS])
        low, high = int(first[rows].min()), int((first[rows] + count[rows]).max())
        product = torch.tensordot(weights[torch.from_numpy(rows), low:high], planes[low:high], dims=1)
        out[rows] = (product > 0).numpy()


@functools.lru_cache(maxsize=32)
def _paste_matrices(roi: RoiGrid, low_res: int) -> tuple[tuple[slice, slice, slice], list[torch.Tensor]]:
    covered = roi.covered_slices()
    up = upsampling_weights(low_res, roi.size)
    matrices = []
    for a in range(3):
        span = covered[roi.axes[a]]
        roi_positions = (np.arange(span.start, span.stop) - roi.start[a]) / roi.step[a]
        matrices.append(torch.from_numpy(linear_weights(roi_positions, roi.size)) @ torch.from_numpy(up))
    return covered, matrices


def _apply_in_memory_order(block: torch.Tensor, taps: dict[int, LinearTaps]) -> torch.Tensor:
    """``block`` interpolated along each axis in ``taps``, the axis with the largest memory stride
    first, each on a contiguous view: ``index_select`` on a view that is not contiguous (a NIfTI's
    Fortran-ordered voxels seen in ROI axis order) takes a generic path, 5x slower here."""
    order = sorted(range(block.dim()), key=lambda d: -block.stride(d))
    view = block.permute(order)
    for axis in sorted(taps, key=order.index):
        view = taps[axis].apply(view, order.index(axis))
    return view.permute(*np.argsort(order))


def normalise_intensity(crop: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """z-score with mean and (unbiased) std over voxels > 0, as torchio ``ZNormalization(x > 0)``.

    Falls back to all voxels when fewer than two are positive, and to std 1 for a constant crop.
    The statistics are summed in float64 a few planes at a time (no crop-sized temporaries);
    ``in_place`` overwrites a float crop the caller owns (no second crop-sized array).
    """
    count, total, squares = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for planes in crop.split(NORMALISE_PLANES):  # the positive voxels' values, the others as zeros: no
        kept = planes.clamp(min=0).double()  # compaction (selecting them: 12 ms of a 128³ crop; this 3.4 ms;
        count += int((planes > 0).sum())  # torch.where 7 ms); volumes are checked for NaN when read
        total, squares = total + kept.sum(), squares + kept.square().sum()
    if count < 2:  # too few positive voxels: all of them
        values = crop.double()
        count, total, squares = values.numel(), values.sum(), values.square().sum()
    mean = total / count
    variance = (squares - count * mean.square()) / max(count - 1, 1)
    std = variance.clamp_min(0).sqrt().float()
    if not torch.isfinite(std) or std == 0:
        std = torch.tensor(1.0)
    mean = mean.float()
    return crop.sub_(mean).div_(std) if in_place else (crop - mean) / std


def sigmoid_in_place(values: np.ndarray) -> np.ndarray:
    """Logistic function of float32 logits, computed in place (the maps are ROI-sized)."""
    np.clip(values, -60, 60, out=values)
    np.negative(values, out=values)
    np.exp(values, out=values)
    values += 1
    return np.reciprocal(values, out=values)
