"""DICOM-SEG export: segment names, coded terms and colours, the same for the CLI and the server."""

import highdicom as hd
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fastsam3d.io import Volume
from fastsam3d.server.app import create_app
from fastsam3d.server.dicom_seg import segment_colour, segment_terms
from fastsam3d.server.settings import ServerSettings

from ..dicom_series import write_dicom_series
from ..helpers import IntensityModel


@pytest.mark.parametrize(
    "name,category,kind,region",
    [
        ("Liver", "Anatomical Structure", "Liver", None),
        ("left_kidney", "Anatomical Structure", "Kidney", None),
        ("Aorta", "Anatomical Structure", "Aorta", None),
        ("liver tumour", "Morphologically Altered Structure", "Neoplasm", "Liver"),
        ("lesion 2", "Morphologically Altered Structure", "Lesion", None),
        ("object 1", "Tissue", "Tissue", None),
        ("delivery", "Tissue", "Tissue", None),  # whole words only
    ],
)
def test_names_get_snomed_terms(name, category, kind, region):
    terms = segment_terms(name)
    assert (terms.category.meaning, terms.type.meaning) == (category, kind)
    assert terms.type.scheme_designator == "SCT"
    assert (terms.region and terms.region.meaning) == region


def test_colours_differ_between_segments():
    assert len({segment_colour(number) for number in range(1, 11)}) == 10


def test_server_export_carries_names_and_codes(tmp_path):
    array = np.full((64, 64, 24), 40.0, np.float32)
    array[20:44, 20:44, 6:18] = 200.0
    data = tmp_path / "data"
    data.mkdir()
    write_dicom_series(Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), data / "ct")
    settings = ServerSettings(data_dir=data, temp_dir=tmp_path / "temp")
    with TestClient(create_app(settings, model=IntensityModel()), base_url="http://127.0.0.1") as client:
        session = client.post("/api/sessions", json={"path": "ct"}).json()["id"]
        client.post(f"/api/sessions/{session}/objects", json={"name": "Spleen"})
        client.post(f"/api/sessions/{session}/clicks", json={"points": [[32, 32, 12]]})
        exported = client.get(f"/api/sessions/{session}/labels?format=dcm")
    assert exported.status_code == 200, exported.text
    (tmp_path / "seg.dcm").write_bytes(exported.content)
    (segment,) = hd.seg.segread(tmp_path / "seg.dcm").SegmentSequence
    assert segment.SegmentLabel == "Spleen" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    assert "RecommendedDisplayCIELabValue" in segment
