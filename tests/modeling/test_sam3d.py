import json

import pytest
import torch

from fastsam3d.registry import build_model


@pytest.mark.parametrize(
    "name,keys_file", [("sam-med3d", "ref_keys_teacher.json"), ("fastsam3d", "ref_keys_student.json")]
)
def test_full_size_keys_and_shapes(reference_dir, name, keys_file):
    expected = json.loads((reference_dir / keys_file).read_text())
    with torch.device("meta"):
        state = build_model(name).state_dict()
    assert list(state) == list(expected)
    assert {k: list(v.shape) for k, v in state.items()} == expected


def test_shapes_and_intermediate_features():
    model = build_model("tiny-student")
    image = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        embedding, features = model.image_encoder(image, return_intermediates=True)
        masks, iou = model.decode(
            embedding, torch.tensor([[[10, 20, 30]], [[40, 5, 6]]]), torch.tensor([[1], [0]]), multimask_output=True
        )
    assert embedding.shape == (2, 96, 8, 8, 8) and embedding.dtype == torch.float32
    assert [tuple(f.shape) for f in features] == [(2, 8, 8, 8, 96)] * 3 + [(2, 96, 8, 8, 8)]
    assert masks.shape == (2, 3, 32, 32, 32) and iou.shape == (2, 3)
    assert model.upsample(masks[:, :1]).shape == (2, 1, 64, 64, 64)


def test_a_model_trains_after_decoding_in_inference_mode():
    """What the decoder caches during a session (inference mode) must not break a later training step."""
    from fastsam3d.modeling import mask_decoder

    mask_decoder._space_order.cache_clear()  # made now, under inference mode
    model = build_model("tiny-student")
    crop = torch.randn(1, 1, *(model.img_size,) * 3)
    points, labels = torch.tensor([[[32.0, 30, 33]]]), torch.tensor([[1]])
    with torch.inference_mode():
        model.decode(model.encode(crop), points, labels)
    masks, _ = model.train().decode(model.encode(crop), points, labels)
    masks.sigmoid().mean().backward()
    assert model.mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
