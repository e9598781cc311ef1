"""RoiPredictor: the per-ROI prompt path with a cached embedding, and the ROI geometry it relies on."""

import numpy as np
import torch
from torch.utils._pytree import tree_leaves

from fastsam3d.engine.labelmap import PackedMask
from fastsam3d.engine.predictor import MASK_PROMPT_LOGIT, RoiPredictor
from fastsam3d.engine.roi import RoiGrid
from fastsam3d.engine.session3d import Session
from fastsam3d.registry import build_model

from ..helpers import randomise, sphere_volume


def test_predict_encodes_once_per_roi_and_matches_the_session():
    model = build_model("tiny-student")
    randomise(model)
    volume, _ = sphere_volume()
    predictor = RoiPredictor(model, torch.device("cpu"))
    predictor.set_image(volume)
    click = np.array([[60.0, 50.0, 22.0]])
    roi = predictor.roi_at(click[0])
    first, scores = predictor.predict(roi, click, [1])
    assert first.shape == (1, 1, *model.low_res_size) and scores.shape == (1, 1)
    second, _ = predictor.predict(roi, np.vstack([click, click + 3]), [1, 0], mask_input=first)
    assert predictor.encoder_runs == 1 and predictor.decoder_runs == 2 and predictor.is_cached(roi)
    assert not torch.equal(first, second)  # the exclude click and the mask prompt changed the answer

    session = Session(model, device="cpu", max_rois=1)  # the predictor's device
    session.set_image(volume)
    session.add_click(click[0])
    ((_, logits),) = session.objects[1].state.logits
    torch.testing.assert_close(logits.float(), first, atol=1e-3, rtol=1e-3)  # the session keeps fp16 logits


def test_mask_prompt_is_positive_inside_the_mask_and_negative_outside():
    model = build_model("tiny-student")
    volume, inside = sphere_volume()
    predictor = RoiPredictor(model, torch.device("cpu"))
    predictor.set_image(volume)
    centre = np.argwhere(inside).mean(0)
    roi = predictor.roi_at(centre)
    prompt = predictor.mask_prompt(roi, PackedMask.of(inside))[0, 0]
    low_res = roi.low_res_grid(model.low_res_size[0])
    cell = np.round(low_res.index_to_roi(centre)[0]).astype(int)
    assert prompt[tuple(cell)] > 0 and prompt[0, 0, 0] < 0
    expected = (low_res.extract(inside.astype(np.float32)) - 0.5) * 2 * MASK_PROMPT_LOGIT  # from the whole grid
    assert torch.allclose(predictor.mask_prompt(roi, PackedMask.of(inside).compress())[0, 0], expected)
    assert predictor.box_in_roi(roi, ((0, 0, 0), (5, 5, 5))) is None  # no box embeddings: the session emulates boxes


def test_low_res_grid_and_neighbour_are_the_same_geometry_coarser_and_shifted():
    volume, _ = sphere_volume()
    roi = RoiGrid.centred(volume, np.array([60.0, 50.0, 22.0]), size=128)
    coarse = roi.low_res_grid(32)
    cells = np.array([[0.0, 0.0, 0.0], [31.0, 5.0, 17.0]])
    # a low-res cell centre is the centre of the 4 fine ROI voxels it covers
    np.testing.assert_allclose(coarse.roi_to_index(cells), roi.roi_to_index(cells * 4 + 1.5))
    shifted = roi.neighbour(axis=1, direction=-1)
    np.testing.assert_allclose(shifted.roi_to_index([[0, 64, 0]]), roi.roi_to_index([[0, 0, 0]]))
    assert shifted.key != roi.key and shifted.size == roi.size


def test_a_rescaling_invariant_model_gets_the_crop_without_its_z_score(monkeypatch):
    """The ClickUNet's features do not change under (x - a) / s: the predictor does not z-score its
    crop, and its embedding equals its features of the z-scored crop to float rounding. A 3D SAM's
    crop is z-scored."""
    from fastsam3d.configs import ClickUNetConfig
    from fastsam3d.engine import predictor as predictor_module
    from fastsam3d.engine.roi import normalise_intensity

    volume, _ = sphere_volume()
    click = np.array([60.0, 50.0, 22.0])
    for name, model in (
        ("click-unet", build_model(ClickUNetConfig(img_size=32, channels=(8, 16, 16), prompt_channels=(8, 8, 8)))),
        ("3D SAM", build_model("tiny-student")),
    ):
        randomise(model)
        if name == "click-unet":  # the predictor must not call it
            monkeypatch.setattr(predictor_module, "normalise_intensity", None)
        predictor = RoiPredictor(model, torch.device("cpu"))
        predictor.set_image(volume)
        roi = predictor.roi_at(click)
        embedding = predictor.embedding(roi)
        monkeypatch.undo()
        with torch.inference_mode():
            expected = model.encode(
                normalise_intensity(roi.extract(volume.array, outside=model.roi_padding))[None, None]
            )
        for mine, theirs in zip(tree_leaves(embedding), tree_leaves(expected), strict=True):
            torch.testing.assert_close(mine, theirs, atol=2e-4, rtol=1e-4, msg=name)
