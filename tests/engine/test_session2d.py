"""2D SAMs slice by slice: checkpoints, geometry of slices, propagation, LiteMedSAM on real CT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastsam3d.cli
from fastsam3d.cli import main
from fastsam3d.clicks import dice
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine.session2d import SliceSession
from fastsam3d.engine.slices import SliceGeometry
from fastsam3d.errors import CheckpointError, PromptError
from fastsam3d.evaluation.datasets import load_cases
from fastsam3d.evaluation.segmenters import SliceSegmenter, build_segmenter
from fastsam3d.hub import fetch
from fastsam3d.modeling.tiny_vit import TinyViT, fuse_batchnorm
from fastsam3d.registry import build_model, load_model
from fastsam3d.runtime import onnx_runtime_available

from ..helpers import BrightInBox, ellipsoid_volume, rotation


def test_propagation_stops_at_the_end_of_the_object():
    volume, inside = ellipsoid_volume()
    session = SliceSession(BrightInBox(), device="cpu")
    session.set_image(volume)
    assert session.axis == 2
    where = np.argwhere(inside[:, :, 10])
    events = []
    session.progress = events.append
    answer = session.set_box((*where.min(0), 10), (*where.max(0), 10))  # a box on one slice: up and down
    mask = session.mask()
    slices = np.nonzero(mask.any(axis=(0, 1)))[0]
    visible = np.nonzero(inside.sum(axis=(0, 1)) >= session.min_pixels)[0]  # the tips are single voxels
    assert slices.tolist() == visible.tolist() == list(range(6, 15))
    assert dice(mask, inside) > 0.95
    assert session.encoder_runs == 11  # the object's 9 slices and one past each end
    assert answer.changed_region == tuple(slice(int(w.min()), int(w.max()) + 1) for w in np.nonzero(mask))
    assert [e.done for e in events] == list(range(1, 12)) and all(e.total is None for e in events)
    painted = events[0].values  # the first event shows the box's slice with the object's label
    assert events[0].region[2] == slice(10, 11) and np.array_equal(painted[..., 0] == 1, inside[:, :, 10])
    session.reset()
    session.set_box((*where.min(0), 8), (*where.max(0), 12))  # a box over slices 8-12: only those
    assert np.nonzero(session.mask().any(axis=(0, 1)))[0].tolist() == list(range(8, 13))
    assert session.encoder_runs == 11  # every slice was cached


def test_slices_round_trip_in_every_orientation():
    volume, _ = ellipsoid_volume(rotation(170, 8))  # flipped, slightly oblique axes
    array = np.random.default_rng(0).random(volume.shape)
    for axis in range(3):
        session = SliceSession(BrightInBox(), device="cpu", axis=axis)
        session.set_image(volume)
        target = np.zeros_like(array)
        for index in range(volume.shape[axis]):
            plane = session.plane.take(array, index)
            session.plane.put(target, index, plane)
        np.testing.assert_array_equal(target, array)
        voxel = np.array([7, 11, 13])
        row, col = session.plane.in_plane(voxel)
        assert session.plane.take(array, voxel[axis])[int(row), int(col)] == array[tuple(voxel)]


def test_mapping_back_matches_sams_upsample_crop_resize_for_non_square_anisotropic_slices():
    geometry = SliceGeometry(height=91, width=140, resized=(120, 256), size=256, low_res=64)
    low = torch.randn(64, 64, dtype=torch.float64)
    rows, cols = (torch.from_numpy(m).double() for m in geometry.from_low_res())
    ours = rows @ low @ cols.T
    up = F.interpolate(low[None, None], size=(256, 256), mode="bilinear", align_corners=False)[..., :120, :256]
    reference = F.interpolate(up, size=(91, 140), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_a_mask_comes_back_where_it_was_on_an_anisotropic_grid():
    volume, inside = ellipsoid_volume()  # in-plane 0.8 x 1.2 mm, 40 x 30 pixels
    session = SliceSession(BrightInBox(), device="cpu")
    session.set_image(volume)
    assert session.predictor.geometry.resized == (64, 57)  # rows: 30 x 1.2 mm -> 64 px, cols: 40 x 0.8 mm -> ~57 px
    where = np.argwhere(inside[:, :, 10])
    session.set_box((*where.min(0), 10), (*where.max(0), 10))
    got, truth = session.mask()[:, :, 10], inside[:, :, 10]
    assert dice(got, truth) > 0.95
    np.testing.assert_allclose(np.argwhere(got).mean(0), np.argwhere(truth).mean(0), atol=0.5)


def test_box_edits_for_box_only_models():
    volume, inside = ellipsoid_volume()
    session = SliceSession(BrightInBox(), device="cpu")
    session.set_image(volume)
    where = np.argwhere(inside)
    session.set_box(where.min(0), where.max(0))
    before = session.mask()
    session.add_click((20, 15, 10), positive=False)  # exclude the centre of the middle slice
    after = session.mask()
    assert not after[20, 15, 10] and after[:, :, 10].sum() < before[:, :, 10].sum()
    np.testing.assert_array_equal(np.delete(after, 10, axis=2), np.delete(before, 10, axis=2))  # its slice only
    assert session.undo() and np.array_equal(session.mask(), before)
    assert session.redo() and np.array_equal(session.mask(), after) and not session.redo()
    world = volume.index_to_world(np.array([[20.0, 15.0, 10.0]]))[0]
    session.add_click(world, positive=False, frame="lps")  # the same voxel in LPS millimetres: already excluded
    assert np.array_equal(session.mask(), after)


def test_box_only_models_start_from_a_box_and_clicks_continue_the_object():
    volume, inside = ellipsoid_volume()
    session = SliceSession(BrightInBox(), device="cpu")
    session.set_image(volume)
    with pytest.raises(PromptError, match="takes a box first"):
        session.add_click((20, 15, 10))
    assert session.objects[session.active].state.box is None  # nothing applied
    where = np.argwhere(inside[:, :, 10])
    session.set_box((*where.min(0), 8), (*where.max(0), 12))  # slices 8-12 only
    answer = session.add_click((20, 15, 13))  # the object continues on slice 13, and on beyond it
    assert np.nonzero(session.mask().any(axis=(0, 1)))[0].tolist() == list(range(8, 15))
    assert answer.changed_region[2] == slice(13, 15)  # the answer's box holds the changed slices only
    assert answer.timings.slices == 3  # 13, 14, and empty 15


def test_tinyvit_batchnorm_folding_is_exact():
    encoder = TinyViT(img_size=64, embed_dims=(16, 32, 40, 80), num_heads=(1, 2, 2, 4), out_chans=32).eval()
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fuse_batchnorm(copy.deepcopy(encoder))(x), encoder(x), atol=1e-4, rtol=1e-4)


OFFICIAL_SAM_KEYS = {  # name: shape, from the official sam_vit_b_01ec64.pth layout
    "image_encoder.pos_embed": (1, 64, 64, 768),
    "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
    "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),
    "image_encoder.blocks.2.attn.rel_pos_w": (127, 64),
    "image_encoder.blocks.11.mlp.lin1.weight": (3072, 768),
    "image_encoder.neck.0.weight": (256, 768, 1, 1),
    "image_encoder.neck.3.bias": (256,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
    "prompt_encoder.point_embeddings.3.weight": (1, 256),
    "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": (128, 256),
    "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
    "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
}


@pytest.mark.slow
def test_sam_vit_b_and_medsam_load_official_layout_checkpoints(tmp_path):
    model = build_model("sam-vit-b")
    state = model.state_dict()
    assert len(state) == 314  # 177 image encoder + 17 prompt encoder + 120 mask decoder tensors
    for key, shape in OFFICIAL_SAM_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    for name in ("sam-vit-b", "medsam"):
        loaded = load_model(name, path)
        assert loaded.config.name == name
        torch.testing.assert_close(loaded.image_encoder.pos_embed, state["image_encoder.pos_embed"])
    with torch.inference_mode():  # a 1024 x 1024 slice -> 64 x 64 embedding -> 256 x 256 logits
        embedding = loaded.encode(torch.rand(1, 3, 1024, 1024))
        logits, _ = loaded.decode(embedding, torch.tensor([[[500.0, 400.0]]]), torch.tensor([[1]]))
    assert embedding.shape == (1, 256, 64, 64) and logits.shape == (1, 1, 256, 256)
    with pytest.raises(CheckpointError, match="medsam is not downloaded"):  # offline in tests (conftest)
        load_model("medsam")
    torch.save({"image_encoder.pos_embed": state["image_encoder.pos_embed"]}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_model("sam-vit-b", tmp_path / "partial.pth")


def test_cli_segments_with_a_2d_model_and_writes_its_uncertainty(tmp_path, capsys, monkeypatch):
    volume, inside = ellipsoid_volume()
    from fastsam3d.engine import session2d as slicewise
    from fastsam3d.io import read_volume, write_volume

    monkeypatch.setattr(slicewise, "load_model", lambda *args, **kwargs: BrightInBox())
    monkeypatch.setattr(fastsam3d.cli, "fetch_named_weights", lambda args: None)  # no medsam file needed
    write_volume(volume, tmp_path / "v.nii.gz")
    code = main(
        [
            "segment",
            str(tmp_path / "v.nii.gz"),
            "--model",
            "medsam",
            "--box",
            "8,6,10,32,24,10",
            "--out",
            str(tmp_path / "o.nii.gz"),
            "--uncertainty",
            str(tmp_path / "u.nii.gz"),
            "--samples",
            "4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert dice(read_volume(tmp_path / "o.nii.gz").array > 0, inside) > 0.95  # a one-slice box, propagated
    entropy = read_volume(tmp_path / "u.nii.gz").array
    assert entropy.max() > 0.1 and not entropy[:, :, :5].any()  # unsure at the edges, nothing off the object
    code = main(
        [
            "segment",
            str(tmp_path / "v.nii.gz"),
            "--model",
            "medsam",
            "--point",
            "20,15,10",
            "--out",
            str(tmp_path / "p.nii.gz"),
        ]
    )
    assert code == 2 and "takes a box first" in capsys.readouterr().err and not (tmp_path / "p.nii.gz").exists()


# --- the real LiteMedSAM weights ------------------------------------------------------------


@pytest.fixture(scope="module")
def litemedsam_installed():
    try:
        return fetch("litemedsam")
    except CheckpointError as error:
        pytest.skip(str(error))


def test_litemedsam_loads_strictly(litemedsam_installed):
    assert sum(p.numel() for p in build_model("litemedsam").parameters()) == 9_791_300  # before BatchNorm fusion
    model = load_model("litemedsam")  # strict: every key and shape of the publisher's file
    assert model.config.img_size == 256 and model.low_res_size == (256, 256)
    assert isinstance(build_segmenter("litemedsam"), SliceSegmenter)


@pytest.mark.slow
def test_litemedsam_segments_liver_and_spleen_of_the_development_ct(litemedsam_installed):
    manifest = dev_manifest()
    if manifest is None:
        pytest.skip("development data not fetched: run `fastsam3d data fetch` (scripts/install.sh does)")
    (case,) = [c for c in load_cases(manifest, ["liver", "spleen"]) if c.name == "ct"]
    image, label = case.load()
    session = SliceSession("litemedsam", device="cpu")
    assert session.precision == ("onnx-fp32" if onnx_runtime_available() else "fp32")  # auto on a CPU
    session.set_image(image)
    for class_id in (1, 5):  # spleen, liver
        truth = label.array == class_id
        where = np.argwhere(truth)
        middle = (where[:, 2].min() + where[:, 2].max()) // 2
        plane = np.argwhere(truth[:, :, middle])  # the box from the label on the middle slice
        session.add_object()
        session.set_box((*plane.min(0), where[:, 2].min()), (*plane.max(0), where[:, 2].max()))
        mask = session.mask()
        assert dice(mask, truth) >= 0.90


def test_sam_med2d_layout_with_adapters_loads_from_its_model_wrapper(tmp_path):
    model = build_model("sam-med2d")
    state = model.state_dict()
    expected = {
        "image_encoder.pos_embed": (1, 16, 16, 768),
        "image_encoder.blocks.2.attn.rel_pos_h": (31, 64),  # global attention on the 16 x 16 grid
        "image_encoder.blocks.0.Adapter.channel.0.weight": (192, 768),
        "image_encoder.blocks.11.Adapter.spatial.2.weight": (768, 768, 4, 4),
        "image_encoder.blocks.5.Adapter.norm.bias": (768,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == 314 + 12 * 6  # SAM ViT-B plus six adapter tensors per block
    torch.save({"model": state, "epoch": 1}, tmp_path / "sam-med2d_b.pth")
    loaded = load_model("sam-med2d", tmp_path / "sam-med2d_b.pth")
    assert loaded.config.point_prompts and loaded.low_res_size == (64, 64)
