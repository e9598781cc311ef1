"""REST API: scribble and lasso routes, as point lists and as bit crops, with bad strokes."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from fastsam3d.server.protocol import decode_region

from .test_server import centre_voxel, data_dir, make_client, open_sphere  # noqa: F401 (data_dir is a fixture)


@pytest.fixture
def client(data_dir):  # noqa: F811
    with make_client(data_dir) as client:
        yield client


def _bits(plane: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(plane, axis=None).tobytes())).decode()


def test_scribble_and_lasso_as_points_and_as_bits(client):
    session = open_sphere(client)
    i, j, k = centre_voxel()
    scribble = client.post(
        f"/api/sessions/{session}/scribble", json={"points": [[i - 5, j, k], [i + 5, j + 3, k]]}
    ).json()
    box, values = decode_region(scribble["region"])
    assert (values == 1).any() and scribble["objects"][0]["label"] == 1
    plane = np.zeros((9, 7), dtype=bool)
    plane[0, :] = plane[-1, :] = plane[:, 0] = plane[:, -1] = True  # an outline: the area inside is the lasso
    bits = {"axis": 2, "index": k, "origin": [i - 4, j - 3], "shape": [9, 7], "data": _bits(plane)}
    lasso = client.post(f"/api/sessions/{session}/lasso", json={"bits": bits, "positive": False})
    assert lasso.status_code == 200, lasso.text
    box, values = decode_region(lasso.json()["region"])
    labels = np.zeros(client.get(f"/api/sessions/{session}").json()["shape"], dtype=np.uint8)
    labels[box] = values
    assert not labels[i - 4 : i + 5, j - 3 : j + 4, k].any()  # excluded on its slice, outline and area
    undo = client.post(f"/api/sessions/{session}/undo", json={}).json()
    assert undo["changed"]


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("scribble", {}, "one of the two"),
        ("scribble", {"points": []}, "three coordinates"),
        ("scribble", {"points": [[10, 10, 10]]}, "at least 2 points"),
        ("scribble", {"points": [[10, 10, 10], [10, 10, 999]]}, "outside the volume"),
        ("lasso", {"points": [[50, 40, 10], [60, 40, 11], [60, 50, 12]]}, "one slice"),
        ("lasso", {"points": [[50, 40, 10], [60, 50, 10], [60, 40, 10], [50, 50, 10]]}, "cross itself"),
        ("lasso", {"points": [[0, 0, 0]] * 20_000}, "at most 10000 points"),
        ("lasso", {"bits": {"axis": 2, "index": 5, "origin": [0, 0], "shape": [4, 4], "data": "!!"}}, "base64"),
        ("lasso", {"bits": {"axis": 2, "index": 5, "origin": [0, 0], "shape": [4, 4], "data": ""}}, "holds 0 bits"),
        ("scribble", {"bits": {"axis": 2, "index": 5, "origin": [0, 0], "shape": [5000, 5000], "data": ""}}, "accepts"),
        ("lasso", {"bits": {"axis": 2, "index": 5, "origin": [115, 0], "shape": [8, 8], "data": ""}}, None),
    ],
)
def test_bad_strokes_get_a_400_and_change_nothing(client, route, body, message):
    session = open_sphere(client)
    if body.get("bits", {}).get("origin") == [115, 0]:  # a valid crop that leaves the slice
        body["bits"]["data"] = _bits(np.ones((8, 8), dtype=bool))
        message = "leaves the slice"
    response = client.post(f"/api/sessions/{session}/{route}", json=body)
    assert response.status_code in (400, 422), response.text
    if response.status_code == 400:
        assert message in response.json()["detail"]
    assert client.get(f"/api/sessions/{session}").json()["objects"] == []
