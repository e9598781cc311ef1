import pytest
import torch

from fastsam3d.registry import build_model


def test_encoder_rejects_wrong_crop_size():
    model = build_model("tiny-teacher")
    with pytest.raises(ValueError, match="expects a"):
        model.encode(torch.zeros(1, 1, 32, 32, 32))
