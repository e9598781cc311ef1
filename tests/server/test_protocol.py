"""The answer's region encoding: the label values of a box, i fastest, as zlib + base64."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from fastsam3d.server.protocol import decode_region, encode_region


@pytest.mark.parametrize("top", [7, 300])  # uint8, and uint16 past 255 objects
def test_a_region_is_encoded_i_fastest_and_decodes_to_its_values(top):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, top + 1, (20, 30, 40)).astype(np.uint16 if top > 255 else np.uint8)
    box = (slice(3, 17), slice(5, 29), slice(0, 33))
    region = encode_region(box, labels[box])  # a strided view, as the label map's crop is
    assert region["dtype"] == ("uint16" if top > 255 else "uint8") and region["order"] == "F"
    raw = zlib.decompress(base64.b64decode(region["data"]))
    assert raw == np.ascontiguousarray(labels[box]).tobytes(order="F")  # NIfTI order, as the viewers read it
    decoded_box, values = decode_region(region)
    assert decoded_box == box and np.array_equal(values, labels[box])
